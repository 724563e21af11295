"""Benchmarks: printed figures and ratios (`make bench`), never timed assertions."""
