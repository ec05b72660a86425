"""TPU (v5e / v6e / v5p): the real Mosaic compiler from libtpu (``jax[tpu]``) against a TPU topology described on
a CPU host (``jax.experimental.topologies``). Nothing runs; every compile error, scoped-VMEM figure and HBM overflow
shows. Each direction (forward, backward) of an op is one jitted function; its kernels' scoped VMEM is read from
the compiled HLO text, its HBM from ``memory_analysis()`` and its traffic from ``cost_analysis()``; XLA's own fusion
of the same op (rnlib.ops with impl="xla") is compiled beside it for comparison. ``layout_copies`` counts the
instructions outside the kernels that rewrite a whole (rows, width) array (layout copies/transposes at the jit
boundary). Everything is traced under ``jax.default_device(<the topology's device>)``, so the kernels plan their
tiles for that generation (``rnlib.kernels.tpu_generation``).
"""
from __future__ import annotations

import functools
import os
import re

import jax
import jax.numpy as jnp

from rnlib import kernels as K

from .cases import PASSES, Case, functions
from .report import record

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # test workers and this process may each load libtpu

# generation -> (topology names to try, scoped VMEM limit of a kernel in bytes: Mosaic's default per generation)
GENERATIONS = {
    "tpu_v5e": (("v5e:1x1", "v5e:2x2"), 16 << 20),
    "tpu_v6e": (("v6e:1x1", "v6e:2x2"), 32 << 20),
    "tpu_v5p": (("v5p:1x1x1", "v5p:2x2x1"), 16 << 20),
}
VMEM_TARGET = 0.8  # of the scoped limit


def tools_missing() -> str | None:
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        return f"libtpu (the jax[tpu] extra; {e})"
    return None


@functools.lru_cache(maxsize=None)
def device(target: str):
    from jax.experimental import topologies

    errors = []
    for name in GENERATIONS[target][0]:
        kw = dict(chips_per_host_bounds=(1, 1, 1)) if name.count("1") == name.count("x") + 1 else {}
        try:
            topo = topologies.get_topology_desc(topology_name=name, platform="tpu", **kw)
            return topo.devices[0]
        except Exception as e:  # noqa: BLE001 - try the next spelling
            errors.append(f"{name}: {type(e).__name__}: {e}")
    raise RuntimeError("no TPU topology: " + "; ".join(errors))


_SCOPED_RE = re.compile(r'used_scoped_memory_configs[^\]]*?"size"\s*:\s*"?(\d+)')
_NAME_RE = re.compile(r'"custom_call_config"|kernel_name\\?"\s*:\s*\\?"(rn_norm_[a-z_]+)')


def _compile(fn, avals, target: str):
    dev = device(target)
    sh = jax.sharding.SingleDeviceSharding(dev)
    args = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh) for a in avals]
    with jax.default_device(dev):  # the kernels read the generation from the default device
        return jax.jit(fn).lower(*args).compile()


def kernel_vmem(hlo_text: str) -> list[tuple[str, int | None]]:
    """[(pallas_call name, scoped VMEM bytes)] for each Mosaic custom call of a compiled module, in text order."""
    out = []
    for line in hlo_text.splitlines():
        if 'custom_call_target="tpu_custom_call"' not in line:
            continue
        m = re.search(r"rn_norm_[a-z_]+", line)
        sizes = [int(s) for s in re.findall(r'\\?"size\\?"\s*:\s*\\?"?(\d+)', _after(line, "used_scoped_memory"))]
        out.append((m.group(0) if m else "?", max(sizes) if sizes else None))
    return out


def _after(s: str, key: str) -> str:
    i = s.find(key)
    return s[i:i + 2000] if i >= 0 else ""


def _xla_fn(case: Case, direction: str):
    """XLA's own fusion of the same op (jnp maths, float32 statistics), for the bytes comparison."""
    rms, res = case.rms, case.residual

    def fwd(x, *rest):
        it = iter(rest)
        h = (x + next(it)) if res else x
        scale = next(it)
        bias = None if rms else next(it)
        hf = h.astype(jnp.float32)
        mean = jnp.zeros(hf.shape[:1] + (1,), jnp.float32) if rms else jnp.mean(hf, -1, keepdims=True)
        var = jnp.mean(jnp.square(hf - mean), -1, keepdims=True)
        rstd = jax.lax.rsqrt(var + 1e-6)
        y = (hf - mean) * rstd * scale + (0 if bias is None else bias)
        out = (y.astype(x.dtype), mean[:, 0], rstd[:, 0])
        return (out[0], h) + out[1:] if res else out

    def bwd(dy, h, mean, rstd, scale, *rest):
        hf, dyf = h.astype(jnp.float32), dy.astype(jnp.float32)
        xhat = (hf - mean[:, None]) * rstd[:, None]
        g = dyf * scale
        c1 = jnp.mean(g * xhat, -1, keepdims=True)
        dx = g - xhat * c1
        if not rms:
            dx = dx - jnp.mean(g, -1, keepdims=True)
        dx = dx * rstd[:, None]
        if res:
            dx = dx + rest[0].astype(jnp.float32)
        ds = jnp.sum(dyf * xhat, 0)
        return (dx.astype(h.dtype), ds) if rms else (dx.astype(h.dtype), ds, jnp.sum(dyf, 0))

    return fwd if direction == "fwd" else bwd


