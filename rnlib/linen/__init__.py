"""rnlib.linen: Flax linen modules (thin wrappers over rnlib.ops)."""
from rnlib.linen.norms import AddNorm, LayerNorm, RMSNorm, StatsLayerNorm

__all__ = ["LayerNorm", "RMSNorm", "AddNorm", "StatsLayerNorm"]
