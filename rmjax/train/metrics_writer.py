"""Metrics to `metrics.jsonl` and TensorBoard event files; process 0 alone writes.

On resume from step S, rows after S (logged by the interrupted run after its last checkpoint)
are dropped first, so every step appears once.
"""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np


def _scalar(v):
  if isinstance(v, dict):
    return {k: _scalar(x) for k, x in v.items()}
  if isinstance(v, (str, int)) or v is None:
    return v
  v = np.asarray(v)
  return float(v) if v.size == 1 else v.tolist()


def _drop_rows_after(path: str, step: int) -> None:
  with open(path) as f:
    keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(keep)
  os.replace(tmp, path)


class MetricWriter:
  def __init__(self, workdir: str, tensorboard: bool = True, resume_step=None):
    self.enabled = jax.process_index() == 0
    self._file = None
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    if resume_step is not None and os.path.exists(path):
      _drop_rows_after(path, int(resume_step))
    self._file = open(os.path.join(workdir, "metrics.jsonl"), "a")
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:  # TensorBoard is optional; jsonl is the contract
        self._tb = None

  def write(self, step: int, metrics: dict, prefix: str = "") -> dict:
    row = {"step": int(step)}
    row.update({prefix + k: _scalar(v) for k, v in metrics.items()})
    if not self.enabled:
      return row
    self._file.write(json.dumps(row, allow_nan=True) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in row.items():
        for name, x in (v.items() if isinstance(v, dict) else [("", v)]):
          if k != "step" and isinstance(x, float) and math.isfinite(x):
            self._tb.add_scalar(f"{k}/{name}" if name else k, x, int(step))
      self._tb.flush()
    return row

  def close(self):
    if self._file:
      self._file.close()
    if self._tb is not None:
      self._tb.close()
