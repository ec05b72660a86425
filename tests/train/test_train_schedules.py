"""Learning-rate schedules and the optimizer recipe."""
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rnlib.train import make_optimizer, make_schedule, paper_schedule


def lr(s, count):
    return float(s(jnp.asarray(count)))


def test_paper_schedule_exact_boundaries_at_64k():
    s = paper_schedule()
    assert s.boundaries == (32000, 48000) and s.warmup_steps == 0
    for count, want in [(0, 0.1), (31999, 0.1), (32000, 0.01), (47999, 0.01), (48000, 0.001), (63999, 0.001)]:
        assert lr(s, count) == pytest.approx(want, rel=1e-6), count


def test_paper_warmup_for_resnet110():
    s = paper_schedule(warmup=True)
    assert s.warmup_steps == 400
    assert lr(s, 0) == pytest.approx(0.01) and lr(s, 399) == pytest.approx(0.01)
    assert lr(s, 400) == pytest.approx(0.1) and lr(s, 32000) == pytest.approx(0.01)


def test_paper_schedule_scales_by_fraction():
    s = paper_schedule(1500, 0.2, warmup=True)
    assert s.boundaries == (750, 1125) and s.warmup_steps == 9
    assert [lr(s, c) for c in (8, 9, 749, 750, 1124, 1125)] == pytest.approx([0.01, 0.2, 0.2, 0.02, 0.02, 0.002])


def test_cosine_and_constant():
    c = make_schedule("cosine", 100, 0.1)
    assert lr(c, 0) == pytest.approx(0.1) and lr(c, 50) == pytest.approx(0.05, rel=1e-5) and lr(c, 100) < 1e-8
    cw = make_schedule("cosine", 64000, 0.1, warmup=True)
    assert lr(cw, 0) == pytest.approx(0.01) and lr(cw, 400) == pytest.approx(0.1, rel=1e-4)
    assert lr(make_schedule("constant", 10, 0.3), 7) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        make_schedule("step", 10, 0.1)
    with pytest.raises(ValueError, match="total_steps must be positive"):
        paper_schedule(0)


def test_sgd_is_pytorch_style_momentum_with_l2():
    """v <- m v + (g + wd w); w <- w - lr v  (the paper's / PyTorch's SGD)."""
    tx = make_optimizer("sgd", 0.1, momentum=0.9, weight_decay=1e-2)
    w = {"w": jnp.array([1.0, -2.0])}
    state = tx.init(w)
    wn, v = np.array([1.0, -2.0]), np.zeros(2)
    for g in ([0.5, 0.25], [-1.0, 2.0], [0.1, 0.1]):
        upd, state = tx.update({"w": jnp.array(g)}, state, w)
        w = optax.apply_updates(w, upd)
        v = 0.9 * v + (np.array(g) + 1e-2 * wn)
        wn = wn - 0.1 * v
    np.testing.assert_allclose(np.asarray(w["w"]), wn, rtol=1e-6)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_variants_step(name):
    tx = make_optimizer(name, make_schedule("cosine", 10, 1e-3))
    w = {"w": jnp.ones(3)}
    upd, _ = tx.update({"w": jnp.ones(3)}, tx.init(w), w)
    assert np.all(np.asarray(upd["w"]) < 0)  # first Adam step moves against the gradient by ~lr
    np.testing.assert_allclose(np.asarray(upd["w"]), -1e-3, rtol=0.05)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("lamb", 0.1)


def test_imagenet_schedule_and_linear_warmup():
    from rnlib.train import make_schedule

    s = make_schedule("imagenet", 90, 0.4)
    assert [float(s(c)) for c in (0, 29, 30, 59, 60, 89)] == pytest.approx([0.4, 0.4, 0.04, 0.04, 0.004, 0.004])
    w = make_schedule("imagenet", 90, 0.4, warmup_steps=5)
    assert [float(w(c)) for c in (0, 1, 4, 5, 30)] == pytest.approx([0.0, 0.08, 0.32, 0.4, 0.04])
    c = make_schedule("cosine", 100, 0.4, warmup_steps=10)
    assert [float(c(k)) for k in (0, 5, 10, 55, 100)] == pytest.approx([0.0, 0.2, 0.4, 0.2, 0.0], abs=1e-6)
    with pytest.raises(ValueError, match="not combined with warmup"):
        make_schedule("paper", 100, 0.1, warmup=True, warmup_steps=3)


def test_label_smoothing_loss_matches_float64():
    import jax.numpy as jnp

    from rnlib.train._state import _xent

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)) * 3
    label = rng.integers(0, 5, 6)
    eps = 0.1
    target = np.full((6, 5), eps / 5) + (1 - eps) * np.eye(5)[label]
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    want = -(target * logp).sum(1)
    got = np.asarray(_xent(jnp.asarray(logits, jnp.float32), jnp.asarray(label), 5, eps))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    plain = np.asarray(_xent(jnp.asarray(logits, jnp.float32), jnp.asarray(label), 5, 0.0))
    np.testing.assert_allclose(plain, -logp[np.arange(6), label], rtol=1e-5, atol=1e-6)
