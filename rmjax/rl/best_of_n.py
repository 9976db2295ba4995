"""Best-of-n against a proxy reward, read out with a gold reward (ALGORITHMS.md section 5.2).

Inputs are a pool of N >= n samples per prompt with proxy scores and gold scores, both [M, N].
Best-of-n returns, per prompt, the sample with the highest proxy score among n. Two estimators
of E[gold(best-of-n)]:
  - unbiased (order statistics): the expectation over a uniformly random n-subset of the pool.
    Sort samples by proxy (descending; ties broken by pool index, as np.argmax would); the
    sample of rank j (0-based) is the subset's argmax iff it is drawn and none of the j samples
    above it is: P_j = C(N-1-j, n-1) / C(N, n). E = sum_j P_j * gold_sorted[j].
  - nested prefix (GRM's cheaper single draw): the argmax over the first n samples of one
    random permutation per prompt (prefixes nest: n=4 sees n=2's samples).
KL of the best-of-n distribution from the base sampler: KL_bon(n) = log n - (n-1)/n; curves are
drawn against d = sqrt(KL). Gao et al.'s form R_bon(d) = d (alpha - beta d) is fitted to the gold
curve (recentred so R(0) = gold at n = 1) and its peak d* = alpha / (2 beta) reported.
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

import numpy as np


def kl_bon(n) -> np.ndarray:
  """KL(best-of-n || base) in nats: log n - (n-1)/n (exact for a continuous proxy)."""
  n = np.asarray(n, np.float64)
  if np.any(n < 1):
    raise ValueError(f"best-of-n needs n >= 1, got {n}")
  return np.log(n) - (n - 1) / n


def _check(proxy, gold):
  p = np.asarray(proxy, np.float64)
  g = np.asarray(gold, np.float64)
  if p.ndim != 2 or p.shape != g.shape:
    raise ValueError(f"proxy and gold scores must both be [prompts, samples], got {p.shape} and {g.shape}")
  if not (np.all(np.isfinite(p)) and np.all(np.isfinite(g))):
    raise ValueError("proxy or gold scores contain NaN or inf")
  return p, g


def _check_n(n, pool):
  if not 1 <= n <= pool:
    raise ValueError(f"best-of-n needs 1 <= n <= pool size {pool}, got n={n}")


def _rank_order(p: np.ndarray) -> np.ndarray:
  """Per row, pool indices sorted by proxy descending, ties by index ascending: [M, N]."""
  idx = np.broadcast_to(np.arange(p.shape[1]), p.shape)
  return np.lexsort((idx, -p), axis=-1)


def order_stat_weights(pool: int, n: int) -> np.ndarray:
  """P_j that rank j (0-based, descending proxy) is the argmax of a random n-subset: [pool]."""
  _check_n(n, pool)
  j = np.arange(pool)
  a = pool - 1 - j                      # samples below rank j
  ok = a >= n - 1
  lg = math.lgamma
  logc = lambda x, y: lg(x + 1) - lg(y + 1) - lg(x - y + 1)
  total = logc(pool, n)
  w = np.array([math.exp(logc(int(ai), n - 1) - total) if o else 0.0 for ai, o in zip(a, ok)])
  return w


def bon_per_prompt(proxy, values, n: int) -> np.ndarray:
  """Per prompt, E over random n-subsets of `values` (gold, the proxy itself, an indicator) at
  the proxy argmax: [M]. proxy, values: [M, N]."""
  p, v = _check(proxy, values)
  w = order_stat_weights(p.shape[1], n)                     # [N]
  return np.take_along_axis(v, _rank_order(p), axis=1) @ w


def bon_unbiased(proxy, gold, n: int, values=None) -> float:
  """E over random n-subsets (and prompts) of gold (or `values`, e.g. the proxy itself) at the
  proxy argmax. proxy, gold: [M, N]."""
  p, g = _check(proxy, gold)
  return float(np.mean(bon_per_prompt(p, g if values is None else values, n)))


def bon_nested(proxy, gold, n: int, values=None, seed: int | None = 0) -> float:
  """Nested-prefix estimate: gold (or `values`) at the proxy argmax of the first n samples of
  one permutation per prompt (seed None: the pool order as given)."""
  p, g = _check(proxy, gold)
  v = g if values is None else np.asarray(values, np.float64)
  _check_n(n, p.shape[1])
  if seed is not None:
    rng = np.random.default_rng(seed)
    perm = np.argsort(rng.random(p.shape), axis=1)
    p, v = np.take_along_axis(p, perm, 1), np.take_along_axis(v, perm, 1)
  best = np.argmax(p[:, :n], axis=1)
  return float(np.mean(v[np.arange(len(v)), best]))


def bon_bruteforce(proxy, gold, n: int) -> float:
  """Exact expectation by enumerating every n-subset (tests only: small N)."""
  import itertools
  p, g = _check(proxy, gold)
  _check_n(n, p.shape[1])
  vals = []
  for row_p, row_g in zip(p, g):
    tot = [row_g[list(s)[int(np.argmax(row_p[list(s)]))]]
           for s in itertools.combinations(range(len(row_p)), n)]
    vals.append(np.mean(tot))
  return float(np.mean(vals))


def default_ns(pool: int) -> list:
  """1, 2, 4, ... up to the pool size (the pool size itself included)."""
  ns, n = [], 1
  while n < pool:
    ns.append(n)
    n *= 2
  return ns + [pool]


def fit_bon(d, r) -> dict:
  """Least-squares fit of R(d) = d (alpha - beta d) (R recentred so R(0) = 0); peak d*."""
  d, r = np.asarray(d, np.float64), np.asarray(r, np.float64)
  a = np.stack([d, -d * d], axis=1)
  (alpha, beta), *_ = np.linalg.lstsq(a, r, rcond=None)
  peak = float(alpha / (2 * beta)) if beta > 0 else float("inf")
  return {"alpha": float(alpha), "beta": float(beta), "d_peak": peak}


def bon_curves(proxies: dict, gold, ns: Sequence[int] | None = None, nested_seed: int = 0) -> dict:
  """Curves for several proxies {name: [M, N]} against one gold [M, N].

  Per proxy: n, kl, sqrt_kl, proxy (unbiased E of the proxy's own score at its argmax), gold
  (unbiased), gold_nested (nested-prefix estimate), gold_gain (gold - gold at n=1), and the
  Gao fit of gold_gain vs sqrt_kl.
  """
  g = np.asarray(gold, np.float64)
  ns = list(ns or default_ns(g.shape[1]))
  kl = kl_bon(ns)
  out = {"ns": ns, "kl": kl.tolist(), "sqrt_kl": np.sqrt(kl).tolist(), "prompts": int(g.shape[0]),
         "pool": int(g.shape[1]), "curves": {}}
  for name, p in proxies.items():
    gold_c = [bon_unbiased(p, g, n) for n in ns]
    c = {"proxy": [bon_unbiased(p, g, n, values=p) for n in ns], "gold": gold_c,
         "gold_nested": [bon_nested(p, g, n, seed=nested_seed) for n in ns]}
    c["gold_gain"] = [x - gold_c[0] for x in gold_c]
    c["fit"] = fit_bon(np.sqrt(kl), c["gold_gain"]) if len(ns) >= 3 else None
    c["gold_final_minus_max"] = float(gold_c[-1] - max(gold_c))  # < 0: the curve turned down
    out["curves"][name] = c
  return out


def save_curves(curves: dict, out_dir: str, name: str = "best_of_n", title: str = "") -> dict:
  """Write `<name>.json` and `<name>.png` (gold and proxy vs sqrt(KL), one line per proxy)."""
  from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone
  os.makedirs(out_dir, exist_ok=True)
  paths = {"json": os.path.join(out_dir, f"{name}.json"), "png": os.path.join(out_dir, f"{name}.png")}
  with open(paths["json"], "w") as f:
    json.dump(curves, f, indent=2)
  x = curves["sqrt_kl"]
  fig = Figure(figsize=(10, 4))
  axes = fig.subplots(1, 2)
  for key, c in curves["curves"].items():
    axes[0].plot(x, c["gold"], marker="o", label=key)
    axes[1].plot(x, c["proxy"], marker="o", label=key)
  axes[0].set(xlabel="sqrt(KL_bon) (nats^0.5)", ylabel="gold reward", title="gold (unbiased BoN)")
  axes[1].set(xlabel="sqrt(KL_bon) (nats^0.5)", ylabel="proxy (own scale)", title="proxy")
  axes[0].legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(paths["png"], dpi=100)
  return paths
