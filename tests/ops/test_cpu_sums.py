"""rnlib.ops.cpu_sums (the split variadic sums of the XLA:CPU norm path) against float64 sums, and the XLA CPU
norm at shapes where every split applies, against the float64 reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnlib.ops import cpu_sums, norm_xla
import norm_reference as ref

# (R, W): row split over two levels + column blocks of 8; row split only; a 4-column row tail; a row tail and
# neither split (W < 16 rows are a tail); two column levels with leftover rows, 17 partials per row; more than 1024
# row partials (jnp.sum on them) with a 7-column tail; long rows over four levels.
SHAPES = [(96, 1024), (7, 256), (64, 100), (5, 61), (300, 272), (37, 16 * 1031 + 7), (2, 64 * 2048)]


def _data(shape, dtype, seed=0, offset=3.0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal(shape) + offset, dtype)


def _f64(a):
    return np.asarray(a.astype(jnp.float32), np.float64)


def _close(got, want, terms):
    # float32 summation of `terms` values of size ~|want|/terms: a few ulps of the magnitude sum.
    scale = np.abs(want).max() + 1.0
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0, atol=8 * np.sqrt(terms) * 2**-24 * scale)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_sums_match_float64(shape, dtype):
    a, b = _data(shape, dtype, 1), _data(shape, dtype, 2, offset=-1.0)
    af, bf = a.astype(jnp.float32), b.astype(jnp.float32)
    ra, rb = jax.jit(lambda a, b: cpu_sums.row_sums2(a.astype(jnp.float32) * 2, b.astype(jnp.float32)))(a, b)
    _close(ra, 2 * _f64(a).sum(-1), shape[1])
    _close(rb, _f64(b).sum(-1), shape[1])
    _close(jax.jit(cpu_sums.row_sum)(af), _f64(a).sum(-1), shape[1])
    ca, cb = jax.jit(cpu_sums.col_sums2)(af * bf, bf)
    _close(ca, (_f64(a) * _f64(b)).sum(0), shape[0])
    _close(cb, _f64(b).sum(0), shape[0])
    _close(jax.jit(cpu_sums.col_sum)(af * bf), (_f64(a) * _f64(b)).sum(0), shape[0])
    # the dispatchers norm_xla uses: one array -> the compensated single sum, two -> the pair
    np.testing.assert_array_equal(cpu_sums.row_sums(af)[0], cpu_sums.row_sum(af))
    np.testing.assert_array_equal(cpu_sums.col_sums(af, bf)[1], cpu_sums.col_sums2(af, bf)[1])


@pytest.mark.parametrize("axis", [1, 0])
def test_single_sums_are_compensated(axis):
    """1e8 followed by many ones: a plain float32 sequential sum loses every 1; the compensated sum keeps them."""
    a = jnp.ones((2, 64 * 64), jnp.float32).at[:, 0].set(1e8)
    if axis == 0:  # col_sum compensates within its first blocks of 8 rows only: 1e8 then 4095 blocks of ones
        a = a.T
    got = np.asarray(jax.jit(cpu_sums.row_sum if axis else cpu_sums.col_sum)(a), np.float64)
    # float32 nearest to the exact 1e8 + 4095; uncompensated 16-term partials would give 1e8 + 4080, a
    # sequential sum 1e8.
    np.testing.assert_array_equal(got, np.float32(1e8 + 64 * 64 - 1))


def test_sums_differentiate_like_jnp_sum():
    """The custom JVPs: first and second derivatives of a function of the sums equal those through jnp.sum
    (in float64, so the comparison is not blurred by summation order)."""
    def f(sums):
        def g(a):
            r1, r2 = sums["rows"](a * a, jnp.sin(a))
            c1, c2 = sums["cols"](a ** 3, a)
            return (jnp.sum(r1 * r2) + jnp.sum(c1 * jnp.cos(c2)) + jnp.sum(sums["row"](a) ** 2)
                    + jnp.sum(jnp.sin(sums["col"](a * a))))
        return g
    ours = f({"rows": cpu_sums.row_sums2, "cols": cpu_sums.col_sums2, "row": cpu_sums.row_sum,
              "col": cpu_sums.col_sum})
    plain = f({"rows": lambda a, b: (a.sum(-1), b.sum(-1)), "cols": lambda a, b: (a.sum(0), b.sum(0)),
               "row": lambda a: a.sum(-1), "col": lambda a: a.sum(0)})
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        a, v = (jnp.asarray(rng.standard_normal((64, 128)), jnp.float64) for _ in range(2))
        np.testing.assert_allclose(jax.grad(ours)(a), jax.grad(plain)(a), rtol=1e-12, atol=1e-12)
        h1 = jax.jvp(jax.grad(ours), (a,), (v,))[1]
        h2 = jax.jvp(jax.grad(plain), (a,), (v,))[1]
        np.testing.assert_allclose(h1, h2, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("shape", [(96, 1024), (64, 100), (37, 1153), (7, 256), (512, 128)])
@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("in_dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("affine", ["scale+bias", "scale", "bias"])
def test_xla_cpu_norm_matches_float64(shape, rms, in_dtype, affine, monkeypatch):
    """The CPU arrangement of norm_xla, forward (its passes, as before a backward) and backward, against the float64
    reference, outputs kept in float32, including a hostile row (mean 1e4, std 1e-2). Forced for the small shapes;
    512 x 128 takes it by default; 64 x 100 and 37 x 1153 have row tails, 37 rows a column remainder."""
    if shape[0] * shape[1] < norm_xla.ARRANGE_MIN_SIZE:
        monkeypatch.setattr(norm_xla, "ARRANGE_MIN_SIZE", 1)
    assert norm_xla._arranged("cpu", shape)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    hostile = (1e4, 1e-2) if in_dtype == jnp.float32 else (1e2, 1.0)  # bf16 cannot hold std 1e-2 at mean 1e4
    x[0] = hostile[0] + hostile[1] * rng.standard_normal(shape[1])
    dy, scale, bias = rng.standard_normal(shape), 1 + 0.1 * rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    eps = 1e-6

    use_scale, use_bias = "scale" in affine, "bias" in affine

    def fwd_bwd(x, dy, scale, bias):
        scale, bias = (scale if use_scale else None), (bias if use_bias else None)
        y, _, mean, rstd = norm_xla.norm_fwd_for_backward(x, None, scale, bias, epsilon=eps, rms=rms,
                                                          out_dtype=jnp.float32, platform="cpu")
        dx, ds, db = norm_xla.norm_bwd(dy, x, mean, rstd, scale, None, rms=rms, has_bias=use_bias,
                                       dx_dtype=jnp.float32, platform="cpu")
        assert (ds is None) != use_scale and (db is None) != use_bias
        return y, dx, ds, db
    args = [jnp.asarray(x, in_dtype)] + [jnp.asarray(v, jnp.float32) for v in (dy, scale, bias)]
    got = [None if v is None else np.asarray(v, np.float64) for v in jax.jit(fwd_bwd)(*args)]
    xr, dyr, sr, br = (np.asarray(a.astype(jnp.float32), np.float64) for a in args)  # what the kernel sees
    sr, br = (sr if use_scale else None), (br if use_bias else None)
    want = [ref.norm_fwd(xr, sr, br, eps=eps, rms=rms), *ref.norm_bwd(xr, dyr, sr, eps=eps, rms=rms)]
    for name, a, w in zip(("y", "dx", "dscale", "dbias"), got, want):
        if a is None:
            continue
        tol = 2e-5 * (np.abs(w).max() + 1) * (np.sqrt(shape[0]) if name in ("dscale", "dbias") else 1)
        np.testing.assert_allclose(a, w, rtol=0, atol=tol, err_msg=name)
