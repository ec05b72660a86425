"""rnlib: residual networks and layer normalization for JAX/Flax, with fused Pallas kernels.

Layers (imports flow one way): rnlib.kernels -> rnlib.ops -> rnlib.nn / rnlib.linen -> rnlib.models ->
rnlib.train -> rnlib.diagnostics. Import the submodule you need, e.g. ``from rnlib import ops, nn``.
"""
from rnlib import _compat as _compat  # noqa: F401  (ImportError on an unsupported jax/flax pair)

__version__ = "0.1.0"
