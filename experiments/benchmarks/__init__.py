"""Benchmarks; run from the repo root, e.g. `python -m experiments.benchmarks.train_step --help`."""
