"""Reward-model losses and pair metrics as pure functions of reward arrays.

Conventions: r_c, r_r are [B] rewards of chosen and rejected; `weight` [B] is 1 for real pairs
and 0 for padding rows, so fixed-shape eval batches do not bias the means.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def weighted_mean(x, weight):
  """Mean of x weighted by `weight` (None = plain mean); 0-weight rows are padding."""
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
  return weighted_mean(per, weight)


def reward_centering(r_c, r_r, *, weight=None):
  """Mean of (r_c + r_r)^2: keeps rewards centred on zero (Eisenstein et al., 2023)."""
  return weighted_mean((r_c + r_r) ** 2, weight)


def pair_metrics(r_c, r_r, weight=None) -> dict:
  """Accuracy (strict: ties count wrong), margin, chosen/rejected mean and std."""
  w = jnp.ones_like(r_c) if weight is None else weight
  def std(x):
    m = weighted_mean(x, w)
    return jnp.sqrt(weighted_mean((x - m) ** 2, w))
  return {
      "accuracy": weighted_mean((r_c > r_r).astype(jnp.float32), w),
      "margin": weighted_mean(r_c - r_r, w),
      "chosen_mean": weighted_mean(r_c, w),
      "chosen_std": std(r_c),
      "rejected_mean": weighted_mean(r_r, w),
      "rejected_std": std(r_r),
  }


# ---------------------------------------------------------------------------------------------
# ArmoRM (multi-objective regression and verbosity de-correlation)

def member_bradley_terry(m_c, m_r, weight, boot=None, *, margin=None, label_smoothing=0.0,
                     centering_coef=0.0):
  """Each member's own weighted BT loss: m_c, m_r [B, K]; weight [B]; boot [B, K] or None.

  Returns [K]: member k's loss is the (weight * boot_k)-weighted mean over the batch.
  """
  d = m_c - m_r                                              # [B, K]
  if margin is not None:
    d = d - margin[:, None]
  per = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(d) - label_smoothing * jax.nn.log_sigmoid(-d)
  if centering_coef:
    per = per + centering_coef * (m_c + m_r) ** 2
  w = weight[:, None] * (1.0 if boot is None else boot)     # [B, K]
  return jnp.sum(per * w, axis=0) / jnp.maximum(jnp.sum(w, axis=0), 1e-9)


def masked_mse(pred, target, mask, *, weight=None):
  """Mean over observed entries of (pred - target)^2; pred, target, mask: [B, O], mask 1 where
  a rating exists (targets may hold NaN there: they are zeroed before use). `weight` [B] drops
  padding rows. Per-objective means are averaged over objectives that have any label."""
  mask = mask.astype(jnp.float32)
  if weight is not None:
    mask = mask * weight[:, None]
  err = jnp.where(mask > 0, pred - jnp.nan_to_num(target), 0.0) ** 2
  count = jnp.sum(mask, axis=0)                                        # [O]
  per = jnp.sum(err, axis=0) / jnp.maximum(count, 1.0)
  has = (count > 0).astype(jnp.float32)
  return jnp.sum(per * has) / jnp.maximum(jnp.sum(has), 1.0)


def objective_bradley_terry(r_c, r_r, objective, *, weight=None):
  """BT on each pair's own objective head: r_c, r_r [B, O], objective [B] int."""
  pick = lambda r: jnp.take_along_axis(r, objective[:, None].astype(jnp.int32), axis=1)[:, 0]
  return bradley_terry(pick(r_c), pick(r_r), weight=weight)


VERBOSITY_PENALTIES = (0.0, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4,
                       0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def spearman(a, b) -> float:
  """Spearman rank correlation (average ranks for ties), host numpy; 0 for a constant input."""
  import numpy as np
  from scipy.stats import rankdata
  ra, rb = rankdata(np.asarray(a, np.float64)), rankdata(np.asarray(b, np.float64))
  ra, rb = ra - ra.mean(), rb - rb.mean()
  den = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
  return float((ra * rb).sum() / den) if den > 0 else 0.0


def verbosity_penalties(rewards, verbosity_index: int, penalties=VERBOSITY_PENALTIES,
                        threshold: float = 0.03):
  """ArmoRM's `find_proper_verbosity_penalties`: rewards [N, O] on reference responses (chosen
  and rejected flattened). For each penalty p in ascending order, every objective j != v still
  open with Spearman(R_j - p R_v, R_v) <= threshold gets lambda_j = p and is closed; objectives
  never reaching it keep lambda_j = 1 (and lambda_v = 1). Returns (lambda [O], converged [O])."""
  import numpy as np
  r = np.asarray(rewards, np.float64)
  o = r.shape[1]
  lam = np.ones(o)
  converged = np.zeros(o, bool)
  todo = [j for j in range(o) if j != verbosity_index]
  rv = r[:, verbosity_index]
  for p in penalties:
    for j in list(todo):
      if spearman(r[:, j] - p * rv, rv) <= threshold:
        lam[j], converged[j] = p, True
        todo.remove(j)
    if not todo:
      break
  return lam, converged


def verbosity_transform(lam, verbosity_index: int):
  """T = I; T[v, :] -= lambda. Then (R T)_j = R_j - lambda_j R_v and (R T)_v = 0 (lambda_v = 1)."""
  import numpy as np
  lam = np.asarray(lam, np.float64)
  t = np.eye(len(lam))
  t[verbosity_index, :] -= lam
  return t.astype(np.float32)
