"""Gradient autocorrelation ("shattered gradients"): estimator, line sampling, and the plain-vs-residual effect."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnlib.diagnostics import (
    correlation_length,
    gradient_autocorrelation,
    line_gradients,
    line_inputs,
    shattering,
)


def _reference_acf(g, max_lag, centered):
    """Direct transcription of the docstring formula, loop over points (float64)."""
    g = np.asarray(g, np.float64).reshape(len(g), -1)
    a = g - g.mean(0) if centered else g
    n = len(a)
    out = []
    for k in range(max_lag + 1):
        num = sum(a[i] @ a[i + k] for i in range(n - k))
        e1 = sum(a[i] @ a[i] for i in range(n - k))
        e2 = sum(a[i + k] @ a[i + k] for i in range(n - k))
        out.append(num / np.sqrt(e1 * e2))
    return np.array(out)


@pytest.mark.parametrize("centered", [True, False])
def test_matches_reference_formula(centered):
    rng = np.random.default_rng(0)
    g = np.cumsum(rng.normal(size=(50, 3, 2)), axis=0) + rng.normal(size=(50, 3, 2))
    got = gradient_autocorrelation(g, 12, centered=centered)
    np.testing.assert_allclose(got, _reference_acf(g, 12, centered), rtol=1e-12, atol=1e-12)
    assert got[0] == pytest.approx(1.0)


def test_linear_function_is_perfectly_correlated():
    w = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
    x0 = jax.random.normal(jax.random.PRNGKey(1), (5, 4))
    v = jax.random.normal(jax.random.PRNGKey(2), (5, 4))
    _, grads = line_gradients(lambda x: jnp.sum(w * x) + 3.0, x0, v, num_points=64)
    np.testing.assert_allclose(np.asarray(grads), np.broadcast_to(np.asarray(w), (64, 5, 4)), rtol=1e-6)
    np.testing.assert_allclose(gradient_autocorrelation(grads, 40, centered=False), 1.0, atol=1e-6)
    # Centering removes everything: documented convention is "perfectly correlated".
    np.testing.assert_array_equal(gradient_autocorrelation(grads, 40, centered=True), np.ones(41))


def test_sinusoid_gives_cosine_of_lag():
    omega = 2 * np.pi / 64
    g = np.cos(omega * np.arange(4096))[:, None]
    acf = gradient_autocorrelation(g, 64)
    np.testing.assert_allclose(acf, np.cos(omega * np.arange(65)), atol=0.02)


def test_white_noise_is_uncorrelated_and_brown_noise_is_not():
    rng = np.random.default_rng(1)
    white = rng.normal(size=(2048, 4))
    acf = gradient_autocorrelation(white, 20)
    assert np.max(np.abs(acf[1:])) < 5 / np.sqrt(2048 * 4)
    brown = np.cumsum(white, axis=0)
    acf_b = gradient_autocorrelation(brown, 20)
    assert acf_b[20] > 0.8
    assert correlation_length(acf) < 1.0 < 20 < correlation_length(acf_b)


def test_correlation_length_interpolates():
    assert correlation_length(np.array([1.0, 0.5, 0.2]), threshold=0.4) == pytest.approx(1 + 0.1 / 0.3)
    assert correlation_length(np.array([1.0, 0.9])) == 2.0
    assert correlation_length(np.array([0.1, 0.0])) == 0.0


def test_line_inputs_and_batched_gradients_agree():
    x0 = jnp.arange(6.0).reshape(2, 3)
    v = jnp.ones((2, 3))
    ts, xs = line_inputs(x0, v, num_points=5, span=1.0)
    np.testing.assert_allclose(ts, [-1, -0.5, 0, 0.5, 1])
    np.testing.assert_allclose(xs[0], x0 - 1)
    f = lambda x: jnp.sum(jnp.sin(x) * x)  # noqa: E731
    _, g1 = line_gradients(f, x0, v, num_points=7)
    _, g2 = line_gradients(lambda xs: jax.vmap(f)(xs), x0, v, num_points=7, batched=True)
    np.testing.assert_allclose(g1, g2, rtol=1e-6)
    np.testing.assert_allclose(g1, np.sin(xs_ := line_inputs(x0, v, num_points=7)[1]) + xs_ * np.cos(xs_), rtol=1e-5)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="direction"):
        line_inputs(jnp.zeros(3), jnp.zeros(4))
    with pytest.raises(ValueError, match="max_lag"):
        gradient_autocorrelation(np.zeros((4, 2)) + np.arange(4)[:, None], 4)
    with pytest.raises(ValueError, match="NaN"):
        gradient_autocorrelation(np.array([[1.0], [np.nan], [0.0]]), 1)


def _mlp(depth, residual, width=64, d=16, seed=0):
    """He-initialised ReLU MLP; residual blocks are h + relu(h W) (one layer per block). Layers run under
    lax.scan so that compile time does not grow with depth."""
    ks = jax.random.split(jax.random.PRNGKey(seed), 3)
    w_in = jax.random.normal(ks[0], (d, width)) * np.sqrt(2 / d)
    ws = jax.random.normal(ks[1], (depth, width, width)) * np.sqrt(2 / width)
    w_out = jax.random.normal(ks[2], (width,)) / np.sqrt(width)

    def f(x):
        def layer(h, w):
            return (h + jax.nn.relu(h @ w) if residual else jax.nn.relu(h @ w)), None

        h, _ = jax.lax.scan(layer, jax.nn.relu(x @ w_in), ws)
        return h @ w_out

    return f


def test_deep_plain_relu_net_shatters_and_residual_does_not():
    """Balduzzi et al.: gradients of deep plain rectifier nets decorrelate; residual ones stay smooth."""
    x0 = jax.random.normal(jax.random.PRNGKey(1), (16,))
    v = jax.random.normal(jax.random.PRNGKey(2), (16,)) / 4.0
    shallow = shattering(_mlp(1, False), x0, v, num_points=200)
    plain = shattering(_mlp(40, False), x0, v, num_points=200)
    resid = shattering(_mlp(40, True), x0, v, num_points=200)
    assert plain.correlation_length < 0.5 * resid.correlation_length
    assert plain.correlation_length < 0.5 * shallow.correlation_length
    assert plain.acf[5] < resid.acf[5] - 0.2
    assert np.all(plain.grad_norms > 0)  # the gradients do not vanish; they decorrelate
