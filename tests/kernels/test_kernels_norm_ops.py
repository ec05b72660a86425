"""The kernels behind rnlib.ops (impl="pallas") agree with impl="xla", values and all gradients, through the
ops layer's custom_vjp (leading axes, fused add, RMS, no scale/bias)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_norm_check import GPU_PLATFORM

ops = pytest.importorskip("rnlib.ops")


def _loss(impl, x, r, s, b):
    y1 = ops.layer_norm(x, s, b, impl=impl, platform=GPU_PLATFORM)
    y2 = ops.rms_norm(x, None, impl=impl, platform=GPU_PLATFORM)
    y3, h = ops.add_norm(x, r, s, None, norm="rms", impl=impl, platform=GPU_PLATFORM)
    y4, _ = ops.add_norm(x, r, s, b, impl=impl, platform=GPU_PLATFORM)
    w = jnp.cos(jnp.arange(x.shape[-1], dtype=jnp.float32))  # non-uniform cotangents
    return sum(jnp.sum(w * t.astype(jnp.float32) ** 2) for t in (y1, y2, y3, y4, h))


@pytest.mark.parametrize("dtype", [pytest.param(jnp.float32, marks=pytest.mark.slow), jnp.bfloat16])
def test_ops_pallas_matches_xla(dtype):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 37, 761)), dtype)
    r = jnp.asarray(rng.normal(size=(2, 37, 761)), dtype)
    s = jnp.asarray(1 + 0.3 * rng.normal(size=761), jnp.float32)
    b = jnp.asarray(rng.normal(size=761), jnp.float32)
    grad = {impl: jax.jit(jax.value_and_grad(lambda *a, i=impl: _loss(i, *a), argnums=(0, 1, 2, 3)))
            for impl in ("pallas", "xla")}
    (vp, gp), (vx, gx) = grad["pallas"](x, r, s, b), grad["xla"](x, r, s, b)
    rtol = 1e-5 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(float(vp), float(vx), rtol=rtol)
    for a, c in zip(gp, gx):
        assert a.dtype == c.dtype and a.shape == c.shape
        a, c = np.asarray(a, np.float64), np.asarray(c, np.float64)
        assert np.max(np.abs(a - c)) <= rtol * np.max(np.abs(c)) + 1e-6
