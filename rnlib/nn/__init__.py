"""rnlib.nn: Flax NNX modules (thin wrappers over rnlib.ops)."""
from rnlib.nn.norms import AddNorm, LayerNorm, RMSNorm, StatsLayerNorm

__all__ = ["LayerNorm", "RMSNorm", "AddNorm", "StatsLayerNorm"]
