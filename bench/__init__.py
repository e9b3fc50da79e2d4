"""Benchmarks: ratios against raw ceilings measured in the same run."""
