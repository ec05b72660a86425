"""sm_90 (H100/H200): the Triton IR of every ``__gpu$xla.gpu.triton`` custom call, compiled to cubin by the
``triton`` package (ttir -> ttgir -> llir -> ptx -> cubin) with the kernel's own num_warps/num_stages, and
registers / spill bytes / shared memory read from the ``ptxas -v`` log. No GPU or driver is needed.

The embedded IR is MLIR bytecode written by jax's own Triton dialect build; it is parsed back under jax's context
and handed to triton as text (private jax APIs: a moved API is reported as an error, not hidden).
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile

import jax
from jax import export

from rnlib import kernels as K

from .cases import PASSES, Case, functions
from .report import record

TARGET = "__gpu$xla.gpu.triton"
CAPABILITY, WARP_SIZE = 90, 32
# H100/H200 (sm_90) per-SM limits, for the static occupancy (resident warps per SM).
SM90_REGS_PER_SM, SM90_MAX_WARPS, SM90_SMEM_PER_SM, SM90_MAX_BLOCKS = 65536, 64, 228 * 1024, 32
SM90_REG_ALLOC_UNIT = 256  # registers are allocated per warp in units of 256


def tools_missing() -> str | None:
    try:
        import triton  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
    except ImportError as e:
        return f"the `triton` package ({e})"
    return None


def _export_text(fn, avals) -> str:
    checks = [export.DisabledSafetyCheck.custom_call(TARGET)]
    with K.cuda_lowering():
        return export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=checks)(*avals).mlir_module()


def triton_calls(stablehlo_text: str) -> list[dict]:
    """[{name, ir (text), num_warps, num_stages, operand/result bytes}] for each Triton custom call, in order."""
    from jax._src.interpreters import mlir
    from jax._src.lib.mlir import ir
    from jax._src.pallas.triton.lowering import _new_ir_context

    calls = []

    def nbytes(types):
        total = 0
        for t in types:
            rt = ir.RankedTensorType(t)
            n = 1
            for d in rt.shape:
                n *= d
            total += n * max(1, rt.element_type.width // 8)
        return total

    def walk(op):
        for region in op.regions:
            for block in region:
                for o in block.operations:
                    if o.operation.name == "stablehlo.custom_call" and \
                            ir.StringAttr(o.operation.attributes["call_target_name"]).value == TARGET:
                        cfg = o.operation.attributes["mhlo.backend_config"]
                        calls.append(dict(
                            name=ir.StringAttr(cfg["name"]).value,
                            blob=bytes(ir.StringAttr(cfg["ir"]).value_bytes),
                            num_warps=ir.IntegerAttr(cfg["num_warps"]).value,
                            num_stages=ir.IntegerAttr(cfg["num_stages"]).value,
                            io_bytes=nbytes([v.type for v in o.operation.operands])
                            + nbytes([r.type for r in o.operation.results])))
                    walk(o.operation)

    with mlir.make_ir_context():
        walk(ir.Module.parse(stablehlo_text).operation)
    for c in calls:
        with _new_ir_context():
            c["ir"] = str(ir.Module.parse(c.pop("blob")))
    return calls


_PTXAS_RE = {
    "registers": re.compile(r"Used (\d+) registers"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "smem": re.compile(r"(\d+) bytes smem"),
}


def compile_triton(ir_text: str, num_warps: int, num_stages: int) -> dict:
    """Compile one kernel for sm_90; returns registers, spill bytes (stores + loads), shared memory, the log."""
    os.environ.setdefault("TRITON_ALWAYS_COMPILE", "1")  # the cache would skip ptxas and its log
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget

    knobs.nvidia.dump_ptxas_log = True
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "kernel.ttir")
        with open(path, "w") as f:
            f.write(ir_text)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            compiled = triton.compile(path, target=GPUTarget("cuda", CAPABILITY, WARP_SIZE),
                                      options=dict(num_warps=num_warps, num_stages=num_stages))
    log = buf.getvalue()
    vals = {k: [int(m) for m in r.findall(log)] for k, r in _PTXAS_RE.items()}
    if not vals["registers"]:
        raise RuntimeError(f"no ptxas -v figures in the log: {log[:500]!r}")
    smem = int(getattr(compiled.metadata, "shared", 0) or 0)
    return dict(registers=max(vals["registers"]), spill_bytes=max(vals["spill_stores"] + vals["spill_loads"] + [0]),
                smem_bytes=max([smem] + vals["smem"]), log=log)


def occupancy_warps(registers: int, num_warps: int, smem_bytes: int) -> int:
    """Resident warps per SM on sm_90 for this register count, block size and shared memory (static)."""
    regs_per_warp = -(-registers * WARP_SIZE // SM90_REG_ALLOC_UNIT) * SM90_REG_ALLOC_UNIT
    blocks = min(SM90_REGS_PER_SM // (regs_per_warp * num_warps), SM90_MAX_WARPS // num_warps, SM90_MAX_BLOCKS)
    if smem_bytes:
        blocks = min(blocks, SM90_SMEM_PER_SM // smem_bytes)
    return blocks * num_warps


def _block(plan, direction: str) -> str:
    """rows x cols [x chunks] [subN: row tiles per backward program]."""
    return f"{plan.block_rows}x{plan.block_cols}" + (f"x{plan.n_chunks}" if plan.chunked else "") + (
        f" sub{plan.bwd_sub_blocks}" if direction == "bwd" and plan.bwd_sub_blocks > 1 else "")


def check_case(case: Case) -> list[dict]:
    recs = []
    plan = K.plan_for(case.rows, case.width, case.dtype, "gpu")
    base = dict(kernel=case.kernel, rows=case.rows, width=case.width, dtype=case.dtype)
    for direction, (fn, avals) in functions(case, "gpu").items():
        try:
            calls = triton_calls(_export_text(fn, avals))
        except Exception as e:  # lowering failure: one record for the direction
            recs.append(record(**base, **{"pass": direction}, status="error",
                               message=f"lowering: {type(e).__name__}: {e}"[:500]))
            continue
        op_bytes = sum(c["io_bytes"] for c in calls)
        for c in calls:
            r = record(**base, **{"pass": PASSES.get(c["name"], c["name"])}, num_warps=c["num_warps"],
                       block=_block(plan if direction == "fwd" else plan.backward, direction),
                       bytes_accessed=c["io_bytes"], op_bytes_accessed=op_bytes,
                       ideal_bytes=case.ideal_bytes[direction])
            try:
                out = compile_triton(c["ir"], c["num_warps"], c["num_stages"])
            except Exception as e:
                r.update(status="error", message=f"{type(e).__name__}: {e}"[:500])
            else:
                r.update(status="ok", registers=out["registers"], spill_bytes=out["spill_bytes"],
                         smem_bytes=out["smem_bytes"],
                         occupancy_warps=occupancy_warps(out["registers"], c["num_warps"], out["smem_bytes"]))
            recs.append(r)
    return recs
