"""Conservative aggregation of reward-model ensemble scores (ALGORITHMS.md section 2.2).

For member scores r_1..r_K of one (prompt, response), mu = mean:
  mean  mu                                   (Coste Eq. 3)
  wco   min_i r_i                            (worst-case optimisation, Coste Eq. 4)
  uwo   mu - lam * (1/K) sum (r_i - mu)^2    (uncertainty-weighted, POPULATION variance, Eq. 5)
  lcb   mu - beta * std                      (lower confidence bound, Zhang et al.; std kind is
                                              'population' (ddof 0) or 'sample' (ddof 1))
BT rewards are identified only up to an offset (and scale) per member, so min and variance over
members mean something only after aligning members: `standardizer(reference_scores)` returns a
function that maps each member to mean 0 / std 1 on a fixed reference set (framework default on).

Works on numpy and jax arrays alike (members on the LAST axis), so scoring, best-of-n and PPO
share it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from rmjax.errors import ConfigError
from rmjax.rl.registry import AGGREGATES

STD_KINDS = {"population": 0, "sample": 1}


@AGGREGATES.register("mean")
def _mean(r, *, lam, beta, ddof):
  return r.mean(axis=-1)


@AGGREGATES.register("wco")
def _wco(r, *, lam, beta, ddof):
  return r.min(axis=-1)


@AGGREGATES.register("uwo", spread=True)
def _uwo(r, *, lam, beta, ddof):
  return r.mean(axis=-1) - lam * r.var(axis=-1)  # population variance (1/K)


@AGGREGATES.register("lcb", spread=True)
def _lcb(r, *, lam, beta, ddof):
  return r.mean(axis=-1) - beta * r.std(axis=-1, ddof=ddof)


def _xp(x):
  """numpy for numpy / python input, jax.numpy for jax arrays (so it traces under jit)."""
  if type(x).__module__.startswith("jax"):
    import jax.numpy as jnp
    return jnp
  return np


def _check_finite(x, what: str):
  if _xp(x) is not np:
    return  # traced values cannot be checked eagerly; PPO callers check on host
  if not np.all(np.isfinite(x)):
    bad = int(np.sum(~np.isfinite(x)))
    raise ValueError(f"{what}: {bad} non-finite (NaN/inf) member score(s)")


def aggregate(member_scores, method: str = "mean", *, lam: float = 0.5, beta: float = 1.0,
              std: str = "population", standardize: Callable | None = None):
  """Aggregate member scores [..., K] -> [...] with `method` in mean | wco | uwo | lcb (or any
  method registered in `rmjax.rl.registry.AGGREGATES`).

  lam: UWO variance weight (Coste BoN: 0.5; PPO: 0.1). beta: LCB std weight. std: LCB's std,
  'population' (ddof 0, the default) or 'sample' (ddof 1). standardize: optional per-member map
  from `standardizer` applied first. Raises ConfigError on an unknown method/std kind or K < 2
  for a spread-based method, ValueError on non-finite scores.
  """
  fn, spread_method = AGGREGATES.get(method), AGGREGATES.traits(method)["spread"]
  if std not in STD_KINDS:
    raise ConfigError(f"unknown std kind {std!r}; choose population or sample")
  xp = _xp(member_scores)
  r = xp.asarray(member_scores) if xp is not np else np.asarray(member_scores, np.float64)
  if r.ndim == 0:
    raise ConfigError("member scores must have a members axis (last), got a scalar")
  k = r.shape[-1]
  if k < 1:
    raise ConfigError("member scores have an empty members axis")
  if spread_method and k < 2:
    raise ConfigError(f"aggregation {method!r} needs at least 2 ensemble members, got {k}")
  if method == "lcb" and std == "sample" and k < 2:
    raise ConfigError("sample std needs at least 2 members")
  _check_finite(r, "aggregate")
  if standardize is not None:
    r = standardize(r)
  return fn(r, lam=lam, beta=beta, ddof=STD_KINDS[std])


def spread(member_scores, kind: str = "population"):
  """Per-example std over members [..., K] -> [...] (the uncertainty signal)."""
  if kind not in STD_KINDS:
    raise ConfigError(f"unknown std kind {kind!r}; choose population or sample")
  r = np.asarray(member_scores, np.float64)
  _check_finite(r, "spread")
  return r.std(axis=-1, ddof=STD_KINDS[kind])


def standardizer(reference_scores, eps: float = 1e-8) -> Callable:
  """Per-member standardisation fitted on reference scores [N, K]: returns f(r [..., K]) that
  maps member k to (r_k - mean_k) / std_k of the reference set. Members with (near-)zero spread
  on the reference are only centred. Raises ValueError on a bad or non-finite reference."""
  ref = np.asarray(reference_scores, np.float64)
  if ref.ndim != 2 or ref.shape[0] < 2:
    raise ValueError(f"reference scores must be [N >= 2, K], got shape {ref.shape}")
  _check_finite(ref, "standardizer reference")
  mean = ref.mean(axis=0)                      # [K]
  scale = ref.std(axis=0)
  scale = np.where(scale > eps, scale, 1.0)    # [K]

  def apply(r):
    xp = _xp(r)
    if r.shape[-1] != mean.shape[0]:
      raise ValueError(f"standardizer fitted on {mean.shape[0]} members, got {r.shape[-1]}")
    return (r - xp.asarray(mean, dtype=r.dtype)) / xp.asarray(scale, dtype=r.dtype)

  apply.mean, apply.scale = mean, scale
  return apply


def aggregate_all(member_scores, methods=None, *, reference=None, lam: float = 0.5,
                  beta: float = 1.0, std: str = "population") -> dict:
  """{method: aggregated [...]} for several methods at once; `reference` [N, K] (or None)
  turns on per-member standardisation. Also adds 'single' = member 0 (raw) for comparisons."""
  r = np.asarray(member_scores, np.float64)
  f = standardizer(reference) if reference is not None else None
  out = {"single": r[..., 0]}
  for m in AGGREGATES.names() if methods is None else methods:
    if AGGREGATES.traits(m)["spread"] and r.shape[-1] < 2:
      continue
    out[m] = aggregate(r, m, lam=lam, beta=beta, std=std, standardize=f)
  return out
