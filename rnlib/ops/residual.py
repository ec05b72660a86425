"""Residual nets as pure functions over explicit pytrees: one public module over the private files that hold them.

* ``BlockOptions`` / ``BlockSpec`` (rnlib.ops._block_spec): a block's static choices, stated once;
* ``block_init`` / ``residual_block`` / ``stack_init`` / ``residual_stack`` (rnlib.ops._blocks): the maths;
  ``CONV_NAME`` / ``STATS_NAME``: the checkpoint names of convolution outputs and batch statistics, and
  ``SCAN_POLICY``, what a scanned stack keeps for its backward pass;
* ``conv2d`` (rnlib.ops._conv): the convolution, lowered per platform;
* ``norm_init`` / ``normalize`` (rnlib.ops._channel_norms): batch norm and the per-position channel norms;
* ``normal`` / ``he_normal`` / ``lecun_normal`` (rnlib.ops._init): initialisers;
* ``mlp_block_init`` / ``mlp_block`` / ``mlp_stack`` (rnlib.ops._mlp): the pre-norm residual MLP.
"""
from rnlib.ops._block_spec import KINDS, ORDERS, SHORTCUTS, BlockOptions, BlockSpec
from rnlib.ops._blocks import (CONV_NAME, SCAN_POLICY, block_init, check_block_input, residual_block,
                               residual_stack, shortcut_a, stack_init)
from rnlib.ops._channel_norms import NORMS, STATS_NAME, norm_init, normalize
from rnlib.ops._conv import conv2d
from rnlib.ops._init import he_normal, lecun_normal, normal
from rnlib.ops._mlp import mlp_block, mlp_block_init, mlp_stack

__all__ = ["KINDS", "ORDERS", "SHORTCUTS", "NORMS", "BlockOptions", "BlockSpec", "CONV_NAME", "STATS_NAME",
           "SCAN_POLICY", "block_init", "check_block_input", "residual_block", "residual_stack", "shortcut_a",
           "stack_init", "norm_init", "normalize", "conv2d", "he_normal", "lecun_normal", "normal", "mlp_block",
           "mlp_block_init", "mlp_stack"]
