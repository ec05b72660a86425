"""rnlib.train."""
