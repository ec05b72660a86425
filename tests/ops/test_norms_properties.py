"""Hypothesis: any leading shape, width, axes and dtype gives the float64 reference's answer."""
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

import norm_reference as ref
from rnlib.ops import layer_norm, rms_norm

WIDTHS = [1, 2, 3, 7, 31, 128, 257, 761, 1153]
TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2.0 ** -7, jnp.float16: 2.0 ** -10}


@settings(max_examples=30, deadline=None)
@given(lead=st.lists(st.integers(1, 4), min_size=0, max_size=2), width=st.sampled_from(WIDTHS),
       dtype=st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float16]), rms=st.booleans(),
       offset=st.sampled_from([0.0, 5.0, -300.0]), seed=st.integers(0, 2 ** 16))
def test_matches_float64_reference(lead, width, dtype, rms, offset, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(lead) + (width,)
    x = np.asarray(jnp.asarray(offset + rng.standard_normal(shape), dtype).astype(jnp.float32))
    s = (1 + rng.standard_normal(width)).astype(np.float32)
    b = rng.standard_normal(width).astype(np.float32)
    y = rms_norm(x.astype(dtype), s) if rms else layer_norm(x.astype(dtype), s, b)
    assert y.shape == shape and y.dtype == dtype
    want = ref.norm_fwd(x.reshape(-1, width), s, None if rms else b, rms=rms).reshape(shape)
    got = np.asarray(y.astype(jnp.float32), np.float64)
    assert np.all(np.abs(got - want) <= TOL[dtype] * (np.abs(want) + 1)), np.max(np.abs(got - want))


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=2, max_size=4), data=st.data())
def test_any_reduction_axes_match_reference(shape, data):
    nd = len(shape)
    red = tuple(sorted(data.draw(st.sets(st.integers(0, nd - 1), min_size=1))))
    x = np.random.default_rng(nd).standard_normal(shape).astype(np.float32)
    y = layer_norm(x, reduction_axes=red, feature_axes=red)
    kept = [a for a in range(nd) if a not in red]
    moved = np.transpose(x, kept + list(red)).reshape(int(np.prod([shape[a] for a in kept])), -1)
    want = np.transpose(ref.norm_fwd(moved).reshape([shape[a] for a in kept + list(red)]),
                        np.argsort(kept + list(red)))
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
