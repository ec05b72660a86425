"""Tiny versions of each experiment (few steps, tiny models): they run end to end and write well-formed results.

The real runs are `python -m benchmarks.experiments.<name>` (see docs/EXPERIMENTS.md) and the slow tests below.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks.experiments import degradation, ln_rnn, shattered_gradients, stats_loss  # noqa: E402
from benchmarks.experiments.deep_mlps import apply_mlp, init_mlp  # noqa: E402
from benchmarks.experiments.stats_models import PoolNormNet  # noqa: E402


def _load(path):
    with open(path) as f:
        return json.load(f)


def test_stats_loss_smoke(tmp_path):
    stats_loss.main(["--steps", "4", "--seeds", "1", "--n-train", "128", "--batch-size", "32",
                     "--norms", "stats", "--out", str(tmp_path), "--quiet"])
    res = _load(tmp_path / "stats_loss.json")["results"]
    assert set(res) == {"cards", "edges", "edges_bias"} and set(res["cards"]) == {"stats"}
    s = res["edges"]["stats"]["summary"]
    assert np.isfinite(s["test_rmse"]["mean"]) and 0 <= s["test_accuracy"]["mean"] <= 1
    assert (tmp_path / "stats_loss.png").stat().st_size > 0


@pytest.mark.parametrize("norm,invariant", [("layer", True), ("rms", True), ("none", False), ("stats", False)])
def test_card_model_norm_sees_the_running_sum(norm, invariant):
    """Cards [a, b, a, b]: the running sum after 4 cards is twice that after 2, and so is the Hi-Lo count. A
    scale-invariant norm on the pooled sum must give the same prediction at both positions (it cannot represent
    the count); no norm and StatsLayerNorm (log-std re-injected, non-zero stats_scale) must not."""
    model = PoolNormNet("cards", norm, features=16, hidden=16, rngs=nnx.Rngs(0))
    if norm == "stats":
        model.norm.stats_scale[...] = jnp.ones_like(model.norm.stats_scale[...])
    cards = np.eye(13, dtype=np.float32)[[0, 4, 0, 4]][None]  # two low cards: count 2 then 4
    pred = np.asarray(model(jnp.asarray(cards)))[0]
    if invariant:
        np.testing.assert_allclose(pred[1], pred[3], rtol=1e-4, atol=1e-5)
    else:
        assert abs(pred[1] - pred[3]) > 1e-3


def test_ln_rnn_smoke(tmp_path):
    ln_rnn.main(["--steps", "3", "--seeds", "1", "--task", "rows", "--hidden", "8", "--batch-size", "16",
                 "--cells", "ln_gru", "--out", str(tmp_path), "--quiet"])
    out = _load(tmp_path / "ln_rnn.json")
    assert set(out["results"]) == {"ln_gru"}
    assert 0 <= out["results"]["ln_gru"]["test_accuracy"]["mean"] <= 1
    assert (tmp_path / "ln_rnn.png").exists()


def test_steps_to_target():
    assert ln_rnn.steps_to([10, 20, 30, 40, 50], [2.0, 1.0, 0.4, 0.3, 0.2], 0.5) == 50
    assert ln_rnn.steps_to([10, 20, 30], [2.0, 1.0, 0.9], 0.5) is None


def test_degradation_smoke(tmp_path):
    degradation.main(["--steps", "2", "--depths", "8", "--archs", "plain", "--batch-size", "16", "--log-every", "1",
                      "--out", str(tmp_path), "--quiet"])
    out = _load(tmp_path / "degradation.json")
    assert set(out["final_train_error"]) == {"plain8"}
    assert all(0 <= v <= 1 for v in out["final_train_error"].values())
    assert (tmp_path / "degradation.png").exists()


def test_shattered_gradients_smoke(tmp_path):
    shattered_gradients.main(["--seeds", "1", "--seeds-b", "1", "--depths", "8", "--width", "16", "--nets", "plain8",
                              "--out", str(tmp_path), "--quiet"])
    out = _load(tmp_path / "shattered_gradients.json")
    a = out["part_a"]
    assert set(a) == {f"{arch}/{n}" for arch in ("plain", "residual") for n in ("none", "batch", "layer")}
    r = a["plain/batch"]["8"]
    assert r["acf_mean"][0] == pytest.approx(1.0) and len(r["layer_grad_norms_seed0"]) == 8 and r["finite"]
    assert len(out["part_b"]["plain8"]["layer_grad_norms_seed0"]) == 8  # stem + 3 stages x 2 convs + head
    assert (tmp_path / "shattered_gradients.png").exists()


def test_deep_mlp_residual_with_zero_branches_is_identity_then_relu():
    """With zero branch weights a residual MLP block is relu(h + 0): the output equals the 0-layer net's."""
    p = init_mlp(jax.random.PRNGKey(0), 4, width=8, in_features=3)
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    p0 = {**p, "layers": jnp.zeros_like(p["layers"])}
    want = jax.nn.relu(x @ p["w_in"]) @ p["w_out"]
    np.testing.assert_allclose(apply_mlp(p0, x, arch="residual", norm="none"), want, rtol=1e-6)
    with pytest.raises(ValueError, match="even"):
        apply_mlp(init_mlp(jax.random.PRNGKey(0), 3, width=8, in_features=3), x, arch="residual", norm="none")