def _bytes(compiled) -> int | None:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    v = (ca or {}).get("bytes accessed")
    return None if v is None else int(v)


def _block(plan, direction: str) -> str:
    """rows x cols [x chunks] [subN: row tiles per backward partial]."""
    return f"{plan.block_rows}x{plan.block_cols}" + (f"x{plan.n_chunks}" if plan.chunked else "") + (
        f" sub{plan.bwd_sub_blocks}" if direction == "bwd" and plan.bwd_sub_blocks > 1 else "")


def check_case(case: Case, target: str, compare_xla: bool = True) -> list[dict]:
    limit = GENERATIONS[target][1]
    with jax.default_device(device(target)):
        plan = K.plan_for(case.rows, case.width, case.dtype, "tpu")
    base = dict(kernel=case.kernel, rows=case.rows, width=case.width, dtype=case.dtype)
    recs = []
    if not K.supports(case.rows, case.width, case.dtype, "tpu"):  # rnlib.ops sends these to XLA
        return [record(**base, **{"pass": d}, status="unsupported",
                       message="kernels.supports() is False: served by XLA") for d in ("fwd", "bwd")]
    for direction, (fn, avals) in functions(case, "tpu").items():
        try:
            compiled = _compile(fn, avals, target)
        except Exception as e:  # noqa: BLE001 - every compiler failure is a finding
            msg = f"{type(e).__name__}: {e}"
            status = "hbm_oom" if ("RESOURCE_EXHAUSTED" in msg and "HBM" in msg.upper()) else "error"
            recs.append(record(**base, **{"pass": direction}, status=status, message=msg[:600]))
            continue
        mem = compiled.memory_analysis()
        hbm = None
        if mem is not None:
            hbm = int(sum(getattr(mem, k, 0) or 0 for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                                            "temp_size_in_bytes", "generated_code_size_in_bytes")))
        xla_bytes = None
        if compare_xla:
            try:
                xla_bytes = _bytes(_compile(_xla_fn(case, direction), avals, target))
            except Exception:  # noqa: BLE001 - the comparison is optional (XLA's own version may overflow HBM)
                pass
        op_bytes = _bytes(compiled)
        text = compiled.as_text()
        copies = layout_copies(text, case.rows * case.width)
        for name, vmem in kernel_vmem(text):
            recs.append(record(**base, **{"pass": PASSES.get(name, name)}, status="ok", vmem_bytes=vmem,
                               block=_block(plan.backward if direction == "bwd" else plan, direction),
                               vmem_pct=None if vmem is None else round(100 * vmem / limit, 1), hbm_bytes=hbm,
                               op_bytes_accessed=op_bytes, ideal_bytes=case.ideal_bytes[direction],
                               xla_bytes_accessed=xla_bytes, layout_copies=len(copies),
                               message="; ".join(copies) or None))
    return recs


_INSTR_RE = re.compile(r"^\s*(?:ROOT\s+)?%\S+\s*=\s*(\w+)\[([\d,]*)\]\{([^}]*)\}\s+([\w-]+)\(")
_NOT_COPIES = ("custom-call", "parameter", "bitcast", "get-tuple-element", "tuple", "constant")


def layout_copies(hlo_text: str, big: int) -> list[str]:
    """Instructions of the entry computation, other than the kernels, that write a 2-D (or higher) array of
    >= ``big`` elements (``rows * width``): transposes and layout copies of the (rows, width) arrays, e.g. at the
    jit boundary where XLA's default TPU layout is column-major. Each as "opcode dtype[shape]{layout}"."""
    out, entry = [], False
    for line in hlo_text.splitlines():
        if line.startswith("ENTRY "):
            entry = True
            continue
        if entry and line.startswith("}"):
            break
        m = _INSTR_RE.match(line) if entry else None
        if not m or m.group(4) in _NOT_COPIES:
            continue
        dims = [int(d) for d in filter(None, m.group(2).split(","))]
        n = 1
        for d in dims:
            n *= d
        if n >= big and len(dims) >= 2:  # 2-D: at width 1 a (rows,) vector (RMS's zero mean) is as large
            out.append(f"{m.group(4)} {m.group(1)}[{m.group(2)}]{{{m.group(3).split(':')[0]}}}")
    return out
