"""The XLA norm with mask / axis_name (rnlib.ops._norm_general) against float64 numpy.

Tolerances: float32 results must be within ``TOL32 = 8 * eps32 * max(1, |y|)`` of the float64 reference computed
from the same (float32-rounded) input; hostile rows (mean offset 1e4..1e6, std 1e-2..1) included, where a plain
or fast variance would be off by orders of magnitude more.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from rnlib.ops._norm_general import general_norm, general_norm_with_stats, norm_stats

EPS32 = float(np.finfo(np.float32).eps)


def ref_norm(x, scale=None, bias=None, *, rms=False, axes=(-1,), feature_axes=(-1,), eps=1e-6, mask=None):
    """float64 numpy reference: masked statistics over ``axes``, every position normalised."""
    x = np.asarray(x, np.float64)
    m = np.ones(x.shape, bool) if mask is None else np.broadcast_to(np.asarray(mask, bool), x.shape)
    n = m.sum(axis=axes, keepdims=True)
    if rms:
        mean = np.zeros_like(n, dtype=np.float64)
        var = np.where(m, x * x, 0).sum(axis=axes, keepdims=True) / n
    else:
        mean = np.where(m, x, 0).sum(axis=axes, keepdims=True) / n
        var = np.where(m, (x - mean) ** 2, 0).sum(axis=axes, keepdims=True) / n
    y = (x - mean) / np.sqrt(var + eps)
    view = [1] * x.ndim
    for a in feature_axes:
        view[a] = x.shape[a]
    if scale is not None:
        y = y * np.asarray(scale, np.float64).reshape(view)
    if bias is not None:
        y = y + np.asarray(bias, np.float64).reshape(view)
    return y


def assert_close32(y, ref, ulps=8):
    y = np.asarray(y, np.float64)
    tol = ulps * EPS32 * np.maximum(1.0, np.abs(ref))
    err = np.abs(y - ref)
    assert np.all(err <= tol), f"max error {err.max():.3g}, worst ratio to tolerance {(err / tol).max():.3g}"


def _rows(shape, offset=0.0, std=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal(shape) * std + offset, jnp.float32)


@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("width", [1, 7, 761])
@pytest.mark.parametrize("offset,std", [(0.0, 1.0), (1e4, 1e-2), (1e6, 1.0)])
def test_masked_rows_match_float64(rms, width, offset, std):
    x = _rows((5, width), offset, std, seed=width)
    mask = np.random.default_rng(1).random((5, width)) < 0.6
    mask[:, 0] = True                                   # at least one element per row
    scale = jnp.linspace(0.5, 1.5, width)
    bias = None if rms else jnp.linspace(-1, 1, width)
    y = general_norm(x, scale, bias, rms=rms, reduction_axes=-1, feature_axes=-1, epsilon=1e-6, dtype=None,
                     mask=jnp.asarray(mask))
    assert y.dtype == jnp.float32 and y.shape == x.shape
    assert_close32(y, ref_norm(x, scale, bias, rms=rms, mask=mask))


def test_no_mask_constant_zero_rows_nan_and_axes():
    x = np.random.default_rng(2).standard_normal((3, 4, 5)).astype(np.float32)
    x[0, 0] = 7.0       # constant row: var 0, y = 0 (then + bias)
    x[0, 1] = 0.0       # zero row
    x[1, 2, 3] = np.nan
    x = jnp.asarray(x)
    y = general_norm(x, None, None, rms=False, reduction_axes=(1, 2), feature_axes=-1, epsilon=1e-5, dtype=None)
    ref = ref_norm(x, axes=(1, 2), eps=1e-5)
    assert np.all(np.isnan(np.asarray(y)[1])) and not np.any(np.isnan(np.asarray(y)[[0, 2]]))
    assert_close32(np.asarray(y)[[0, 2]], ref[[0, 2]])
    y1 = general_norm(x[0], None, jnp.ones(5), rms=False, reduction_axes=-1, feature_axes=-1, epsilon=1e-5,
                      dtype=None)
    np.testing.assert_array_equal(np.asarray(y1)[:2], 1.0)


def test_masked_out_nan_does_not_propagate_and_all_false_is_nan():
    """Flax's own mask test: NaN where the mask is False must not reach the statistics."""
    rng = np.random.default_rng(0)
    m = rng.random((3, 4, 5)) < 0.5
    m[..., :2] = True
    x = np.where(m, rng.standard_normal((3, 4, 5)), np.nan).astype(np.float32)
    y = np.asarray(jax.jit(lambda x, m: general_norm(x, None, None, rms=False, reduction_axes=-1, feature_axes=-1,
                                                     epsilon=1e-10, dtype=None, mask=m))(x, m), np.float64)
    np.testing.assert_allclose(y.mean(-1, where=m), 0, atol=1e-5)
    np.testing.assert_allclose(y.var(-1, where=m), 1, atol=1e-4)
    empty = general_norm(jnp.ones((2, 3)), None, None, rms=False, reduction_axes=-1, feature_axes=-1,
                         epsilon=1e-6, dtype=None, mask=jnp.zeros((2, 3), bool))
    assert np.all(np.isnan(np.asarray(empty)))


