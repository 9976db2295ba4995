"""Experiment scripts; run from the repo root, e.g. `python -m experiments.grm_ood --help`."""
