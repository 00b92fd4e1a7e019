"""Benchmarks of fastdiff (pytest-benchmark files ``bench_*.py`` and their helpers)."""
