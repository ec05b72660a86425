"""Pallas kernels for rnlib, installed as ``rnlib.kernels``.

Imports jax only (never Flax, never rnlib.ops): rnlib.ops dispatches to these.
"""
