"""Flax NNX residual blocks: thin wrappers that hold parameters and call rnlib.ops.residual.

Parameters are ``nnx.Param`` leaves in a nested dict mirroring the ops pytree (``conv1/kernel``, ``norm1/scale``,
...), BatchNorm running statistics are ``nnx.BatchStat``. ``model.train()`` / ``model.eval()`` flip
``use_running_average`` exactly as for ``nnx.BatchNorm``; it can also be passed per call.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx

from rnlib.ops import residual as R
from rnlib.ops.residual import BlockOptions, BlockSpec

Dtype = Any


def _wrap(tree: dict, kind: type[nnx.Variable]) -> dict:
    return jax.tree.map(kind, tree)


def _values(tree: dict) -> dict:
    return jax.tree.map(lambda v: v[...], tree, is_leaf=lambda v: isinstance(v, nnx.Variable))


def _assign(tree: dict, values: dict) -> None:
    jax.tree.map(lambda v, x: v.set_value(x), tree, values, is_leaf=lambda v: isinstance(v, nnx.Variable))


class _BlockBase(nnx.Module):
    """Shared storage and mode handling for ResidualBlock / ResidualStack."""

    spec: BlockSpec

    def _store(self, params: dict, state: dict) -> None:
        self.params = nnx.data(_wrap(params, nnx.Param))
        self.batch_stats = nnx.data(_wrap(state, nnx.BatchStat))

    def _train(self, use_running_average: bool | None) -> bool:
        ura = self.use_running_average if use_running_average is None else use_running_average
        return not ura

    def _params(self) -> dict:
        # Kernels are cast to the input's dtype inside the ops; norms compute in float32.
        return _values(self.params)


class ResidualBlock(_BlockBase):
    """One residual block: NHWC (N, H, W, in_features) -> (N, ceil(H/stride), ceil(W/stride), out_features).

    ``options`` are ``rnlib.ops.residual.BlockOptions`` fields (``kind``, ``order``, ``shortcut``, ``norm``,
    ``expansion``, ``zero_init_last``, ``branch_scale``, ``momentum``, ``epsilon``; see there for the maths).
    ``features`` is the output width for ``kind="basic"`` and the inner width (output ``expansion * features``)
    for ``kind="bottleneck"``; ``BottleneckBlock`` presets the latter.
    """

    def __init__(self, in_features: int, features: int, *, stride: int = 1, dtype: Dtype | None = None,
                 use_running_average: bool = False, rngs: nnx.Rngs, **options: Any):
        self.spec = BlockSpec(in_features, features, stride, **options)
        self.dtype = dtype
        self.use_running_average = use_running_average
        self._store(*R.block_init(rngs.params(), self.spec))

    @property
    def out_features(self) -> int:
        return self.spec.out_features

    def __call__(self, x: jax.Array, *, use_running_average: bool | None = None, in_loop: bool = True) -> jax.Array:
        """``in_loop=False``: the call is not inside a loop body (a faster convolution backward on CPU)."""
        if self.dtype is not None:
            x = x.astype(self.dtype)
        y, state = R.residual_block(self._params(), _values(self.batch_stats), x, self.spec,
                                    train=self._train(use_running_average), in_loop=in_loop)
        if self._train(use_running_average):
            _assign(self.batch_stats, state)
        return y


class BottleneckBlock(ResidualBlock):
    """``ResidualBlock(kind="bottleneck")``: 1x1 (features), 3x3 (features, stride), 1x1 (expansion * features)."""

    def __init__(self, in_features: int, features: int, **kw: Any):
        super().__init__(in_features, features, kind="bottleneck", **kw)


class ResidualStack(_BlockBase):
    """``num_blocks`` identical shape-preserving blocks with stacked parameters (leading axis ``num_blocks``).

    Input and output width ``BlockOptions(**options).output_width(features)``. Runs the blocks under ``lax.scan``
    (``scan=True``; compile time independent of ``num_blocks``) or as an unrolled loop (``scan=False``, same
    result); ``remat=True`` rematerialises each block in the backward pass under ``remat_policy`` (a
    ``jax.checkpoint_policies`` entry, ``None`` = save nothing). ``options`` as for ``ResidualBlock``.
    """

    def __init__(self, num_blocks: int, features: int, *, scan: bool = True, remat: bool = False,
                 remat_policy: Callable[..., bool] | None = None, dtype: Dtype | None = None,
                 use_running_average: bool = False, rngs: nnx.Rngs, **options: Any):
        self.spec = BlockSpec.stackable(features, BlockOptions(**options))
        self.num_blocks = num_blocks
        self.scan = scan
        self.remat = remat
        self.remat_policy = remat_policy
        self.dtype = dtype
        self.use_running_average = use_running_average
        self._store(*R.stack_init(rngs.params(), self.spec, num_blocks))

    @property
    def out_features(self) -> int:
        return self.spec.out_features

    def __call__(self, x: jax.Array, *, use_running_average: bool | None = None) -> jax.Array:
        if self.dtype is not None:
            x = x.astype(self.dtype)
        train = self._train(use_running_average)
        y, state = R.residual_stack(self._params(), _values(self.batch_stats), x, self.spec, train=train,
                                    scan=self.scan, remat=self.remat, remat_policy=self.remat_policy)
        if train:
            _assign(self.batch_stats, state)
        return y

    def block(self, i: int) -> ResidualBlock:
        """A standalone ``ResidualBlock`` holding copies of block ``i``'s parameters and statistics."""
        if not 0 <= i < self.num_blocks:
            raise IndexError(f"ResidualStack.block: index {i} out of range for {self.num_blocks} blocks")
        s = self.spec
        blk = ResidualBlock(s.in_features, s.features, dtype=self.dtype,
                            use_running_average=self.use_running_average, rngs=nnx.Rngs(0), **s.options.as_dict())
        _assign(blk.params, jax.tree.map(lambda a: a[i], _values(self.params)))
        _assign(blk.batch_stats, jax.tree.map(lambda a: a[i], _values(self.batch_stats)))
        return blk


