"""`make bench`: ratios measured side by side in one run (see benchmarks/__main__.py)."""
