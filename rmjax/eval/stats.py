"""Small statistics for comparing reward models on the same preference pairs (pure numpy/scipy).

Every accuracy here counts a tie (margin exactly 0) as half right: a model that scores both
responses the same has not ordered the pair, and counting that as wrong (RewardBench) or right
would bias comparisons between models that tie at different rates. Uncertainty is a percentile
bootstrap over items (pairs, or responses): the items are the sampled unit, the models are fixed,
so two models scored on the same items are resampled jointly (`paired_diff_ci`), which is what
makes a small difference between correlated models resolvable.

Intervals are dicts {"value", "lo", "hi"}; NaN where a statistic is undefined (no items, or a
kappa with no variation), which `rmjax.eval.compare` writes as JSON null.
"""

from __future__ import annotations

from typing import Callable, Union

import numpy as np
from scipy.stats import rankdata

_CHUNK = 2_000_000  # resampled index entries held at once by the vectorised mean bootstrap


def _interval(value, boots, alpha: float) -> dict:
  boots = np.asarray(boots, np.float64)
  boots = boots[np.isfinite(boots)]
  if not boots.size or not np.isfinite(value):
    return {"value": float(value), "lo": float("nan"), "hi": float("nan")}
  lo, hi = np.percentile(boots, [100 * alpha / 2, 100 * (1 - alpha / 2)])
  return {"value": float(value), "lo": float(lo), "hi": float(hi)}


