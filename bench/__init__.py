"""Benchmarks (``make bench``). Figures are measured side by side in one run; see docs/BENCHMARKS.md."""
