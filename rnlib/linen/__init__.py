"""rnlib.linen: Flax linen modules (thin wrappers over rnlib.ops)."""
from rnlib.linen._blocks import BottleneckBlock, ResidualBlock, ResidualMLPBlock, ResidualStack
from rnlib.linen._norms import AddNorm, LayerNorm, RMSNorm, StatsLayerNorm
from rnlib.linen._rnn import LayerNormGRUCell, LayerNormLSTMCell
from rnlib.ops.residual import BlockOptions  # the blocks' ``options`` field

__all__ = ["LayerNorm", "RMSNorm", "AddNorm", "StatsLayerNorm", "ResidualBlock", "BottleneckBlock", "ResidualStack",
           "BlockOptions", "ResidualMLPBlock", "LayerNormLSTMCell", "LayerNormGRUCell"]
