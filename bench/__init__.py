"""Benchmarks (``python bench/run.py``); nothing here is imported by the service."""
