"""Train / compile suite plumbing with tiny models: same network as the reference, records, skip logic."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from benchmarks import harness  # noqa: E402
from benchmarks.suites import compile as compile_suite  # noqa: E402
from benchmarks.suites import train  # noqa: E402


def _count(tree) -> int:
    return int(sum(np.prod(a.shape) for a in jax.tree.leaves(tree)))


@pytest.mark.parametrize("depth", [20, 56])
def test_reference_resnet_matches_rnlib_parameter_count(depth):
    """The train suite compares like with like: rnlib's CIFAR ResNet with projection shortcuts has exactly the
    reference's parameters (shapes only: eval_shape, nothing is computed)."""
    from flax import nnx

    from benchmarks.reference import resnet_linen
    from rnlib.models import build

    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    ref = jax.eval_shape(resnet_linen.cifar_resnet(depth).init, jax.random.key(0), x)["params"]
    model = nnx.eval_shape(lambda: build(f"resnet{depth}", 10, nnx.Rngs(0), shortcut="B"))
    ours = nnx.state(model, nnx.Param)
    assert _count(ref) == _count(ours) > 0
    with pytest.raises(ValueError, match="6n \\+ 2"):
        resnet_linen.cifar_resnet(21)


def test_stack_task_records_rnlib_and_reference():
    timing = {"warmup": 1, "min_runs": 2, "max_runs": 2, "target_s": 0.0}
    recs = train.stack_task(1, 32, (2, 8), timing)
    assert [r["impl"] for r in recs] == ["rnlib", "reference_linen"]
    for r in recs:
        assert set(harness.RECORD_KEYS) <= set(r) and "error" not in r, r
        assert r["suite"] == "train" and r["pass"] == "fwd+bwd" and r["shape"] == [2, 8, 32]
        assert r["images_per_s"] == pytest.approx(2 / r["time_s"]) and r["compile_s"] > 0
    assert recs[0]["params"] == recs[1]["params"]  # fused and unfused stacks hold the same parameters


def test_stack_fused_and_unfused_compute_the_same_function():
    from benchmarks.reference.residual_stack import PreNormStack
    from rnlib.linen import AddNorm

    x = jax.random.normal(jax.random.key(0), (2, 4, 16))
    ref = PreNormStack(depth=2, features=16)
    fused = PreNormStack(depth=2, features=16, add_norm=AddNorm)
    params = jax.jit(ref.init)(jax.random.key(1), x)["params"]
    params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), params)
    got = jax.jit(fused.apply)({"params": params}, x)
    np.testing.assert_allclose(got, jax.jit(ref.apply)({"params": params}, x), rtol=1e-4, atol=1e-4)


def test_compile_suite_skips_unrolled_depth_over_budget():
    # History says unrolled depth 20 compiled in 30 s: depth 1202 extrapolates to 1803 s > 60 s, so it is skipped
    # without compiling anything, and the record says why.
    history = {"rnlib_unrolled": (20, 30.0, 0.5)}
    (rec,) = compile_suite.measure_depth(1202, False, 8, {}, history, compile_budget_s=60.0, step_budget_s=10.0)
    assert rec["impl"] == "rnlib_unrolled" and rec["depth"] == 1202 and rec["compile_s"] is None
    assert rec["time_s"] is None and rec["note"].startswith("skipped: predicted compile 1803 s")
    tasks = compile_suite.plan_compile(depths=(20, 1202))
    assert [t.label for t in tasks] == ["resnet20 scan", "resnet1202 scan", "resnet20 unrolled",
                                        "resnet1202 unrolled"]


@pytest.mark.parametrize("depth, count", [(18, 11_689_512), (50, 25_557_032)])
def test_imagenet_references_match_rnlib_parameter_count(depth, count):
    """ResNet-50 rows compare like with like: the Flax example's network, rnlib's and torchvision's (written out in
    benchmarks/reference) hold torchvision's parameter count (shapes only for the JAX ones)."""
    from flax import nnx

    from benchmarks.reference import resnet_linen
    from rnlib.models import build

    x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    ref = jax.eval_shape(resnet_linen.imagenet_resnet(depth).init, jax.random.key(0), x)["params"]
    ours = nnx.state(nnx.eval_shape(lambda: build(f"resnet{depth}", 1000, nnx.Rngs(0))), nnx.Param)
    assert _count(ref) == _count(ours) == count
    torch = pytest.importorskip("torch", reason="torch is not installed (optional peer)")
    from benchmarks.reference import torchvision_resnet

    assert sum(p.numel() for p in torchvision_resnet.resnet(depth).parameters()) == count
    del torch


