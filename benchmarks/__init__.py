"""Benchmarks for embedcluster components (run with ``python -m benchmarks.<name>``)."""
