"""Benchmarks: `python -m benchmarks.bench_logs --help`."""
