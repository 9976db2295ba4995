"""Reward-model losses and pair metrics as pure functions of reward arrays.

Conventions: r_c, r_r are [B] rewards of chosen and rejected; `weight` [B] is 1 for real pairs
and 0 for padding rows, so fixed-shape eval batches do not bias the means.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _wmean(x, weight):
  if weight is None:
    return jnp.mean(x)
  return jnp.sum(x * weight) / jnp.maximum(jnp.sum(weight), 1e-9)


def bradley_terry(r_c, r_r, *, margin=None, label_smoothing: float = 0.0, weight=None):
  """-log sigma(r_c - r_r - margin), with optional label smoothing eps:
  (1 - eps) * -log sigma(d) + eps * -log sigma(-d). Returns the weighted mean."""
  d = r_c - r_r
  if margin is not None:
    d = d - margin
  per = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(d) - label_smoothing * jax.nn.log_sigmoid(-d)
  return _wmean(per, weight)


def reward_centering(r_c, r_r, *, weight=None):
  """Mean of (r_c + r_r)^2: keeps rewards centred on zero (Eisenstein et al., 2023)."""
  return _wmean((r_c + r_r) ** 2, weight)


def pair_metrics(r_c, r_r, weight=None) -> dict:
  """Accuracy (strict: ties count wrong), margin, chosen/rejected mean and std."""
  w = jnp.ones_like(r_c) if weight is None else weight
  def std(x):
    m = _wmean(x, w)
    return jnp.sqrt(_wmean((x - m) ** 2, w))
  return {
      "accuracy": _wmean((r_c > r_r).astype(jnp.float32), w),
      "margin": _wmean(r_c - r_r, w),
      "chosen_mean": _wmean(r_c, w),
      "chosen_std": std(r_c),
      "rejected_mean": _wmean(r_r, w),
      "rejected_std": std(r_r),
  }
