"""Benchmarks that print figures for the issues' closing notes; tests only smoke-run them."""
