"""Reference code the benchmarks compare rnlib against: what a user writes without rnlib."""
