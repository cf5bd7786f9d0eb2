"""Benchmarks: grid definitions, the paper's reported numbers and results tables (pure functions)."""
