"""The K-armed bandit check of variance-aware policy optimisation (ALGORITHMS.md 2.3, 2.6).

Arms i = 1..K, reference policy pi0, true rewards r*, estimates r_hat ~ N(r*, diag(var)) (the
ensemble's variance). Optima of three regularised objectives, in closed form up to one scalar
Lagrange multiplier found by bisection:
  vanilla         max <pi, r_hat> - beta KL(pi || pi0)          -> pi ~ pi0 exp(r_hat / beta)
  weighted_kl     max <pi, r_hat> - beta sum_i w_i pi_i log(pi_i / pi0_i), w = var / mean(var)
                  clipped (the per-sequence KL-coefficient scaling PPO uses)
                  -> pi_i = pi0_i exp((r_hat_i - nu) / (beta w_i) - 1)
  sigma_norm      max <pi, r_hat> - (1/eta) ||pi - pi0||^2_Sigma (the penalised form of the
                  concentration bound) -> pi_i = max(0, pi0_i + eta (r_hat_i - nu) / (2 var_i))
`simulate` draws many r_hat, solves each objective and reports how much mass moved to the
high-variance arms and the risk P(<pi, r*> < <pi0, r*>) of ending worse than the reference.
"""

from __future__ import annotations

import numpy as np

from rmjax.errors import ConfigError

METHODS = ("vanilla", "weighted_kl", "sigma_norm")


def _bisect(total, lo: float, hi: float, iters: int = 200) -> float:
  """nu with total(nu) = 1 for a total that decreases in nu; the bracket is widened as needed."""
  while total(lo) < 1:
    lo -= (hi - lo) + 1.0
  while total(hi) > 1:
    hi += (hi - lo) + 1.0
  for _ in range(iters):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if total(mid) > 1 else (lo, mid)
  return 0.5 * (lo + hi)


def kl_weights(var, w_min: float = 0.1, w_max: float = 10.0) -> np.ndarray:
  var = np.asarray(var, np.float64)
  return np.clip(var / max(var.mean(), 1e-12), w_min, w_max)


def vanilla_policy(r_hat, pi0, beta: float) -> np.ndarray:
  z = np.log(pi0) + np.asarray(r_hat, np.float64) / beta
  z = np.exp(z - z.max())
  return z / z.sum()


def weighted_kl_policy(r_hat, pi0, beta: float, var, w_min=0.1, w_max=10.0) -> np.ndarray:
  r, pi0, w = np.asarray(r_hat, np.float64), np.asarray(pi0, np.float64), kl_weights(var, w_min, w_max)

  def pi(nu):
    return pi0 * np.exp(np.minimum((r - nu) / (beta * w) - 1.0, 700.0))
  nu = _bisect(lambda n: pi(n).sum(), r.min() - 10 * beta * w.max(), r.max() + 10 * beta * w.max())
  p = pi(nu)
  return p / p.sum()


def sigma_norm_policy(r_hat, pi0, eta: float, var) -> np.ndarray:
  r, pi0, var = (np.asarray(x, np.float64) for x in (r_hat, pi0, var))

  def pi(nu):
    return np.maximum(0.0, pi0 + eta * (r - nu) / (2.0 * var))
  nu = _bisect(lambda n: pi(n).sum(), r.min() - 1.0, r.max() + 1.0)
  p = pi(nu)
  return p / p.sum()


def solve(method: str, r_hat, pi0, var, beta: float = 0.1, eta: float = 0.1, w_min=0.1,
          w_max=10.0) -> np.ndarray:
  if method == "vanilla":
    return vanilla_policy(r_hat, pi0, beta)
  if method == "weighted_kl":
    return weighted_kl_policy(r_hat, pi0, beta, var, w_min, w_max)
  if method == "sigma_norm":
    return sigma_norm_policy(r_hat, pi0, eta, var)
  raise ConfigError(f"unknown bandit method {method!r}; choose from {', '.join(METHODS)}")


def simulate(r_star, var, pi0=None, methods=METHODS, trials: int = 2000, seed: int = 0,
             beta: float = 0.1, eta: float = 0.1, high=None) -> dict:
  """{method: {'risk', 'value', 'moved_high', 'mass_high'}} over `trials` noisy estimates.

  risk: P(<pi, r*> < <pi0, r*>); value: mean <pi, r*> - <pi0, r*>; moved_high: mean total
  |pi - pi0| on the high-variance arms (`high`, default var > median); mass_high: mean mass
  on them.
  """
  r_star, var = np.asarray(r_star, np.float64), np.asarray(var, np.float64)
  k = len(r_star)
  pi0 = np.full(k, 1.0 / k) if pi0 is None else np.asarray(pi0, np.float64)
  high = var > np.median(var) if high is None else np.asarray(high, bool)
  rng = np.random.default_rng(seed)
  draws = r_star + rng.normal(size=(trials, k)) * np.sqrt(var)
  base = float(pi0 @ r_star)
  out = {}
  for m in methods:
    pis = np.stack([solve(m, d, pi0, var, beta, eta) for d in draws])
    vals = pis @ r_star - base
    out[m] = {"risk": float(np.mean(vals < 0)), "value": float(np.mean(vals)),
              "moved_high": float(np.mean(np.abs(pis - pi0)[:, high].sum(1))),
              "mass_high": float(np.mean(pis[:, high].sum(1)))}
  return out
