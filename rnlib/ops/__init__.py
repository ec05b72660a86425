"""rnlib.ops: pure functions (no Flax) -- norms with hand-written VJPs, residual block maths, RNN steps.

Norms: :func:`layer_norm`, :func:`rms_norm`, :func:`add_norm` (fused residual add + norm) and
:func:`layer_norm_with_stats`; ``impl`` picks the backend (:data:`IMPLS`; :func:`backend_unavailable` says why the
native or Pallas backend cannot be used here). :func:`param_shape` gives their parameters' shape.
"""
from rnlib.ops import residual
from rnlib.ops._args import Axes, param_shape
from rnlib.ops._backends import IMPLS, backend_unavailable
from rnlib.ops._norms import add_norm, layer_norm, layer_norm_with_stats, rms_norm
from rnlib.ops._rnn import gru_step, lstm_step
from rnlib.ops.residual import (BlockOptions, BlockSpec, block_init, conv2d, mlp_block, mlp_stack, residual_block,
                                residual_stack, stack_init)

__all__ = ["layer_norm", "rms_norm", "add_norm", "layer_norm_with_stats", "param_shape", "Axes", "IMPLS",
           "backend_unavailable", "residual", "BlockOptions", "BlockSpec", "block_init", "conv2d", "mlp_block",
           "mlp_stack", "residual_block", "residual_stack", "stack_init", "gru_step", "lstm_step"]
