"""Experiment configs (ml_collections): `get_config(arg)` per family, sweeps beside them."""
