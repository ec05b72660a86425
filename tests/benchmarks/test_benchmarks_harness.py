"""Benchmark harness smoke tests with tiny shapes: record schema, copy ratio, interleaved timing, CLI outputs.

These check the plumbing, never a speed: timings on a shared CPU are not asserted against each other except where
the gap is 10x by construction (sleeps).
"""
import json
import os
import sys
import time

import jax.numpy as jnp
import pytest

# benchmarks/ is a folder at the repository root, not an installed package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from benchmarks import harness  # noqa: E402
from benchmarks.suites import norms  # noqa: E402

TINY = {"target_s": 0.001, "min_runs": 3, "max_runs": 5, "warmup": 1}


def test_make_record_schema_and_ratios():
    r = harness.make_record("norms", "layer_norm", "rnlib_xla", (8, 128), jnp.bfloat16, "fwd+bwd", 2e-3,
                            nbytes=4e6, copy_gbps=4.0)
    assert set(harness.RECORD_KEYS) <= set(r)
    assert r["shape"] == [8, 128] and r["dtype"] == "bfloat16" and r["pass"] == "fwd+bwd"
    assert r["gbps"] == pytest.approx(2.0)  # 4e6 bytes / 2e-3 s = 2 GB/s
    assert r["frac_of_copy"] == pytest.approx(0.5)
    missing = harness.make_record("norms", "layer_norm", "x", (1,), "float32", "fwd", None, nbytes=4.0, copy_gbps=1.0)
    assert missing["gbps"] is None and missing["frac_of_copy"] is None
    with pytest.raises(ValueError, match="pass_"):
        harness.make_record("norms", "n", "i", (1,), "float32", "forward", 1.0)


def test_time_interleaved_separates_a_10x_gap():
    nop = lambda _: None  # noqa: E731
    cands = {"fast": (time.sleep, (0.002,), nop), "slow": (time.sleep, (0.02,), nop)}
    t = harness.time_interleaved(cands, target_s=0.01, min_runs=3, max_runs=5, warmup=1)
    assert 0.002 <= t["fast"] < t["slow"] and t["slow"] >= 0.02


def test_copy_gbps_counts_read_and_write():
    x = harness.random_normal(harness.jax.random.key(0), (64, 256), jnp.float32)
    assert float(jnp.abs(x).sum()) > 0
    t = harness.copy_time(x, **TINY)
    assert t > 0


@pytest.mark.parametrize("op", ["layer_norm", "add_norm"])
def test_measure_records_every_impl_and_pass_with_copy_ratio(op):
    impls = ("rnlib_xla", "jnp_reference", "rnlib_pallas")  # pallas: not timed on CPU (interpret mode)
    recs = norms.measure(op, 16, 128, "float32", impls, timing=TINY)
    assert {(r["impl"], r["pass"]) for r in recs} == {(i, p) for i in impls[:2] for p in harness.PASSES}
    for r in recs:
        assert set(harness.RECORD_KEYS) <= set(r) and "error" not in r, r
        assert r["suite"] == "norms" and r["name"] == op and r["shape"] == [16, 128] and r["dtype"] == "float32"
        moved = harness.ARRAYS_MOVED[op][r["pass"]] * 16 * 128 * 4
        assert r["gbps"] == pytest.approx(moved / r["time_s"] / 1e9)
        copy_gbps = 2 * 16 * 128 * 4 / r["copy_time_s"] / 1e9  # the copy reads and writes |x| once
        assert r["frac_of_copy"] == pytest.approx(r["gbps"] / copy_gbps)


def test_failing_impl_is_recorded_not_fatal(monkeypatch):
    real = norms.build

    def broken(impl, *a):
        if impl == "flax_nnx":
            raise RuntimeError("unsupported shape\nmore")
        return real(impl, *a)
    monkeypatch.setattr(norms, "build", broken)
    recs = norms.measure("rms_norm", 8, 128, "bfloat16", ("flax_nnx", "rnlib_xla"), ("fwd",), TINY)
    bad = next(r for r in recs if r["impl"] == "flax_nnx")
    good = next(r for r in recs if r["impl"] == "rnlib_xla")
    assert bad["time_s"] is None and bad["error"] == "RuntimeError: unsupported shape"
    assert good["time_s"] > 0 and good["frac_of_copy"] > 0


def test_cli_writes_json_markdown_and_png(tmp_path, monkeypatch):
    from benchmarks.__main__ import main

    monkeypatch.setattr(norms, "default_plan", lambda quick: norms.plan_norms(
        ops=("layer_norm",), widths=(128, 256), dtypes=("float32",), impls=("rnlib_xla", "flax_nnx"),
        passes=("fwd", "fwd+bwd"), elements=1024, timing=TINY))
    assert main(["--suite", "norms", "--quick", "--out", str(tmp_path)]) == 0
    recs = json.loads((tmp_path / "norms.json").read_text())
    assert len(recs) == 2 * 2 * 2 and all(set(harness.RECORD_KEYS) <= set(r) for r in recs)
    assert {r["shape"][-1] for r in recs} == {128, 256}
    md = (tmp_path / "results.md").read_text()
    assert "### layer_norm, float32" in md and "| shape | pass | rnlib_xla | flax_nnx |" in md
    assert md.count("| 8x128 |") == 2 and md.count("| 8x256 |") == 2  # rows: (shape, pass); 1024 elements each
    assert (tmp_path / "norms_float32.png").stat().st_size > 1000


def test_cli_without_rich_prints_plain_tables(tmp_path, monkeypatch, capsys):
    """A bare accelerator image may lack rich: the CLI falls back to plain text and still writes its files."""
    from benchmarks.__main__ import main

    for mod in ("rich", "rich.console", "rich.progress", "rich.table"):
        monkeypatch.setitem(sys.modules, mod, None)  # makes `import rich...` raise ImportError
    monkeypatch.setattr(norms, "default_plan", lambda quick: norms.plan_norms(
        ops=("rms_norm",), widths=(128,), dtypes=("float32",), impls=("rnlib_xla",), passes=("fwd",),
        elements=1024, timing=TINY))
    assert main(["--suite", "norms", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[norms 1/1" in out and "rnlib_xla" in out and "rms_norm" in out
    assert len(json.loads((tmp_path / "norms.json").read_text())) == 1


def test_norm_ratios_prints_one_line_per_rnlib_impl(tmp_path, capsys):
    from benchmarks import norm_ratios
    from rnlib import ops

    out = tmp_path / "ratios.json"
    assert norm_ratios.main(["--shapes", "8x128", "--dtypes", "float32", "--target-s", "0.001", "--repeats", "3",
                             "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    expected = {"xla"} | ({"native"} if not ops.backend_unavailable("native") else set())
    assert {r["impl"] for r in rows} == expected
    for r in rows:
        assert r["fwd/copy"] > 0 and r["fwd+bwd/copy"] > 0 and r["linen/rnlib"] > 0
        assert len(r["fwd/copy runs"]) == 3 and r["fwd/copy"] == sorted(r["fwd/copy runs"])[1]  # the median
    printed = capsys.readouterr().out
    assert all(f" {impl} " in printed for impl in expected)
