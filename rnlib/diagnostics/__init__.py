"""rnlib.diagnostics."""