def test_gradient_matches_float64_finite_differences():
    """Autodiff through the shifted two-pass formulas, checked against central differences in float64."""
    jax.config.update("jax_enable_x64", True)
    try:
        x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 9)) + 3.0)
        mask = jnp.asarray(np.arange(9) % 3 != 0)
        w = jnp.asarray(np.random.default_rng(4).standard_normal((2, 9)))
        for rms in (False, True):
            def loss(x, rms=rms):
                return jnp.sum(w * general_norm(x, jnp.linspace(0.5, 2, 9), None, rms=rms, reduction_axes=-1,
                                                feature_axes=-1, epsilon=1e-3, dtype=None, mask=mask))
            f = jax.jit(loss)
            g = np.asarray(jax.grad(f)(x))
            h = 1e-6
            fd = np.zeros_like(g)
            for idx in np.ndindex(*x.shape):
                e = np.zeros(x.shape)
                e[idx] = h
                fd[idx] = (f(x + e) - f(x - e)) / (2 * h)
            np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)
            assert np.asarray(g)[:, 0].any()   # masked-out positions are still normalised: gradient flows
    finally:
        jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("rms", [False, True])
def test_axis_name_under_vmap_equals_whole_array(rms):
    """Statistics over the feature axis and a vmapped axis = normalising each vmapped slab as one."""
    x = _rows((4, 3, 16), offset=1e4, std=0.5, seed=5)
    mask = jnp.asarray(np.random.default_rng(6).random((4, 3, 16)) < 0.7).at[..., 0].set(True)

    def one(xi, mi):
        return general_norm(xi, None, None, rms=rms, reduction_axes=-1, feature_axes=-1, epsilon=1e-6,
                            dtype=None, mask=mi, axis_name="batch")

    y = jax.vmap(one, axis_name="batch")(x, mask)
    # vmapped over axis 0, reduced over -1 and across the vmapped axis: per (row in axis 1) statistics over (0, 2)
    assert_close32(y, ref_norm(x, rms=rms, axes=(0, 2), mask=mask))
    mean, var = jax.vmap(lambda xi: norm_stats(xi, rms=rms, reduction_axes=-1, axis_name="batch"),
                         axis_name="batch")(x)
    xf = np.asarray(x, np.float64)
    if not rms:
        np.testing.assert_allclose(mean[0, :, 0], xf.mean(axis=(0, 2)), rtol=1e-7)
    np.testing.assert_allclose(var[0, :, 0], (xf * xf if rms else (xf - xf.mean((0, 2), keepdims=True)) ** 2)
                               .mean(axis=(0, 2)), rtol=1e-5)


def test_axis_name_under_shard_map_matches_float64():
    if len(jax.devices()) < 4:
        pytest.skip("needs 4 host devices (tests/conftest.py sets 8)")
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    x = _rows((8, 32), offset=1e6, std=1.0, seed=7)
    scale, bias = jnp.linspace(0.5, 1.5, 32), jnp.linspace(-1, 1, 32)

    def local(xb, s, b):
        return general_norm(xb, s, b, rms=False, reduction_axes=(0, 1), feature_axes=-1, epsilon=1e-6,
                            dtype=None, axis_name="data")

    f = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P(), P()), out_specs=P("data")))
    y = f(x, scale, bias)
    # each device holds 2 rows; statistics over its rows, all 32 features and all 4 devices = the whole array
    assert_close32(y, ref_norm(x, scale, bias, axes=(0, 1)))
    grad = jax.grad(lambda x: jnp.sum(jnp.sin(f(x, scale, bias))))(x)
    grad_ref = jax.grad(lambda x: jnp.sum(jnp.sin(general_norm(
        x, scale, bias, rms=False, reduction_axes=(0, 1), feature_axes=-1, epsilon=1e-6, dtype=None))))(x)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-4, atol=1e-4)


