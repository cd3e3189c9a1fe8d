"""Benchmarks of sgd_quad components (run as modules, never as tests)."""
