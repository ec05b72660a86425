"""Lowering proof from this CPU: jax.export for ["cuda"] (Pallas Triton backend) and ["tpu"] (Mosaic) of every
kernel variant, forward and backward, over widths that take every path (narrow multi-row tiles, whole row,
chunked), plus gradients through rnlib.ops with impl="pallas", and 64-bit offsets for arrays past 2**32 bytes.
"""
from __future__ import annotations

import contextlib
import itertools

import jax
import jax.numpy as jnp
import pytest
from jax import export

from rnlib import kernels as K

TARGET = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}
KPLAT = {"cuda": "gpu", "tpu": "tpu"}
CHECKS = [export.DisabledSafetyCheck.custom_call(t) for t in TARGET.values()]
VARIANTS = list(itertools.product((False, True), (False, True)))  # (rms, residual)


def _all_variants(kplat):
    def f(x, r, s, b, dy):
        outs = []
        for rms, res in VARIANTS:
            y, h, mean, rstd = K.norm_fwd(x, r if res else None, s, None if rms else b, epsilon=1e-6, rms=rms,
                                          out_dtype=x.dtype, residual_dtype=x.dtype if res else None,
                                          platform=kplat)
            grads = K.norm_bwd(dy, h if res else x, mean, rstd, s, dy if res else None, rms=rms,
                               has_bias=not rms, dx_dtype=x.dtype, platform=kplat)
            outs.append((y, h, mean, rstd, grads))
        return outs
    return f


def _export(fn, platform, *avals):
    # jax >= 0.11 needs an abstract GPU device to lower Triton without a GPU (a no-op on earlier versions).
    with K.cuda_lowering() if platform == "cuda" else contextlib.nullcontext():
        exp = export.export(jax.jit(fn), platforms=[platform], disabled_checks=CHECKS)(*avals)
    return exp.mlir_module()


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("width,dtype", [(1, jnp.bfloat16), (7, jnp.float16), (761, jnp.bfloat16),
                                         (1000, jnp.float32), (1153, jnp.float32), (4096, jnp.bfloat16),
                                         (65536, jnp.bfloat16), (65536, jnp.float32), (40000, jnp.float32),
                                         (262144, jnp.bfloat16), (262147, jnp.float32)])
def test_export_every_variant(platform, width, dtype):
    rows = 199
    avals = ([jax.ShapeDtypeStruct((rows, width), dtype)] * 2 + [jax.ShapeDtypeStruct((width,), jnp.float32)] * 2
             + [jax.ShapeDtypeStruct((rows, width), dtype)])
    if not K.supports(rows, width, dtype, KPLAT[platform]):
        assert platform == "tpu" and dtype == jnp.float16  # Mosaic rejects float16 loads: XLA serves it
        with pytest.raises(ValueError, match="unsupported"):
            _export(_all_variants(KPLAT[platform]), platform, *avals)
        return
    text = _export(_all_variants(KPLAT[platform]), platform, *avals)
    plan = K.plan_for(rows, width, dtype, KPLAT[platform])
    per_variant = (2 if plan.chunked else 1) + (2 if plan.backward.chunked else 1)  # (+ stats / sums pass)
    assert text.count(f"@{TARGET[platform]}(") == per_variant * len(VARIANTS)


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_export_ops_gradients(platform):
    """Gradients through rnlib.ops (custom_vjp) with impl='pallas' lower to kernels only."""
    ops = pytest.importorskip("rnlib.ops")
    kplat = KPLAT[platform]

    def loss(x, r, s, b):
        y1 = ops.layer_norm(x, s, b, impl="pallas", platform=kplat)
        y2 = ops.rms_norm(x, s, impl="pallas", platform=kplat)
        y3, h = ops.add_norm(x, r, s, b, impl="pallas", platform=kplat)
        return sum(jnp.sum(jnp.sin(t.astype(jnp.float32))) for t in (y1, y2, y3, h))

    avals = [jax.ShapeDtypeStruct((4, 37, 1153), jnp.bfloat16)] * 2 + [jax.ShapeDtypeStruct((1153,), jnp.float32)] * 2
    text = _export(jax.grad(loss, argnums=(0, 1, 2, 3)), platform, *avals)
    assert text.count(f"@{TARGET[platform]}(") == 6  # 3 forward + 3 backward kernels


