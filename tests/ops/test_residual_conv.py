"""rnlib.ops.conv2d: the CPU lowering (small maps as a patches matmul, a custom VJP of plain NHWC convolutions)
against XLA's convolution and autodiff, in float64, and the platform chosen by an argument."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnlib.ops import residual as R
from rnlib.ops._conv import _conv, _conv_patches


def _x(shape, seed=0):
    return R.normal(jax.random.key(seed), shape)  # fixed-shape draws: no per-shape random-bits compilation


@pytest.mark.parametrize("hw,k,stride", [((7, 8), 3, 2), ((8, 8), 1, 2), ((9, 6), 7, 2), ((5, 5), 3, 1),
                                         ((2, 2), 3, 1), ((4, 3), 3, 1), ((3, 4), 2, 1)])
def test_cpu_lowering_equals_xla_autodiff(hw, k, stride):
    """platform="cpu" (patches matmul for small maps; backward as plain NHWC convolutions, fast inside lax.scan)
    equals XLA's convolution and autodiff's transpose rules (platform="gpu" takes that path on any backend)."""
    @jax.jit
    def grads(x, w):
        return [jax.grad(lambda x, w: jnp.sum(jnp.sin(R.conv2d(x, w, stride, platform=p, in_loop=loop))),
                         (0, 1))(x, w) for p, loop in (("cpu", True), ("cpu", False), ("gpu", True))]

    with jax.enable_x64(True):  # f64, so that a summation order cannot hide (or fake) a difference
        x = jnp.asarray(_x((2, *hw, 3), 1), jnp.float64)
        w = jnp.asarray(_x((k, k, 3, 5), 2), jnp.float64)
        *cpu, (dx_ref, dw_ref) = grads(x, w)
    for dx, dw in cpu:  # in a loop body (custom VJP) and outside one (autodiff of the patches form)
        assert dx.shape == x.shape and dw.shape == w.shape
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(dw, dw_ref, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("hw,k,stride", [((1, 1), 3, 1), ((2, 2), 3, 1), ((2, 3), 3, 2), ((4, 4), 3, 1),
                                         ((5, 7), 3, 2), ((8, 8), 1, 2), ((6, 6), 2, 1), ((9, 9), 7, 2)])
def test_conv_patches_equals_xla_conv(hw, k, stride):
    """The small-map matmul formulation is the same convolution (padding k//2, any stride) as XLA's, in f64."""
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(0).standard_normal((3, *hw, 4)))
        w = jnp.asarray(np.random.default_rng(1).standard_normal((k, k, 4, 5)))
        ref = _conv(x, w, stride)
        got = _conv_patches(x, w, stride)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_platform_argument_selects_the_lowering():
    """The lowering follows ``platform``, not the backend the test runs on: only "cpu" in a loop body has the
    custom VJP (a custom_vjp_call in the jaxpr); the default is the default backend's. A scanned stack's blocks
    are in a loop body, unrolled ones are not."""
    x, w = _x((1, 4, 4, 2)), _x((3, 3, 2, 2), 1)

    def jaxpr(platform, in_loop=True):
        return str(jax.make_jaxpr(lambda x, w: R.conv2d(x, w, platform=platform, in_loop=in_loop))(x, w))

    assert "custom_vjp" in jaxpr("cpu") and "custom_vjp" not in jaxpr("tpu")
    assert "custom_vjp" not in jaxpr("cpu", in_loop=False)
    assert ("custom_vjp" in jaxpr(None)) == (jax.default_backend() == "cpu")
    spec = R.BlockSpec(2, 2)
    params, state = R.block_init(jax.random.key(0), spec)
    block = jax.make_jaxpr(lambda x: R.residual_block(params, state, x, spec, train=True, platform="gpu"))(x)
    assert "custom_vjp" not in str(block)
    params, state = R.stack_init(jax.random.key(0), spec, 2)
    for scan in (True, False):
        stack = jax.make_jaxpr(lambda x: R.residual_stack(params, state, x, spec, train=True, scan=scan,
                                                          platform="cpu"))(x)
        assert ("custom_vjp" in str(stack)) == scan
