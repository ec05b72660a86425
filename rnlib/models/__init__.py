"""rnlib.models."""
