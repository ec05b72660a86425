"""rnlib.linen: Flax linen modules (thin wrappers over rnlib.ops)."""
from rnlib.linen.blocks import BottleneckBlock, ResidualBlock, ResidualMLPBlock, ResidualStack
from rnlib.linen.norms import AddNorm, LayerNorm, RMSNorm, StatsLayerNorm
from rnlib.linen.rnn import LayerNormGRUCell, LayerNormLSTMCell
from rnlib.ops.residual import BlockOptions  # the blocks' ``options`` field

__all__ = ["LayerNorm", "RMSNorm", "AddNorm", "StatsLayerNorm", "ResidualBlock", "BottleneckBlock", "ResidualStack",
           "BlockOptions", "ResidualMLPBlock", "LayerNormLSTMCell", "LayerNormGRUCell"]
