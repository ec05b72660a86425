"""rnlib.nn: Flax NNX modules (thin wrappers over rnlib.ops)."""
from rnlib.nn._blocks import (BottleneckBlock, ConvNorm, ResidualBlock, ResidualMLPBlock, ResidualMLPStack,
                             ResidualStack)
from rnlib.nn._norms import AddNorm, LayerNorm, RMSNorm, StatsLayerNorm
from rnlib.nn._rnn import LayerNormGRUCell, LayerNormLSTMCell

__all__ = ["LayerNorm", "RMSNorm", "AddNorm", "StatsLayerNorm", "ResidualBlock", "BottleneckBlock", "ResidualStack",
           "ConvNorm", "ResidualMLPBlock", "ResidualMLPStack", "LayerNormLSTMCell", "LayerNormGRUCell"]
