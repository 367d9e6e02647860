"""Benchmarks of compressor (outside the product package): methods, baselines, honesty, latency model."""
