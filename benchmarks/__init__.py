"""rnlib benchmarks: ``python -m benchmarks [--suite norms|train|compile|all] [--quick] [--out DIR]``.

Method: compiled functions only, warm-up, ``block_until_ready``, median of many runs, ratios measured side
by side in one run (norms: against a jitted ``x + 1`` on the same shape). ``benchmarks.suites.norms.run_norms`` is the
reusable entry point for other scripts (e.g. the GPU run).
"""
