"""rnlib.ops: pure functions (no Flax) -- norms with hand-written VJPs, residual block maths, RNN steps."""
from rnlib.ops import residual, rnn
from rnlib.ops.norms import add_norm, layer_norm, layer_norm_with_stats, rms_norm
from rnlib.ops.residual import (BlockSpec, block_init, conv2d, mlp_block, mlp_stack, residual_block,
                                residual_stack, stack_init)
from rnlib.ops.rnn import gru_step, lstm_step

__all__ = ["layer_norm", "rms_norm", "add_norm", "layer_norm_with_stats", "residual", "rnn", "BlockSpec",
           "block_init", "conv2d", "mlp_block", "mlp_stack", "residual_block", "residual_stack", "stack_init",
           "gru_step", "lstm_step"]
