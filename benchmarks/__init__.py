"""Benchmark scripts; each writes docs/benchmarks/<name>.{json,md}."""
