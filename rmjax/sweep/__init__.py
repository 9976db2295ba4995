"""Sweeps: point statuses and the results table (results.py), SLURM / xpk launchers (launchers.py)."""