class ConvNorm(nnx.Module):
    """Convolution (no bias), then an optional channel norm and ReLU: the ResNet stem and the final pre-act norm.

    ``kernel_size=0`` gives a norm(+ReLU) only (the pre-activation nets' last norm before pooling).
    """

    def __init__(self, in_features: int, features: int, *, kernel_size: int = 3, stride: int = 1,
                 norm: str = "batch", relu: bool = True, momentum: float = 0.9, epsilon: float = 1e-5,
                 dtype: Dtype | None = None, use_running_average: bool = False, rngs: nnx.Rngs):
        if norm not in R.NORMS:
            raise ValueError(f"ConvNorm: norm={norm!r}, expected one of {R.NORMS}")
        self.kernel_size, self.stride, self.norm, self.relu = kernel_size, stride, norm, relu
        self.momentum, self.epsilon, self.dtype = momentum, epsilon, dtype
        self.in_features = in_features
        self.use_running_average = use_running_average
        self.kernel = (nnx.Param(R.he_normal(rngs.params(), (kernel_size, kernel_size, in_features, features)))
                       if kernel_size else None)
        p, s = R.norm_init(norm, features if kernel_size else in_features)
        self.norm_params = nnx.data(_wrap(p, nnx.Param))
        self.batch_stats = nnx.data(_wrap(s, nnx.BatchStat))

    def __call__(self, x: jax.Array, *, use_running_average: bool | None = None, in_loop: bool = True) -> jax.Array:
        """``in_loop=False``: the call is not inside a loop body (a faster convolution backward on CPU)."""
        ura = self.use_running_average if use_running_average is None else use_running_average
        if self.dtype is not None:
            x = x.astype(self.dtype)
        if self.kernel is not None:
            x = R.conv2d(x, self.kernel[...], self.stride, in_loop=in_loop)
        x, state = R.normalize(_values(self.norm_params), _values(self.batch_stats), x, self.norm,
                               train=not ura, momentum=self.momentum, epsilon=self.epsilon)
        if not ura:
            _assign(self.batch_stats, state)
        return jax.nn.relu(x) if self.relu else x


class ResidualMLPBlock(nnx.Module):
    """Pre-norm residual MLP block in residual-stream form (``rnlib.ops.residual.mlp_block``, built on add_norm).

    ``h, r = block(x, residual)`` with ``r = x + residual`` and ``h = MLP(norm(r))``; chain blocks from
    ``(x0, zeros)`` and finish with ``rnlib.ops.add_norm(h, r)``: x_{l+1} = x_l + MLP_l(norm(x_l)).
    Shapes: x, residual (..., features) -> two (..., features) arrays.
    """

    def __init__(self, features: int, hidden: int | None = None, *, norm: str = "layer", epsilon: float = 1e-6,
                 activation: Callable[[jax.Array], jax.Array] = jax.nn.gelu, zero_init_last: bool = False,
                 rngs: nnx.Rngs):
        self.features, self.hidden = features, hidden or 4 * features
        self.norm, self.epsilon, self.activation = norm, epsilon, activation
        self.params = nnx.data(_wrap(R.mlp_block_init(rngs.params(), features, self.hidden, norm=norm,
                                                      zero_init_last=zero_init_last), nnx.Param))

    def __call__(self, x: jax.Array, residual: jax.Array) -> tuple[jax.Array, jax.Array]:
        return R.mlp_block(_values(self.params), x, residual, norm=self.norm, epsilon=self.epsilon,
                           activation=self.activation)


class ResidualMLPStack(nnx.Module):
    """``num_blocks`` ``ResidualMLPBlock``s with stacked parameters, under ``lax.scan`` (or unrolled)."""

    def __init__(self, num_blocks: int, features: int, hidden: int | None = None, *, norm: str = "layer",
                 epsilon: float = 1e-6, activation: Callable[[jax.Array], jax.Array] = jax.nn.gelu,
                 zero_init_last: bool = False, scan: bool = True, remat: bool = False,
                 remat_policy: Callable[..., bool] | None = None, rngs: nnx.Rngs):
        if num_blocks < 1:
            raise ValueError(f"ResidualMLPStack: num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks, self.features, self.hidden = num_blocks, features, hidden or 4 * features
        self.norm, self.epsilon, self.activation = norm, epsilon, activation
        self.scan, self.remat, self.remat_policy = scan, remat, remat_policy
        keys = jax.random.split(rngs.params(), num_blocks)
        init = jax.vmap(lambda k: R.mlp_block_init(k, features, self.hidden, norm=norm,
                                                   zero_init_last=zero_init_last))
        self.params = nnx.data(_wrap(init(keys), nnx.Param))

    def __call__(self, x: jax.Array, residual: jax.Array) -> tuple[jax.Array, jax.Array]:
        return R.mlp_stack(_values(self.params), x, residual, norm=self.norm, epsilon=self.epsilon,
                           activation=self.activation, scan=self.scan, remat=self.remat,
                           remat_policy=self.remat_policy)
