"""rmjax: reward models for LLM alignment in JAX (BT, ArmoRM, ensembles, GRM, SALMON, PPO)."""

__version__ = "0.1.0"
