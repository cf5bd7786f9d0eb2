"""Performance benchmarks (run as modules, e.g. ``python -m benchmarks.perf.quantizer --quick``)."""
