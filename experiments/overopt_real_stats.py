"""E-b statistics: the gold (fit + credibility checks), the proxy ensembles, best-of-n curves with
bootstrap CIs over prompts x proxy seeds, the risk of ending below the base policy.

Gold (fixed, "larger" than the proxy, Gao et al.): 5 seeded MLP heads (1152 -> 256 -> 1, dropout
0.1; steps chosen on a 10% split of the training pairs), averaged, on the concatenated last-token
and mean-pooled final-layer SmolLM2-135M features, trained on every real training pair of E-a
(hh harmless + helpful, AlpacaEval GPT-4, Auto-J: 3,200). Before any curve it must be credible:
held-out accuracy above the length baseline on hh, AlpacaEval and LLMBar (paired CIs), and
|Spearman(gold, length)| < 0.5 on the BoN pool.

Decided before any curve was drawn (the pooled MLP gold failed the first check on a dry fit):
if |Spearman(gold, length in tokens)| >= 0.5 on the BoN pool, the primary gold is the
length-residualised gold (gold minus its least-squares fit on log(1 + tokens) over every sampled
response), which cannot reward length; the protocol gold's curves are reported beside it.

Proxy: 5 linear heads on the last-token feature only (a subset of gold's inputs), Poisson
bootstrap + seed, trained on the gold-labelled label pairs of policy samples with 25% of labels
flipped; 5 proxy seeds (different init, minibatches, bootstrap draws). Members are standardised
on the label samples' scores before aggregation (single = member 0; mean; UWO lam 0.5; LCB
beta 1; WCO).

Best-of-n: the unbiased order-statistics estimator (`rmjax.rl.best_of_n`), n = 1..64; gold as
the gain over each prompt's base-policy mean, in units of the within-prompt gold sd (so n = 1 is
0 on every prompt and the CIs measure the optimisation, not which prompts were drawn). CIs: 2,000 bootstrap replicates
resampling prompts and proxy seeds independently. Risk: P(the pick's gold < the base policy's
mean gold on that prompt), per prompt x seed.

  python -m experiments.overopt_real_stats --workdir runs/eb --cache runs/features \
      --report experiments/results/overopt
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from experiments import real_sets, report_files  # noqa: E402
from experiments.report_files import ci  # noqa: E402
from rmjax.eval import stats  # noqa: E402

GOLD_FEATURES = ("last", "mean")
PROXY_FEATURE = "last"
AGGS = ("single", "mean", "uwo", "lcb", "wco")
GOLD_SEEDS = (500, 501, 502, 503, 504)
PROXY_SEEDS, MEMBERS, NOISE = 5, 5, 0.25
CHECK_SETS = ("eval/hh_harmless", "eval/hh_helpful", "eval/alpaca_eval", "ood/llmbar")


def _concat(f: dict, keys) -> np.ndarray:
  return np.concatenate([f[k] for k in keys], axis=1)


def gold_data(cache, limit: int = 0) -> dict:
  """{'train': {'c', 'r'}, 'checks': {set: {'c', 'r', 'len_c', 'len_r'}}} of gold features."""
  sets = real_sets.load_sets()
  out = {"train": {"c": [], "r": []}, "checks": {}}
  for name, ex in sets["train"].items():
    f = cache.pairs(ex[:limit] if limit else ex, features=GOLD_FEATURES)
    out["train"]["c"].append(_concat(f["chosen"], GOLD_FEATURES))
    out["train"]["r"].append(_concat(f["rejected"], GOLD_FEATURES))
  out["train"] = {k: np.concatenate(v) for k, v in out["train"].items()}
  for key in sorted(set(CHECK_SETS) | {f"eval/{k}" for k in sets["eval"]}):
    part, name = key.split("/")
    ex = sets[part][name][:limit] if limit else sets[part][name]
    f = cache.pairs(ex, features=GOLD_FEATURES)
    out["checks"][key] = {"c": _concat(f["chosen"], GOLD_FEATURES),
                          "r": _concat(f["rejected"], GOLD_FEATURES),
                          "len_c": np.array([len(e.chosen) for e in ex]),
                          "len_r": np.array([len(e.rejected) for e in ex])}
  return out


def fit_gold(train: dict) -> tuple:
  """(heads, plan): the step count from `inconsistency.choose_steps`, then 5 seeds on all pairs."""
  from experiments.inconsistency import BATCH, choose_steps
  from rmjax.train.head_fit import train_member_heads
  head = dict(hidden=256, dropout=0.1, lr=1e-3)
  plan = choose_steps(train, head)
  heads, _ = train_member_heads(train["c"], train["r"], list(GOLD_SEEDS), steps=plan["steps"],
                                batch_size=BATCH, **head)
  return heads, plan


def gold_of(heads, x) -> np.ndarray:
  from rmjax.train.head_fit import member_scores
  return member_scores(heads, x).mean(0)


def credibility(heads, checks: dict, pool_gold, pool_len_chars, pool_len_tokens, n_boot) -> dict:
  """Per check set: gold accuracy, length baseline, gold - length (paired); Spearman on the pool."""
  out = {}
  for key, s in checks.items():
    g = stats.pair_correct(gold_of(heads, s["c"]) - gold_of(heads, s["r"]))
    ln = stats.pair_correct(s["len_c"] - s["len_r"])
    out[key] = {"n": len(g), "gold": stats.bootstrap_ci(g, n_boot),
                "length": stats.bootstrap_ci(ln, n_boot),
                "gold_minus_length": stats.paired_diff_ci(g, ln, n_boot)}
  rho_c = spearmanr(pool_gold, pool_len_chars).statistic
  rho_t = spearmanr(pool_gold, pool_len_tokens).statistic
  out["pool_spearman_length"] = {"chars": float(rho_c), "tokens": float(rho_t)}
  out["passes"] = {
      "above_length": {k: bool(out[k]["gold_minus_length"]["lo"] > 0) for k in CHECK_SETS
                       if k in out},
      "length_corr_below_0.5": bool(abs(rho_c) < 0.5 and abs(rho_t) < 0.5)}
  return out


def label_pairs(rows, gold: np.ndarray, seed: int = 0):
  """(chosen index, rejected index, info): per label prompt its two samples ordered by gold,
  identical texts / gold ties dropped (counted), NOISE of the labels flipped (seeded)."""
  by = {}
  for k, r in enumerate(rows):
    if r["kind"] == "label":
      by.setdefault(r["i"], []).append(k)
  rng = np.random.default_rng([seed, 4])
  ci_, ri_, info = [], [], {"prompts": len(by), "ties_or_identical": 0, "flipped": 0}
  for i in sorted(by):
    a, b = by[i]
    if rows[a]["text"] == rows[b]["text"] or gold[a] == gold[b]:
      info["ties_or_identical"] += 1
      continue
    c, r = (a, b) if gold[a] > gold[b] else (b, a)
    if rng.random() < NOISE:
      c, r = r, c
      info["flipped"] += 1
    ci_.append(c)
    ri_.append(r)
  info["pairs"] = len(ci_)
  return np.array(ci_), np.array(ri_), info


def train_proxies(x, ci_, ri_, ref_idx) -> tuple:
  """[S][K, N] member scores on every row x, standardised on the reference rows; plan."""
  from experiments.inconsistency import BATCH, HEADS, choose_steps
  from rmjax.train.head_fit import member_scores, train_member_heads
  tr = {"c": x[ci_], "r": x[ri_]}
  plan = choose_steps(tr, HEADS["linear"])
  out = []
  for s in range(PROXY_SEEDS):
    boot = np.random.default_rng([s, 7]).poisson(1.0, (MEMBERS, len(ci_))).astype(np.float32)
    heads, _ = train_member_heads(tr["c"], tr["r"], [100 * s + k for k in range(MEMBERS)],
                                  steps=plan["steps"], batch_size=BATCH, boot=boot,
                                  **HEADS["linear"])
    m = member_scores(heads, x)
    ref = m[:, ref_idx]
    out.append((m - ref.mean(1, keepdims=True)) / (ref.std(1, keepdims=True) + 1e-8))
  return np.stack(out), plan


def aggregates(members: np.ndarray) -> dict:
  """{agg: [..., N]} from members [..., K, N] (already standardised)."""
  from rmjax.rl.rewards import aggregate
  r = np.moveaxis(members, -2, -1)
  out = {"single": members[..., 0, :]}
  for m in AGGS[1:]:
    out[m] = aggregate(r, m, lam=0.5, beta=1.0)
  return out


def bon_tables(proxy: dict, gold: np.ndarray, ns) -> dict:
  """{agg: {'gold', 'proxy', 'risk'}: [S, P, len(ns)]} per proxy seed and prompt."""
  from rmjax.rl.best_of_n import bon_per_prompt
  below = (gold < gold.mean(1, keepdims=True)).astype(np.float64)
  out = {}
  for a, p in proxy.items():                      # p: [S, P, N]
    t = {k: np.zeros(p.shape[:2] + (len(ns),)) for k in ("gold", "proxy", "risk")}
    for s in range(p.shape[0]):
      for j, n in enumerate(ns):
        t["gold"][s, :, j] = bon_per_prompt(p[s], gold, n)
        t["proxy"][s, :, j] = bon_per_prompt(p[s], p[s], n)
        t["risk"][s, :, j] = bon_per_prompt(p[s], below, n)
    out[a] = t
  return out


def bootstrap_curves(tables: dict, n_boot: int, seed: int = 0) -> dict:
  """Mean curves and CIs, resampling prompts and seeds independently (2-way bootstrap):
  per agg and quantity the curve with CI bands; peak n; final - peak; final(agg) - final(mean);
  risk(agg) - risk(mean) at the largest n."""
  some = next(iter(tables.values()))["gold"]
  S, P, _ = some.shape
  rng = np.random.default_rng(seed)
  ws = rng.multinomial(S, np.full(S, 1 / S), n_boot) / S      # [B, S]
  wp = rng.multinomial(P, np.full(P, 1 / P), n_boot) / P      # [B, P]

  def boot(t):  # [S, P, J] -> value [J], replicates [B, J]
    return t.mean((0, 1)), np.einsum("bs,bp,spj->bj", ws, wp, t)

  def interval(v, reps):
    lo, hi = np.percentile(reps, [2.5, 97.5], axis=0)
    return {"value": v, "lo": lo, "hi": hi}

  out = {}
  for a, t in tables.items():
    out[a] = {}
    for q in ("gold", "proxy", "risk"):
      v, reps = boot(t[q])
      out[a][q] = interval(v, reps)
      if q == "gold":
        out[a]["peak_index"] = int(np.argmax(v))
        out[a]["final_minus_peak"] = interval(float(v[-1] - v.max()), reps[:, -1] - reps.max(1))
        out[a]["_reps"] = reps
    out[a]["_risk_reps"] = boot(t["risk"])[1]
  for a in tables:
    for q, key in (("_reps", "final_minus_mean"), ("_risk_reps", "risk_minus_mean")):
      d = out[a][q][:, -1] - out["mean"][q][:, -1]
      base = ("gold" if q == "_reps" else "risk")
      v = float(out[a][base]["value"][-1] - out["mean"][base]["value"][-1])
      out[a][key] = interval(v, d)
  return out


def verdict(curves: dict, ns) -> dict:
  mono = {a: bool(np.all(np.diff(c["proxy"]["value"]) >= -1e-9)) for a, c in curves.items()}
  turn = {a: {"peak_n": ns[curves[a]["peak_index"]],
              "turns_down": bool(curves[a]["final_minus_peak"]["hi"] < 0)}
          for a in ("single", "mean")}
  higher = {a: bool(curves[a]["final_minus_mean"]["lo"] > 0) for a in ("uwo", "lcb", "wco")}
  return {"proxy_monotone": mono, "single_mean_turn_down": turn,
          "conservative_above_mean": higher,
          "lcb_risk_lower": bool(curves["lcb"]["risk_minus_mean"]["hi"] < 0)}


def analyse(workdir: str, cache_dir: str, spec: str, max_length: int, limit: int,
            n_boot: int) -> dict:
  from rmjax.inference.feature_cache import FeatureCache
  from rmjax.rl.best_of_n import default_ns, kl_bon
  cache = FeatureCache(cache_dir, spec, max_length)
  t0 = time.perf_counter()
  gd = gold_data(cache, limit)
  heads, gold_plan = fit_gold(gd["train"])
  with open(os.path.join(workdir, "samples.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  feats = cache.responses([(r["prompt"], r["text"]) for r in rows], features=GOLD_FEATURES)
  gold = gold_of(heads, _concat(feats, GOLD_FEATURES))
  bon = [k for k, r in enumerate(rows) if r["kind"] == "bon"]
  n_prompts = 1 + max(rows[k]["i"] for k in bon)
  pool = len(bon) // n_prompts
  grid = np.zeros((n_prompts, pool), int)
  for k in bon:
    grid[rows[k]["i"], rows[k]["j"]] = k
  base_sd = gold[grid].std()
  chars = np.array([len(r["text"]) for r in rows])
  toks = np.array([r["n_tokens"] for r in rows])
  cred = credibility(heads, gd["checks"], gold[grid].ravel(), chars[grid].ravel(),
                     toks[grid].ravel(), n_boot)
  logt = np.log1p(toks.astype(np.float64))
  slope, icpt = np.polyfit(logt, gold, 1)
  golds = {"protocol": gold, "length_residualised": gold - (slope * logt + icpt)}
  primary = ("length_residualised" if abs(cred["pool_spearman_length"]["tokens"]) >= 0.5
             else "protocol")
  ns = default_ns(pool)
  runs = {}
  for name, g in golds.items():
    gp = g[grid]                                   # [P, N]: gain over the prompt's base mean,
    g_std = g.copy()                               # in units of the within-prompt gold sd
    g_std[grid] = (gp - gp.mean(1, keepdims=True)) / (gp - gp.mean(1, keepdims=True)).std()
    ci_, ri_, label_info = label_pairs(rows, g)
    ref = np.array(sorted(set(ci_) | set(ri_)))
    members, proxy_plan = train_proxies(feats[PROXY_FEATURE], ci_, ri_, ref)   # [S, K, N]
    agg = aggregates(members)
    tables = bon_tables({a: v[:, grid] for a, v in agg.items()}, g_std[grid], ns)
    curves = bootstrap_curves(tables, n_boot)
    rho = [np.mean([spearmanr(agg["mean"][s][grid[p]], g[grid[p]]).statistic
                    for p in range(n_prompts)]) for s in range(PROXY_SEEDS)]
    runs[name] = {"proxy": {"plan": proxy_plan, "labels": label_info, "feature": PROXY_FEATURE,
                            "within_prompt_spearman_mean_vs_gold": [float(x) for x in rho]},
                  "pool_spearman_length_tokens": float(spearmanr(g[grid].ravel(),
                                                                 toks[grid].ravel()).statistic),
                  "curves": curves, "verdict": verdict(curves, ns)}
  return {
      "sizes": {"label_prompts": runs[primary]["proxy"]["labels"]["prompts"],
                "bon_prompts": int(n_prompts), "pool": int(pool), "proxy_seeds": PROXY_SEEDS,
                "members": MEMBERS, "noise": NOISE, "gold_train_pairs": int(len(gd["train"]["c"])),
                "samples": len(rows), "n_boot": n_boot},
      "gold": {"plan": gold_plan, "features": list(GOLD_FEATURES), "base_sd_raw": float(base_sd),
               "credibility": cred, "primary": primary,
               "length_fit": {"slope_per_log_token": float(slope), "intercept": float(icpt)}},
      "samples": {"unfinished": int(sum(not r["finished"] for r in rows)),
                  "mean_tokens": float(toks.mean()), "mean_chars": float(chars.mean())},
      "ns": ns, "sqrt_kl": np.sqrt(kl_bon(ns)).tolist(), "runs": runs,
      "seconds": round(time.perf_counter() - t0, 1)}


def markdown(r: dict) -> str:
  c = r["gold"]["credibility"]
  lines = ["# E-b: best-of-n over-optimisation against a real-data gold (SmolLM2-135M)", "",
           f"Sizes: {json.dumps(r['sizes'])}", "",
           "## Gold credibility (before any curve)", "",
           "| set | n | gold acc | length baseline | gold - length |", "|---|---|---|---|---|"]
  for k in sorted(k for k in c if "/" in k):
    lines.append(f"| {k} | {c[k]['n']} | {ci(c[k]['gold'])} | {ci(c[k]['length'])} | "
                 f"{ci(c[k]['gold_minus_length'])} |")
  sp = c["pool_spearman_length"]
  lines += ["", f"Spearman(gold, length) on the BoN pool: chars {sp['chars']:.3f}, tokens "
            f"{sp['tokens']:.3f}. Passes: {json.dumps(c['passes'])}. Primary gold: "
            f"**{r['gold']['primary']}**.", ""]
  ns = r["ns"]
  for name, run in r["runs"].items():
    pr = run["proxy"]
    lines += [f"## Best-of-n, gold = {name} (gold gain over the prompt's base mean, in within-prompt "
              "gold sd; 95% CI over prompts x proxy seeds)", "",
              f"Spearman(this gold, tokens) on the pool {run['pool_spearman_length_tokens']:.3f}; "
              f"proxy labels {json.dumps(pr['labels'])}; within-prompt Spearman(mean proxy, gold)"
              f" per proxy seed {[round(x, 3) for x in pr['within_prompt_spearman_mean_vs_gold']]}",
              "", f"| agg | gold n=1 | gold peak (n) | gold n={ns[-1]} | final - peak | n={ns[-1]} - mean's | "
              f"risk n={ns[-1]} | risk - mean's |", "|---|---|---|---|---|---|---|---|"]
    for a, cv in run["curves"].items():
      g = cv["gold"]
      pk = cv["peak_index"]
      lines.append(
          f"| {a} | {g['value'][0]:.3f} | {g['value'][pk]:.3f} ({ns[pk]}) | "
          f"{ci({k: g[k][-1] for k in g})} | {ci(cv['final_minus_peak'])} | "
          f"{ci(cv['final_minus_mean'])} | {ci({k: cv['risk'][k][-1] for k in g})} | "
          f"{ci(cv['risk_minus_mean'])} |")
    lines += ["", f"Verdict ({name}): {json.dumps(run['verdict'])}", ""]
  return "\n".join(lines)


def figure(r: dict, path: str) -> None:
  from matplotlib.figure import Figure
  names = list(r["runs"])
  fig = Figure(figsize=(15, 4.0 * len(names)))
  axes = fig.subplots(len(names), 3, squeeze=False)
  x = np.asarray(r["sqrt_kl"])
  for row, name in zip(axes, names):
    for a, cv in r["runs"][name]["curves"].items():
      for ax, q in zip(row, ("gold", "proxy", "risk")):
        c = cv[q]
        ax.plot(x, c["value"], marker="o", ms=3, label=a)
        ax.fill_between(x, c["lo"], c["hi"], alpha=0.15)
    row[0].set(xlabel="sqrt(KL_bon)", ylabel="gold gain (within-prompt sd)",
               title=f"gold = {name}")
    row[1].set(xlabel="sqrt(KL_bon)", ylabel="proxy (standardised)", title="proxy")
    row[2].set(xlabel="sqrt(KL_bon)", ylabel="P(pick < base mean gold)",
               title="risk (worse than the base policy)")
    row[0].legend(fontsize=8)
  fig.suptitle(f"E-b best-of-n, {r['sizes']['bon_prompts']} prompts x {r['sizes']['proxy_seeds']}"
               f" proxy seeds, 95% CI bands (primary gold: {r['gold']['primary']})")
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", default="runs/eb")
  ap.add_argument("--cache", default="runs/features")
  ap.add_argument("--report", default="experiments/results/overopt")
  ap.add_argument("--spec", default="smollm2-135m")
  ap.add_argument("--max_length", type=int, default=256)
  ap.add_argument("--limit", type=int, default=0, help="pairs per gold set (smoke)")
  ap.add_argument("--n_boot", type=int, default=2000)
  a = ap.parse_args(argv)
  if os.environ.get("RMJAX_SMOKE", "0") == "1":  # the plumbing on the random tiny backbone
    a.spec, a.max_length, a.limit, a.n_boot = "tiny", 128, 16, 200
  r = analyse(a.workdir, a.cache, a.spec, a.max_length, a.limit, a.n_boot)
  report_files.write(r, a.report, "overopt", markdown, figure)
  print(markdown(r))
  print(json.dumps(report_files.json_safe({
      "primary": r["gold"]["primary"], "credibility": r["gold"]["credibility"]["passes"],
      "verdict": {k: v["verdict"] for k, v in r["runs"].items()}})))
  return r


if __name__ == "__main__":
  main()
