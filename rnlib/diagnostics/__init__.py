"""rnlib.diagnostics: measure why deep nets train or fail — on any JAX function or Flax NNX model.

* :func:`grad_norms` / :func:`param_grad_norms` — per-layer gradient norms (do gradients vanish?).
* :func:`line_gradients`, :func:`gradient_autocorrelation`, :func:`correlation_length`, :func:`shattering` —
  gradient autocorrelation along a 1-D line of inputs (Balduzzi et al. 2017, "shattered gradients").
"""
from rnlib.diagnostics._autocorrelation import (
    Shattering,
    correlation_length,
    gradient_autocorrelation,
    line_gradients,
    line_inputs,
    shattering,
)
from rnlib.diagnostics._grad_norms import grad_norms, ordered_values, param_grad_norms, tree_paths

__all__ = [
    "Shattering",
    "correlation_length",
    "grad_norms",
    "gradient_autocorrelation",
    "line_gradients",
    "line_inputs",
    "ordered_values",
    "param_grad_norms",
    "shattering",
    "tree_paths",
]
