"""Flax linen residual blocks: the same thin wrappers over rnlib.ops.residual as rnlib.nn._blocks.

Parameters live in the "params" collection as the ops pytree (``conv1: {kernel}``, ``norm1: {scale, bias}``,
...), BatchNorm running statistics in "batch_stats" (``norm1: {mean, var}``); pass ``mutable=["batch_stats"]``
when training, as with ``flax.linen.BatchNorm``. ``use_running_average`` is a field and/or a call argument
(``nn.merge_param``), as in linen's BatchNorm. The input width is taken from the input at init. The block
options (kind, order, shortcut, norm, ...) are one field, ``options``: a ``rnlib.ops.residual.BlockOptions``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
from flax import linen as nn

from rnlib.ops import residual as R
from rnlib.ops.residual import BlockOptions, BlockSpec


def _declare(module: nn.Module, init: Callable[[jax.Array], tuple[dict, dict]]) -> tuple[dict, Any]:
    """Create one linen param per top-level group of ``init``'s params, one batch_stats variable per group of its
    state; returns (param values, {group: Variable})."""
    params_shape, state_shape = jax.eval_shape(init, jax.random.key(0))
    params = {name: module.param(name, lambda key, n=name: init(key)[0][n]) for name in params_shape}
    stats = {name: module.variable("batch_stats", name, lambda n=name: init(jax.random.key(0))[1][n])
             for name in state_shape}
    return params, stats


class _Block(nn.Module):
    """Shared fields and the variable handling of ResidualBlock / ResidualStack."""

    features: int
    options: BlockOptions = BlockOptions()
    dtype: Any = None
    use_running_average: Optional[bool] = None

    def _options(self) -> BlockOptions:
        return self.options

    def _spec(self, in_features: int, stride: int) -> BlockSpec:
        return BlockSpec.of(in_features, self.features, stride, self._options())

    def _run(self, x: jax.Array, use_running_average: Optional[bool], init: Callable, apply: Callable) -> jax.Array:
        ura = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        if self.dtype is not None:
            x = x.astype(self.dtype)
        params, stats = _declare(self, init)
        y, new_state = apply(params, {k: v.value for k, v in stats.items()}, x, not ura)
        if not ura and not self.is_initializing():  # as linen BatchNorm: init leaves the statistics alone
            for k, v in stats.items():
                v.value = new_state[k]
        return y


class ResidualBlock(_Block):
    """One residual block (see ``rnlib.ops.residual``): NHWC (N, H, W, C) -> (N, H/stride, W/stride, out).

    ``options``: a ``rnlib.ops.residual.BlockOptions`` (kind, order, shortcut, norm, ...), e.g.
    ``ResidualBlock(64, stride=2, options=BlockOptions(order="pre"))``.
    """

    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: Optional[bool] = None) -> jax.Array:
        spec = self._spec(x.shape[-1], self.stride)
        R.check_block_input(x, spec, type(self).__name__)
        return self._run(x, use_running_average, lambda k: R.block_init(k, spec),
                         lambda p, s, h, train: R.residual_block(p, s, h, spec, train=train))


class BottleneckBlock(ResidualBlock):
    """``ResidualBlock`` whose options have ``kind="bottleneck"`` (output ``expansion * features``)."""

    def _options(self) -> BlockOptions:
        return dataclasses.replace(self.options, kind="bottleneck")


class ResidualStack(_Block):
    """``num_blocks`` identical shape-preserving blocks, parameters stacked on axis 0, run under lax.scan."""

    num_blocks: int = 1
    scan: bool = True
    remat: bool = False
    remat_policy: Optional[Callable[..., bool]] = None

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: Optional[bool] = None) -> jax.Array:
        spec = self._spec(x.shape[-1], 1)
        R.check_block_input(x, spec, type(self).__name__)
        return self._run(x, use_running_average, lambda k: R.stack_init(k, spec, self.num_blocks),
                         lambda p, s, h, train: R.residual_stack(p, s, h, spec, train=train, scan=self.scan,
                                                                 remat=self.remat, remat_policy=self.remat_policy))


class ResidualMLPBlock(nn.Module):
    """Pre-norm residual MLP block, residual-stream form: ``h, r = block(x, residual)`` (see rnlib.nn._blocks)."""

    hidden: Optional[int] = None
    norm: str = "layer"
    epsilon: float = 1e-6
    activation: Callable[[jax.Array], jax.Array] = jax.nn.gelu
    zero_init_last: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, residual: jax.Array) -> tuple[jax.Array, jax.Array]:
        d = x.shape[-1]
        hidden = self.hidden or 4 * d
        params, _ = _declare(self, lambda k: (R.mlp_block_init(k, d, hidden, norm=self.norm,
                                                               zero_init_last=self.zero_init_last), {}))
        return R.mlp_block(params, x, residual, norm=self.norm, epsilon=self.epsilon, activation=self.activation)


__all__ = ["ResidualBlock", "BottleneckBlock", "ResidualStack", "ResidualMLPBlock"]
