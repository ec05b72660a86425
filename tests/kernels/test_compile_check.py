"""The real compilers on this CPU host: ``python -m benchmarks.compile_check --quick`` for sm_90 (triton + ptxas)
and TPU v5e (libtpu's Mosaic). They need the ``aot`` extra (``pip install -e ".[aot]"``, part of ``.[dev]``);
without it these tests skip and say so. Each check runs in a subprocess: libtpu stays out of the test process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks import compile_check
from benchmarks._compile_check import cases, report, sm90, tpu

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(target: str, out) -> tuple[int, list[dict], str]:
    env = dict(os.environ, ALLOW_MULTIPLE_LIBTPU_LOAD="1", TRITON_DEFAULT_FP_FUSION="1")
    p = subprocess.run([sys.executable, "-m", "benchmarks.compile_check", "--target", target, "--quick",
                        "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    path = out / f"compile_{target}.json"
    records = json.loads(path.read_text()) if path.exists() else []
    return p.returncode, records, p.stdout + p.stderr


def _check_records(records: list[dict], target: str) -> None:
    quick = cases.sweep(quick=True)
    assert {(r["kernel"], r["rows"], r["width"], r["dtype"]) for r in records} == {
        (c.kernel, c.rows, c.width, c.dtype) for c in quick}
    for r in records:
        assert list(r) == list(report.FIELDS)
        assert r["status"] in ("ok", "unsupported"), r
        assert r["pass"] in cases.PASSES.values() or r["status"] == "unsupported", r


@pytest.mark.skipif(sm90.tools_missing() is not None,
                    reason=f"needs the aot extra (pip install -e '.[aot]'): {sm90.tools_missing()}")
def test_sm90_quick_compiles_without_spills(tmp_path):
    rc, records, log = _run("sm_90", tmp_path)
    assert rc == 0, log[-3000:]
    _check_records(records, "sm_90")
    for r in records:
        assert r["spill_bytes"] == 0 and 0 < r["registers"] <= 255, r
        assert r["occupancy_warps"] >= r["num_warps"], r  # at least one block resident per SM
        assert r["bytes_accessed"] > 0 and r["ideal_bytes"] <= r["op_bytes_accessed"], r
    # every plan shape met: a multi-row forward, a chunked forward (stats + apply), a chunked backward (sums)
    passes = {r["pass"] for r in records}
    assert {"fwd", "fwd_stats", "fwd_apply", "bwd_sums", "bwd"} <= passes
    assert (tmp_path / "compile_sm_90.md").exists()


@pytest.mark.skipif(tpu.tools_missing() is not None,
                    reason=f"needs the aot extra (pip install -e '.[aot]'): {tpu.tools_missing()}")
def test_tpu_v5e_quick_compiles_within_vmem(tmp_path):
    rc, records, log = _run("tpu_v5e", tmp_path)
    assert rc == 0, log[-3000:]
    _check_records(records, "tpu_v5e")
    ok = [r for r in records if r["status"] == "ok"]
    assert ok and all(r["dtype"] == "float16" for r in records if r["status"] == "unsupported")
    for r in ok:
        assert r["vmem_bytes"] and r["vmem_pct"] <= 100 * tpu.VMEM_TARGET, r
        assert r["hbm_bytes"] > 0 and r["op_bytes_accessed"] >= r["ideal_bytes"], r
        assert isinstance(r["layout_copies"], int), r


_HEAVIEST = """
import json, sys
from benchmarks._compile_check import cases, tpu
target, width = sys.argv[1], int(sys.argv[2])
print(json.dumps(tpu.check_case(cases.Case("add_layer_norm", 4097, width, "float32"), target, compare_xla=False)))
"""


@pytest.mark.skipif(tpu.tools_missing() is not None,
                    reason=f"needs the aot extra (pip install -e '.[aot]'): {tpu.tools_missing()}")
@pytest.mark.parametrize("target,width", [("tpu_v5e", 32768), ("tpu_v5p", 32768), ("tpu_v6e", 65536)])
def test_tpu_largest_tiles_within_vmem(target, width):
    """The largest whole-row tiles of each generation's plan (float32 add_layer_norm, the most buffers) stay under
    80 % of that generation's scoped VMEM, forward and backward."""
    env = dict(os.environ, ALLOW_MULTIPLE_LIBTPU_LOAD="1")
    p = subprocess.run([sys.executable, "-c", _HEAVIEST, target, str(width)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    records = json.loads(p.stdout.strip().splitlines()[-1])
    assert {r["pass"] for r in records} >= {"fwd", "bwd"}
    for r in records:
        assert r["status"] == "ok" and r["vmem_pct"] <= 100 * tpu.VMEM_TARGET, r
    assert any(r["vmem_pct"] > 50 for r in records)  # the tiles do use the generation's budget


_COLUMN_MAJOR = """
import json, sys
import jax, jax.numpy as jnp
import rnlib.kernels as K
from benchmarks._compile_check import cases, tpu
target = sys.argv[1]
dev = tpu.device(target)
out = {"layout": {}, "records": [], "inner": {}}
with jax.default_device(dev):  # XLA's default layouts for the target, as the kernels ask for them
    for shape in ((4096, 1000), (1024, 1000), (4096, 7), (4097, 1000), (4096, 761), (4096, 1024)):
        out["layout"][str(shape)] = K.plan_for(*shape, "float32", "tpu").transposed
for w in (1, 7, 1000):
    for k in cases.KERNELS:
        out["records"] += tpu.check_case(cases.Case(k, 4096, w, "float32"), target, compare_xla=False)

def inner(x, w1, s, b, w2, g):  # the norm between two matmuls, forward and backward
    h = x @ w1
    y, _, mean, rstd = K.norm_fwd(h, None, s, b, epsilon=1e-6, rms=False, out_dtype=h.dtype, residual_dtype=None,
                                  platform="tpu")
    dx, ds, db = K.norm_bwd(g @ w2.T, h, mean, rstd, s, None, rms=False, has_bias=True, dx_dtype=h.dtype,
                            platform="tpu")
    return y @ w2, dx @ w1.T, ds, db

sh = jax.sharding.SingleDeviceSharding(dev)
a = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32, sharding=sh)
for label in ("auto", "row_major"):
    if label == "row_major":
        K.tpu_column_major = lambda *_: False
        jax.clear_caches()  # else jit reuses the first trace
    with jax.default_device(dev):
        text = jax.jit(inner).lower(a(4096, 1000), a(1000, 1000), a(1000), a(1000), a(1000, 1000),
                                    a(4096, 1000)).compile().as_text()
    out["inner"][label] = ([c for c in tpu.layout_copies(text, 4096 * 1000) if not c.startswith("fusion")],
                           text.count("f32[1000,4096]{1,0}") > 0)
print(json.dumps(out))
"""


@pytest.mark.skipif(tpu.tools_missing() is not None,
                    reason=f"needs the aot extra (pip install -e '.[aot]'): {tpu.tools_missing()}")
def test_tpu_column_major_layouts_without_copies():
    """Where XLA's default TPU layout is column-major (it pads less: float32 4096 x 1000, x 7), the kernels take
    x.T and no layout copy surrounds them; the row-major shapes keep the row-major kernels; and a norm between two
    matmuls inside one jit gains no copy from the choice (XLA lays the matmul results out for either)."""
    env = dict(os.environ, ALLOW_MULTIPLE_LIBTPU_LOAD="1")
    p = subprocess.run([sys.executable, "-c", _COLUMN_MAJOR, "tpu_v5e"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["layout"] == {"(4096, 1000)": True, "(1024, 1000)": True, "(4096, 7)": True, "(4097, 1000)": False,
                             "(4096, 761)": False, "(4096, 1024)": False}
    assert {r["pass"] for r in out["records"]} == {"fwd", "bwd"}
    for r in out["records"]:
        assert r["status"] == "ok" and r["layout_copies"] == 0, r
        assert r["op_bytes_accessed"] <= 1.6 * r["ideal_bytes"], r  # was 3-106x with the copies
    (auto, auto_t), (row_major, row_major_t) = out["inner"]["auto"], out["inner"]["row_major"]
    assert auto_t and not row_major_t  # the transposed kernels ran in the first, not in the second
    assert len(auto) <= len(row_major), out["inner"]


def test_missing_tools_exit_2_and_name_the_extra(monkeypatch, capsys):
    monkeypatch.setattr(sm90, "tools_missing", lambda: "the `triton` package (test)")
    assert compile_check.main(["--target", "sm_90", "--quick"]) == 2
    err = capsys.readouterr().err
    assert 'pip install -e ".[aot]"' in err and "triton" in err


def test_occupancy_from_registers():
    # 255 registers x 32 threads -> 8192 per warp: 8 warps of 65536; 64 registers at 16 warps: 32 warps (2 blocks)
    assert sm90.occupancy_warps(255, 4, 0) == 8
    assert sm90.occupancy_warps(64, 16, 0) == 32
    assert sm90.occupancy_warps(32, 32, 0) == 64  # capped by the 64 warps an SM holds
