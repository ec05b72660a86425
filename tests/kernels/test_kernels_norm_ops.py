"""The kernels behind rnlib.ops (impl="pallas") agree with impl="xla", values and all gradients, through the
ops layer's custom_vjp (leading axes, fused add, RMS, no scale/bias)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_norm_check import GPU_PLATFORM

ops = pytest.importorskip("rnlib.ops")


def _loss(impl, x, r, s, b):
    y1 = ops.layer_norm(x, s, b, impl=impl, platform=GPU_PLATFORM)
    y2 = ops.rms_norm(x, None, impl=impl, platform=GPU_PLATFORM)
    y3, h = ops.add_norm(x, r, s, None, norm="rms", impl=impl, platform=GPU_PLATFORM)
    y4, _ = ops.add_norm(x, r, s, b, impl=impl, platform=GPU_PLATFORM)
    w = jnp.cos(jnp.arange(x.shape[-1], dtype=jnp.float32))  # non-uniform cotangents
    return sum(jnp.sum(w * t.astype(jnp.float32) ** 2) for t in (y1, y2, y3, y4, h))


@pytest.mark.parametrize("dtype", [pytest.param(jnp.float32, marks=pytest.mark.slow), jnp.bfloat16])
def test_ops_pallas_matches_xla(dtype):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 37, 761)), dtype)
    r = jnp.asarray(rng.normal(size=(2, 37, 761)), dtype)
    s = jnp.asarray(1 + 0.3 * rng.normal(size=761), jnp.float32)
    b = jnp.asarray(rng.normal(size=761), jnp.float32)
    grad = {impl: jax.jit(jax.value_and_grad(lambda *a, i=impl: _loss(i, *a), argnums=(0, 1, 2, 3)))
            for impl in ("pallas", "xla")}
    (vp, gp), (vx, gx) = grad["pallas"](x, r, s, b), grad["xla"](x, r, s, b)
    rtol = 1e-5 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(float(vp), float(vx), rtol=rtol)
    for a, c in zip(gp, gx):
        assert a.dtype == c.dtype and a.shape == c.shape
        a, c = np.asarray(a, np.float64), np.asarray(c, np.float64)
        assert np.max(np.abs(a - c)) <= rtol * np.max(np.abs(c)) + 1e-6


@pytest.mark.parametrize("kind", ["layer", "add_layer"])
def test_ops_pallas_hostile_offset_float32(kind):
    """mean 1e4 / std 1e-2 through the ops layer's custom_vjp with impl="pallas": the kernels' shifted saved mean
    reaches their own backward; y and every gradient within 1e-5 of their scale of the float64 reference."""
    import norm_reference as ref

    rng = np.random.default_rng(1)
    x = (1e4 + 1e-2 * rng.normal(size=(16, 761))).astype(np.float32)
    r = (1e-2 * rng.normal(size=(16, 761))).astype(np.float32)
    s = (1 + 0.5 * rng.normal(size=761)).astype(np.float32)
    b = rng.normal(size=761).astype(np.float32)
    dy = rng.normal(size=(16, 761)).astype(np.float32)

    def f(x, r, s, b):
        if kind == "layer":
            return ops.layer_norm(x, s, b, impl="pallas", platform=GPU_PLATFORM)
        return ops.add_norm(x, r, s, b, impl="pallas", platform=GPU_PLATFORM)[0]

    y, vjp = jax.vjp(jax.jit(f), *(jnp.asarray(a) for a in (x, r, s, b)))
    dx, dr, ds, db = vjp(jnp.asarray(dy))
    h = x.astype(np.float64) + (0 if kind == "layer" else r.astype(np.float64))
    if kind != "layer":  # statistics over h as stored (float32)
        h = h.astype(np.float32).astype(np.float64)
    y_ref = ref.norm_fwd(h, s, b)
    dx_ref, ds_ref, db_ref = ref.norm_bwd(h, dy, s)
    pairs = [(y, y_ref), (dx, dx_ref), (ds, ds_ref), (db, db_ref)] + ([] if kind == "layer" else [(dr, dx_ref)])
    for got, want in pairs:
        err = np.max(np.abs(np.asarray(got, np.float64) - want))
        assert err <= 1e-5 * np.max(np.abs(want)), (err, np.max(np.abs(want)))