def test_torch_step_falls_back_to_eager_when_compile_fails(monkeypatch):
    torch = pytest.importorskip("torch", reason="torch is not installed (optional peer)")
    from benchmarks.reference import torchvision_resnet

    def broken(*a, **k):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    step, mode = torchvision_resnet.make_step(18, 2, 32, bf16=True)
    assert mode == "eager (torch.compile failed: RuntimeError: no compiler here)"
    losses = [float(step()) for _ in range(3)]
    assert all(np.isfinite(losses)) and losses[-1] != losses[0]  # it trains (SGD moves the loss)


def test_numpy_init_draws_rnlib_initial_distribution():
    from flax import nnx

    from rnlib.models import build

    model = train.numpy_init(nnx.eval_shape(lambda: build("resnet18", 10, nnx.Rngs(0))))
    state = nnx.to_pure_dict(nnx.state(model))
    k = np.asarray(state["stacks"][3]["params"]["conv1"]["kernel"])  # (1, 3, 3, 512, 512), stacked
    assert k.shape == (1, 3, 3, 512, 512) and abs(k.std() / np.sqrt(2 / (9 * 512)) - 1) < 0.01
    assert np.all(np.asarray(state["stem"]["norm_params"]["scale"]) == 1)
    assert np.all(np.asarray(state["heads"][0]["batch_stats"]["norm1"]["var"]) == 1)
    assert np.all(np.asarray(state["head"]["bias"]) == 0) and np.asarray(state["head"]["kernel"]).std() > 0


def test_resnet50_task_records(monkeypatch):
    """The ResNet-50 rows' plumbing (names, precision, memory fields, a failing peer) with stand-in candidates:
    compiling ResNet-50 itself takes minutes on a CPU (the suite's job, not a test's)."""
    def fake(impl):
        def make(precision, batch, *args, **kw):
            if impl == "torch":
                raise RuntimeError("no torch here")
            return (lambda: jnp.zeros(()), jax.block_until_ready, 1.5, 7, {"step_bytes": 123, "scan": kw or None})
        return make

    for impl, fn in (("rnlib", "rnlib_resnet50"), ("reference_linen", "reference_resnet50"),
                     ("torch", "torch_resnet50")):
        monkeypatch.setattr(train, fn, fake(impl))
    monkeypatch.setattr(train.norms_torch, "available", lambda: True)
    timing = {"warmup": 1, "min_runs": 2, "max_runs": 2, "target_s": 0.0}
    recs = train.resnet50_task("bf16", 2, 32, timing)
    assert [r["impl"] for r in recs] == ["rnlib", "rnlib_unrolled", "reference_linen", "torch"]
    for r in recs[:3]:
        assert r["name"] == "resnet50_bf16" and r["dtype"] == "bfloat16" and r["shape"] == [2, 32, 32, 3]
        assert r["image_size"] == 32 and r["compile_s"] == 1.5 and r["step_bytes"] == 123 and r["params"] == 7
        assert "peak_bytes" in r and r["peak_bytes_source"] and r["images_per_s"] == pytest.approx(2 / r["time_s"])
    assert recs[1]["scan"] == {"scan": False} and recs[0]["scan"] is None
    assert recs[3]["error"] == "RuntimeError: no torch here" and recs[3]["time_s"] is None
    tasks = train.default_plan(quick=True)
    assert [t.label for t in tasks if "resnet50" in t.label] == (
        ["resnet50 f32 batch 8 64x64", "resnet50 bf16 batch 8 64x64"] if harness.platform() == "cpu"
        else ["resnet50 f32 batch 128 224x224", "resnet50 bf16 batch 128 224x224"])