def bootstrap_ci(values_or_fn: Union[np.ndarray, Callable], n_boot: int = 2000, seed: int = 0,
                 alpha: float = 0.05, n: int | None = None) -> dict:
  """Percentile bootstrap interval over items.

  `values_or_fn` is either per-item values [N] (the statistic is their mean; resampled in
  vectorised chunks) or a function of an index array into the N items (`n` required), for
  statistics that are not a mean of per-item values (kappa, a ratio). Returns {"value": the
  statistic on all items, "lo", "hi": the alpha/2 and 1-alpha/2 percentiles of the statistic on
  n_boot resamples of the N items with replacement}; resamples where it is undefined (NaN) are
  left out. No items: all NaN."""
  rng = np.random.default_rng(seed)
  if callable(values_or_fn):
    if n is None:
      raise ValueError("bootstrap_ci(fn) needs n, the number of items")
    if n == 0:
      return _interval(float("nan"), [], alpha)
    value = values_or_fn(np.arange(n))
    boots = [values_or_fn(rng.integers(0, n, n)) for _ in range(n_boot)]
    return _interval(value, boots, alpha)
  values = np.asarray(values_or_fn, np.float64).ravel()
  if not values.size:
    return _interval(float("nan"), [], alpha)
  per = max(1, _CHUNK // values.size)
  boots = []
  for start in range(0, n_boot, per):
    idx = rng.integers(0, values.size, (min(per, n_boot - start), values.size))
    boots.append(values[idx].mean(axis=1))
  return _interval(values.mean(), np.concatenate(boots), alpha)


def paired_diff_ci(a, b, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict:
  """Mean(a) - mean(b) with a bootstrap interval, for two models' per-item scores (e.g. 1 / 0.5 /
  0 correctness from `pair_correct`) on the same N items: items are resampled jointly, so the
  interval reflects the spread of the per-item differences, not of each mean alone."""
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  if a.shape != b.shape:
    raise ValueError(f"paired_diff_ci needs scores of the same items, got {a.shape} and {b.shape}")
  return bootstrap_ci(a - b, n_boot=n_boot, seed=seed, alpha=alpha)


def pair_correct(margins) -> np.ndarray:
  """Per pair: 1.0 when the margin r(chosen) - r(rejected) > 0, 0.5 on a tie (== 0), else 0."""
  m = np.asarray(margins, np.float64)
  return np.where(m > 0, 1.0, np.where(m == 0, 0.5, 0.0))


def pair_accuracy(margins) -> tuple[float, int]:
  """(accuracy with ties counted 0.5, number of ties); NaN accuracy for no pairs."""
  right = pair_correct(margins)
  acc = float(right.mean()) if right.size else float("nan")
  return acc, int(np.sum(np.asarray(margins) == 0))


def length_baseline(len_chosen, len_rejected) -> float:
  """Accuracy of "the longer response wins" (equal lengths 0.5): the bar a reward model must
  clear before its accuracy says more than that it likes long answers."""
  diff = np.asarray(len_chosen, np.float64) - np.asarray(len_rejected, np.float64)
  return pair_accuracy(diff)[0]


def _sign_counts(margins) -> np.ndarray:
  """[3, N]: per item, how many members' margins are < 0, == 0, > 0."""
  s = np.sign(np.asarray(margins, np.float64))
  if s.ndim != 2:
    raise ValueError(f"margins must be [K members, N items], got shape {s.shape}")
  return np.stack([(s < 0).sum(0), (s == 0).sum(0), (s > 0).sum(0)]).astype(np.float64)


def _disagreeing(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Per item: disagreeing (member of a, member of b) pairs, weighted 1 for opposite signs and
  0.5 for a tie against a non-tie (a, b: `_sign_counts`)."""
  return a[0] * b[2] + a[2] * b[0] + 0.5 * (a[1] * (b[0] + b[2]) + b[1] * (a[0] + a[2]))


def item_disagreement(margins) -> np.ndarray:
  """Per item [N]: the fraction of member pairs (i < j) whose decisions differ (a tie against a
  non-tie counts half)."""
  c, k = _sign_counts(margins), np.asarray(margins).shape[0]
  if k < 2:
    raise ValueError(f"disagreement needs at least 2 members, got {k}")
  return 0.5 * _disagreeing(c, c) / (k * (k - 1) / 2)


def disagreement(margins, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict:
  """Mean over member pairs of P[the two members order a pair differently], from margins
  [K, N] (a tie vs a non-tie counts 0.5), with a bootstrap interval over the N items, plus
  "matrix": the [K, K] pairwise rates. Models that agree on accuracy can still disagree on
  which pairs they get right; this measures that directly."""
  m = np.asarray(margins, np.float64)
  out = bootstrap_ci(item_disagreement(m), n_boot=n_boot, seed=seed, alpha=alpha)
  s = np.sign(m)
  out["matrix"] = (np.abs(s[:, None, :] - s[None, :, :]) / 2).mean(-1).tolist() if m.shape[1] else None
  return out


def disagreement_across(margins_a, margins_b, n_boot: int = 2000, seed: int = 0,
                        alpha: float = 0.05) -> dict:
  """Mean over pairs (i in group A, j in group B) of P[decisions differ], from margins [Ka, N]
  and [Kb, N] on the same items, with a bootstrap interval over items. Beside `disagreement`
  of each group (within), it says whether two families of models (e.g. two training recipes)
  disagree more with each other than among themselves."""
  a, b = _sign_counts(margins_a), _sign_counts(margins_b)
  if a.shape != b.shape:
    raise ValueError(f"groups must be scored on the same items, got {a.shape[1]} and {b.shape[1]}")
  ka, kb = np.asarray(margins_a).shape[0], np.asarray(margins_b).shape[0]
  return bootstrap_ci(_disagreeing(a, b) / (ka * kb), n_boot=n_boot, seed=seed, alpha=alpha)


def _kappa_from_counts(ones: np.ndarray, k: int) -> float:
  """Fleiss' kappa for 2 categories from per-item counts of raters choosing category 1."""
  if not ones.size:
    return float("nan")
  zeros = k - ones
  p_item = (ones ** 2 + zeros ** 2 - k) / (k * (k - 1))
  p1 = ones.mean() / k
  p_e = p1 ** 2 + (1 - p1) ** 2
  if p_e >= 1:
    return float("nan")  # every rating in one category: agreement beyond chance is undefined
  return float((p_item.mean() - p_e) / (1 - p_e))


def fleiss_kappa(decisions, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict:
  """Fleiss' kappa of K raters (models) on N items with 2 categories, from binary decisions
  [K, N] (e.g. margin > 0), with a bootstrap interval over items: observed agreement corrected
  for the agreement the category frequencies alone would give (1 = perfect, 0 = chance).
  NaN when every decision is the same category."""
  d = np.asarray(decisions)
  if d.ndim != 2 or d.shape[0] < 2:
    raise ValueError(f"fleiss_kappa needs decisions [K >= 2 raters, N items], got {d.shape}")
  if not np.isin(d, (0, 1)).all():
    raise ValueError("fleiss_kappa needs binary (0/1) decisions")
  ones, k = d.astype(np.float64).sum(0), d.shape[0]
  return bootstrap_ci(lambda idx: _kappa_from_counts(ones[idx], k), n_boot=n_boot, seed=seed,
                      alpha=alpha, n=ones.size)


def spearman_matrix(scores) -> np.ndarray:
  """[K, K] Spearman rank correlations between the K members' scores of the same M items
  (e.g. every response of a set); NaN for a member whose scores are all equal."""
  s = np.asarray(scores, np.float64)
  if s.ndim != 2:
    raise ValueError(f"scores must be [K members, M items], got shape {s.shape}")
  ranks = rankdata(s, axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    centred = ranks - ranks.mean(1, keepdims=True)
    norm = np.sqrt((centred ** 2).sum(1))
    return (centred @ centred.T) / np.outer(norm, norm)


def standardized_spread(scores, ref_mask) -> np.ndarray:
  """Per item [M]: the std across members (ddof 0) of scores standardised per member on a common
  reference pool (each member's mean and std over the items where ref_mask is True). Reward
  scales and offsets are arbitrary per model, so raw spreads are not comparable; on a common
  pool they are, and a spread that grows off the reference distribution (OOD) is the ensemble
  signal. NaN for items when a member is constant on the pool."""
  s = np.asarray(scores, np.float64)
  ref = np.asarray(ref_mask, bool)
  if s.ndim != 2 or ref.shape != s.shape[1:]:
    raise ValueError(f"scores [K, M] and ref_mask [M] needed, got {s.shape} and {ref.shape}")
  if not ref.any():
    raise ValueError("standardized_spread: the reference pool is empty")
  mu, sd = s[:, ref].mean(1, keepdims=True), s[:, ref].std(1, keepdims=True)
  with np.errstate(invalid="ignore", divide="ignore"):
    return ((s - mu) / np.where(sd > 0, sd, np.nan)).std(0)


def length_matched(len_c, len_r, tol: float = 0.2) -> np.ndarray:
  """Mask of pairs whose two responses have about the same length: |len_c / len_r - 1| < tol
  (two empty responses match). On these the length baseline is near 0.5, so accuracy there is
  not length preference."""
  c, r = np.asarray(len_c, np.float64), np.asarray(len_r, np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    ratio = np.where((c == 0) & (r == 0), 1.0, c / r)
  return np.abs(ratio - 1) < tol
