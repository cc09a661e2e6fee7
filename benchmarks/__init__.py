"""Benchmarks for coalesce beside its peers (SPEC section 7): run ``python -m benchmarks``."""
