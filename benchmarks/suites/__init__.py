"""Benchmark suites: norms (op level), train (model step throughput), compile (compile time vs depth)."""
