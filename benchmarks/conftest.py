"""Benchmarks run from the repository root: ``pytest benchmarks/ --benchmark-only``."""
