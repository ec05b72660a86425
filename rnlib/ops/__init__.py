"""rnlib.ops: pure functions (no Flax) -- norms with hand-written VJPs, and residual block maths."""
from rnlib.ops.norms import add_norm, layer_norm, layer_norm_with_stats, rms_norm

__all__ = ["layer_norm", "rms_norm", "add_norm", "layer_norm_with_stats"]
