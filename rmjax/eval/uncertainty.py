"""How good an ensemble's uncertainty is on scored pairs.

Given member rewards of the chosen and rejected responses ([N, K] each):
  - the ensemble orders a pair by the mean margin; a pair is wrong when mean(r_c) <= mean(r_r);
  - the pair's uncertainty is the std over members of the per-member margin r_c - r_r
    (what disagreement about *this comparison* looks like; offsets shared by both sides cancel);
  - AUROC of that std for predicting a wrong ordering (0.5 = uninformative, 1 = perfect);
  - ECE of sigmoid(mean margin) (rmjax.eval.metrics.expected_calibration_error);
  - accuracy on the most-certain and least-certain halves (split at the median std).
`uncertainty_report(members_c, members_r)` returns all of it as one JSON-able dict, which
`rmjax eval` adds under 'uncertainty' when the model has ensemble members.
"""

from __future__ import annotations

import numpy as np

from rmjax.eval.metrics import expected_calibration_error


def auroc(scores, labels) -> float:
  """Area under the ROC curve of `scores` for binary `labels` (1 = positive), ties averaged
  (Mann-Whitney U / (n_pos * n_neg)). NaN when one class is absent."""
  s = np.asarray(scores, np.float64)
  y = np.asarray(labels).astype(bool)
  if s.shape != y.shape or s.ndim != 1:
    raise ValueError(f"auroc needs 1-D scores and labels of equal length, got {s.shape} and {y.shape}")
  n_pos, n_neg = int(y.sum()), int((~y).sum())
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  order = np.argsort(s, kind="mergesort")
  ranks = np.empty(len(s), np.float64)
  sorted_s = s[order]
  # average ranks over ties
  i = 0
  while i < len(s):
    j = i
    while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
      j += 1
    ranks[order[i:j + 1]] = 0.5 * (i + j) + 1.0
    i = j + 1
  u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def _check(members_c, members_r):
  c = np.asarray(members_c, np.float64)
  r = np.asarray(members_r, np.float64)
  if c.ndim != 2 or c.shape != r.shape:
    raise ValueError(f"members_c and members_r must both be [N, K], got {c.shape} and {r.shape}")
  if c.shape[1] < 2:
    raise ValueError(f"uncertainty needs at least 2 ensemble members, got {c.shape[1]}")
  if not (np.all(np.isfinite(c)) and np.all(np.isfinite(r))):
    raise ValueError("member scores contain NaN or inf")
  return c, r


def pair_uncertainty(members_c, members_r) -> dict:
  """Per-pair arrays: margin (mean over members) [N], std of member margins [N], wrong [N]."""
  c, r = _check(members_c, members_r)
  d = c - r                                  # [N, K] per-member margins
  margin = d.mean(axis=1)
  return {"margin": margin, "std": d.std(axis=1), "wrong": margin <= 0,
          "member_accuracy": (d > 0).mean(axis=0)}


def uncertainty_report(members_c, members_r) -> dict:
  """One dict: n, members, accuracy, member accuracies, mean std, AUROC(std -> wrong), ECE,
  accuracy on the certain/uncertain halves, and mean std of right vs wrong pairs."""
  u = pair_uncertainty(members_c, members_r)
  std, wrong, margin = u["std"], u["wrong"], u["margin"]
  n = len(std)
  order = np.argsort(std, kind="mergesort")
  half = n // 2
  certain, uncertain = order[:half], order[half:]
  acc = lambda idx: float((~wrong[idx]).mean()) if len(idx) else float("nan")
  return {
      "n": int(n), "members": int(np.asarray(members_c).shape[1]),
      "accuracy": acc(np.arange(n)),
      "member_accuracy": [float(a) for a in u["member_accuracy"]],
      "std_mean": float(std.mean()) if n else float("nan"),
      "std_median": float(np.median(std)) if n else float("nan"),
      "auroc_std_wrong": auroc(std, wrong) if n else float("nan"),
      "ece": expected_calibration_error(1.0 / (1.0 + np.exp(-margin))),
      "accuracy_certain_half": acc(certain),
      "accuracy_uncertain_half": acc(uncertain),
      "std_mean_right": float(std[~wrong].mean()) if (~wrong).any() else float("nan"),
      "std_mean_wrong": float(std[wrong].mean()) if wrong.any() else float("nan"),
  }