def _triton_modules(stablehlo_text):
    """Deserialize the Triton IR embedded in each Triton custom call (private jax APIs; skip if they moved)."""
    try:
        from jax._src.interpreters import mlir
        from jax._src.lib.mlir import ir
        from jax._src.pallas.triton.lowering import _new_ir_context
    except ImportError as e:  # pragma: no cover
        pytest.skip(f"jax internals moved: {e}")
    blobs = []

    def walk(op):
        for region in op.regions:
            for block in region:
                for o in block.operations:
                    if o.operation.name == "stablehlo.custom_call":
                        cfg = o.operation.attributes["mhlo.backend_config"]
                        blobs.append(bytes(ir.StringAttr(cfg["ir"]).value_bytes))
                    walk(o.operation)
    texts = []
    try:  # the embedded format is a jax internal: skip rather than fail if a newer jax changed it
        with mlir.make_ir_context():
            walk(ir.Module.parse(stablehlo_text).operation)
        for b in blobs:
            with _new_ir_context():
                texts.append(str(ir.Module.parse(b)))
    except Exception as e:  # pragma: no cover
        pytest.skip(f"cannot read the embedded Triton module with this jax: {type(e).__name__}: {e}")
    return texts


def test_no_int32_offset_overflow_past_2_to_31_elements():
    """rows * width > 2**31 bf16 elements (> 4 GiB): every pointer offset into x/y is 64-bit; small arrays use i32."""
    def fwd_bwd(x, dy):
        y, _, mean, rstd = K.norm_fwd(x, None, None, None, epsilon=1e-6, rms=False, out_dtype=x.dtype,
                                      residual_dtype=None, platform="gpu")
        return y, K.norm_bwd(dy, x, mean, rstd, None, None, rms=False, has_bias=False, dx_dtype=x.dtype,
                             platform="gpu")[0]

    def addptr_offset_types(rows):
        aval = jax.ShapeDtypeStruct((rows, 1024), jnp.bfloat16)
        mods = _triton_modules(_export(fwd_bwd, "cuda", aval, aval))
        assert len(mods) == 2
        lines = [ln for m in mods for ln in m.splitlines() if "tt.addptr" in ln and "!tt.ptr<bf16>" in ln]
        assert lines
        return {ln.rsplit(",", 1)[-1].strip().split("x")[-1] for ln in lines}

    big_rows = (1 << 21) + 3
    assert big_rows * 1024 > 2**31
    assert addptr_offset_types(big_rows) == {"i64>"}
    assert "i32>" in addptr_offset_types(4096)


@pytest.mark.parametrize("platform,plan", [
    ("cuda", "gpu-4-128-10-4-4"),   # chunked + backward row sub-block loop + edge tiles in both dims
    ("cuda", "gpu-8-1024-1-4-8"),   # whole row + sub-block loop
    ("tpu", "tpu-8-256-5-0-1"),     # chunked, edge chunk and edge row tile
])
def test_export_forced_plans(platform, plan):
    from rnlib.kernels import Plan
    from rnlib.kernels._norm_bwd import norm_bwd_impl
    from rnlib.kernels._norm_fwd import norm_fwd_impl

    fl, br, bc, nc, warps, sub = plan.split("-")
    p = Plan(fl, int(br), int(bc), int(nc), int(warps) or None, int(sub))
    rows, width = 37, 1153 if p.n_chunks > 1 else 761

    def f(x, r, s, b, dy):
        outs = []
        for rms, res in VARIANTS:
            y, h, mean, rstd = norm_fwd_impl(x, r if res else None, s, b, epsilon=1e-6, rms=rms, out_dtype=x.dtype,
                                             residual_dtype=x.dtype if res else None, platform=KPLAT[platform],
                                             plan=p)
            outs.append((y, norm_bwd_impl(dy, h if res else x, mean, rstd, s, dy if res else None, rms=rms,
                                          has_bias=True, dx_dtype=x.dtype, platform=KPLAT[platform], plan=p)))
        return outs

    avals = ([jax.ShapeDtypeStruct((rows, width), jnp.bfloat16)] * 2
             + [jax.ShapeDtypeStruct((width,), jnp.float32)] * 2 + [jax.ShapeDtypeStruct((rows, width), jnp.bfloat16)])
    text = _export(f, platform, *avals)
    assert text.count(f"@{TARGET[platform]}(") == (4 if p.chunked else 2) * len(VARIANTS)
