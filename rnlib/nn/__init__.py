"""rnlib.nn: Flax NNX modules (thin wrappers over rnlib.ops)."""
from rnlib.nn.blocks import (BottleneckBlock, ConvNorm, ResidualBlock, ResidualMLPBlock, ResidualMLPStack,
                             ResidualStack)
from rnlib.nn.norms import AddNorm, LayerNorm, RMSNorm, StatsLayerNorm
from rnlib.nn.rnn import LayerNormGRUCell, LayerNormLSTMCell

__all__ = ["LayerNorm", "RMSNorm", "AddNorm", "StatsLayerNorm", "ResidualBlock", "BottleneckBlock", "ResidualStack",
           "ConvNorm", "ResidualMLPBlock", "ResidualMLPStack", "LayerNormLSTMCell", "LayerNormGRUCell"]