def test_axis_index_groups_under_pmap():
    if len(jax.devices()) < 4:
        pytest.skip("needs 4 host devices (tests/conftest.py sets 8)")
    x = _rows((4, 6), seed=8)
    y = jax.pmap(lambda r: general_norm(r, None, None, rms=False, reduction_axes=-1, feature_axes=-1,
                                        epsilon=1e-6, dtype=None, axis_name="d",
                                        axis_index_groups=[[0, 1], [2, 3]]), axis_name="d",
                 devices=jax.devices()[:4])(x)
    ref = np.concatenate([ref_norm(np.asarray(x)[g].reshape(1, 12)).reshape(2, 6) for g in ([0, 1], [2, 3])])
    assert_close32(y, ref)


def test_dtypes_feature_axes_and_stats():
    x16 = _rows((2, 3, 8), offset=100.0, seed=9).astype(jnp.bfloat16)
    y = general_norm(x16, jnp.ones(8), None, rms=False, reduction_axes=-1, feature_axes=-1, epsilon=1e-6,
                     dtype=None)
    assert y.dtype == jnp.float32                       # bf16 input, f32 parameter: promoted (Flax's rule)
    assert general_norm(x16, None, None, rms=True, reduction_axes=-1, feature_axes=-1, epsilon=1e-6,
                        dtype=None).dtype == jnp.bfloat16
    xi = jnp.arange(24).reshape(3, 8)
    yi = general_norm(xi, None, None, rms=False, reduction_axes=-1, feature_axes=-1, epsilon=1e-6, dtype=None)
    assert yi.dtype == jnp.float32
    assert_close32(yi, ref_norm(np.arange(24.0).reshape(3, 8)))
    # feature axes (1, 2) with a flat (NNX) or shaped (linen) parameter: same result
    x = _rows((2, 3, 8), seed=10)
    s = jnp.linspace(0.1, 2.0, 24)
    a = general_norm(x, s, None, rms=False, reduction_axes=-1, feature_axes=(1, 2), epsilon=1e-6, dtype=None)
    b = general_norm(x, s.reshape(3, 8), None, rms=False, reduction_axes=-1, feature_axes=(1, 2), epsilon=1e-6,
                     dtype=None)
    np.testing.assert_array_equal(a, b)
    assert_close32(a, ref_norm(x, s.reshape(3, 8), feature_axes=(1, 2)))
    # statistics re-injection: y = LN(x) + a0 * mean + a1 * log(sigma)
    ss = jnp.stack([jnp.full(8, 0.5), jnp.full(8, -2.0)])
    z = general_norm_with_stats(x, None, None, ss, reduction_axes=-1, feature_axes=-1, epsilon=1e-6, dtype=None)
    xf = np.asarray(x, np.float64)
    sigma = np.sqrt(xf.var(-1, keepdims=True) + 1e-6)
    assert_close32(z, ref_norm(x) + 0.5 * xf.mean(-1, keepdims=True) - 2.0 * np.log(sigma))


def test_complex_input_like_flax():
    x = (jax.random.normal(jax.random.key(1), (3, 6)) + 1j * jax.random.normal(jax.random.key(2), (3, 6)))
    y = general_norm(x.astype(jnp.complex64), None, None, rms=False, reduction_axes=-1, feature_axes=-1,
                     epsilon=1e-6, dtype=None)
    xf = np.asarray(x, np.complex128)
    mean = xf.mean(-1, keepdims=True)
    ref = (xf - mean) / np.sqrt((np.abs(xf - mean) ** 2).mean(-1, keepdims=True) + 1e-6)
    assert y.dtype == jnp.complex64
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(mask=jnp.ones((3, 5), bool)), ValueError, "mask of shape"),
    (dict(scale=jnp.ones(5)), ValueError, "scale has shape"),
    (dict(reduction_axes=2), ValueError, "reduction_axes"),
    (dict(epsilon=-1.0), ValueError, "epsilon"),
    (dict(dtype=jnp.int32), ValueError, "dtype"),
])
def test_bad_input_is_named(kwargs, err, match):
    args = dict(scale=None, bias=None, rms=False, reduction_axes=-1, feature_axes=-1, epsilon=1e-6, dtype=None)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        general_norm(jnp.ones((2, 4)), args.pop("scale"), args.pop("bias"), **args)
