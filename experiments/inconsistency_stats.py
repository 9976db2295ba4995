"""E-a's statistics from members.npz (`experiments.inconsistency` stage 2): JSON, Markdown, figure.

Per dataset d x head (mlp, linear) x construction (seed, boot), from the K members' margins:
member accuracies on d's ID split and on the pooled probe (95% bootstrap CIs, ties 0.5) beside
the length baseline; pairwise decision disagreement D and Fleiss' kappa, ID vs OOD, and on the
length-matched probe pairs; D(OOD) - D(ID) (independent bootstraps: different items); the
per-item std of standardised member scores (reference pool: every probe response); mean
Spearman between members' probe scores. Across datasets (seed-only MLP members, probe): mean
pairwise Cohen kappa / disagreement within a dataset vs across datasets, jointly bootstrapped.
"""

from __future__ import annotations

import json

import numpy as np

from experiments import real_sets, report_files
from experiments.report_files import ci
from rmjax.eval import stats

ALPHA = 0.05


def _boot_means(values, n_boot, seed):
  v = np.asarray(values, np.float64)
  idx = np.random.default_rng(seed).integers(0, v.size, (n_boot, v.size))
  return v[idx].mean(1)


def _diff_independent(a, b, n_boot, seed=0) -> dict:
  """mean(a) - mean(b) for per-item values of two different item sets, CI from independent
  bootstraps of each."""
  ba, bb = _boot_means(a, n_boot, seed), _boot_means(b, n_boot, seed + 1)
  lo, hi = np.percentile(ba - bb, [2.5, 97.5])
  return {"value": float(np.mean(a) - np.mean(b)), "lo": float(lo), "hi": float(hi)}


def pairwise_kappa_groups(decisions: np.ndarray, group: np.ndarray, n_boot: int, seed: int = 0):
  """Mean pairwise (2-rater) kappa and disagreement over member pairs from the same group vs
  from different groups, with the across - within difference; items resampled jointly.
  decisions [M, N] binary, group [M]."""
  x = np.asarray(decisions, np.float64)
  m, n = x.shape
  iu = np.triu_indices(m, 1)
  same = (group[:, None] == group[None, :])[iu]

  def one(w):
    xw = x * w
    a = xw @ x.T
    s = xw.sum(1)
    tot = w.sum()
    po = (2 * a - s[:, None] - s[None, :] + tot) / tot
    p1 = (s[:, None] + s[None, :]) / (2 * tot)
    pe = p1 ** 2 + (1 - p1) ** 2
    kap = ((po - pe) / np.maximum(1 - pe, 1e-12))[iu]
    dis = (1 - po)[iu]
    return np.array([kap[same].mean(), kap[~same].mean(), dis[same].mean(), dis[~same].mean()])

  value = one(np.ones(n))
  rng = np.random.default_rng(seed)
  boots = np.stack([one(np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64))
                    for _ in range(n_boot)])
  names = ["kappa_within", "kappa_across", "D_within", "D_across"]
  out = {}
  for j, name in enumerate(names):
    lo, hi = np.percentile(boots[:, j], [2.5, 97.5])
    out[name] = {"value": float(value[j]), "lo": float(lo), "hi": float(hi)}
  for a, b, name in ((1, 0, "kappa_across_minus_within"), (3, 2, "D_across_minus_within")):
    d = boots[:, a] - boots[:, b]
    lo, hi = np.percentile(d, [2.5, 97.5])
    out[name] = {"value": float(value[a] - value[b]), "lo": float(lo), "hi": float(hi)}
  out["pairs"] = {"within": int(same.sum()), "across": int((~same).sum())}
  return out


def analyse(path: str, n_boot: int = 2000) -> dict:
  z = np.load(path, allow_pickle=False)
  info = json.loads(str(z["info"]))
  ood_names = [f"ood/{k}" for k in real_sets.OOD_SETS]

  def margins(d, h, c, sname):
    return z[f"{d}|{h}|{c}|{sname}|c"] - z[f"{d}|{h}|{c}|{sname}|r"]

  def meta(sname, key):
    return z[f"meta|{sname}|{key}"]

  len_ood = [np.concatenate([meta(s, k) for s in ood_names]) for k in ("len_c", "len_r")]
  matched = stats.length_matched(*len_ood)
  sets = {}
  for s in [f"eval/{d}" for d in real_sets.ID_SETS] + ood_names:
    lc, lr = meta(s, "len_c"), meta(s, "len_r")
    sets[s] = {"n": int(len(lc)), "length_baseline": stats.bootstrap_ci(
        stats.pair_correct(lc - lr), n_boot=n_boot), "truncated": int(meta(s, "truncated").sum())}
  sets["ood/pooled"] = {"n": int(len(len_ood[0])), "length_baseline": stats.bootstrap_ci(
      stats.pair_correct(len_ood[0] - len_ood[1]), n_boot=n_boot),
      "length_matched_n": int(matched.sum())}
  runs = {}
  for d in real_sets.ID_SETS:
    for h in ("mlp", "linear"):
      for c in ("seed", "boot", "long"):
        mid = margins(d, h, c, f"eval/{d}")
        mood = np.concatenate([margins(d, h, c, s) for s in ood_names], axis=1)
        acc_id = [stats.pair_accuracy(m)[0] for m in mid]
        acc_ood = [stats.pair_accuracy(m)[0] for m in mood]
        per_set = {s: [stats.pair_accuracy(m)[0] for m in margins(d, h, c, s)] for s in ood_names}
        item_id, item_ood = stats.item_disagreement(mid), stats.item_disagreement(mood)
        # scores of every probe response (chosen then rejected) for spread and Spearman
        sc = np.concatenate([np.concatenate([z[f"{d}|{h}|{c}|{s}|c"], z[f"{d}|{h}|{c}|{s}|r"]], 1)
                             for s in ood_names], axis=1)
        si = np.concatenate([z[f"{d}|{h}|{c}|eval/{d}|c"], z[f"{d}|{h}|{c}|eval/{d}|r"]], 1)
        both = np.concatenate([sc, si], 1)
        ref = np.r_[np.ones(sc.shape[1], bool), np.zeros(si.shape[1], bool)]
        spread = stats.standardized_spread(both, ref)
        sp = stats.spearman_matrix(sc)
        k = sp.shape[0]
        runs[f"{d}|{h}|{c}"] = {
            "acc_id": {"members": acc_id, "mean": float(np.mean(acc_id)),
                       "range": [float(min(acc_id)), float(max(acc_id))],
                       "member0": stats.bootstrap_ci(stats.pair_correct(mid[0]), n_boot=n_boot),
                       "ensemble_mean": stats.bootstrap_ci(stats.pair_correct(mid.mean(0)),
                                                           n_boot=n_boot)},
            "acc_ood": {"members": acc_ood, "mean": float(np.mean(acc_ood)),
                        "range": [float(min(acc_ood)), float(max(acc_ood))],
                        "member0": stats.bootstrap_ci(stats.pair_correct(mood[0]), n_boot=n_boot),
                        "per_set_mean": {s: float(np.mean(v)) for s, v in per_set.items()}},
            "D_id": stats.bootstrap_ci(item_id, n_boot=n_boot),
            "D_ood": stats.bootstrap_ci(item_ood, n_boot=n_boot),
            "D_ood_minus_id": _diff_independent(item_ood, item_id, n_boot),
            "D_ood_length_matched": stats.bootstrap_ci(item_ood[matched], n_boot=n_boot),
            "kappa_id": stats.fleiss_kappa((mid > 0).astype(int), n_boot=n_boot),
            "kappa_ood": stats.fleiss_kappa((mood > 0).astype(int), n_boot=n_boot),
            "kappa_ood_length_matched": stats.fleiss_kappa((mood[:, matched] > 0).astype(int),
                                                           n_boot=n_boot),
            "spread_median_ood": float(np.nanmedian(spread[ref])),
            "spread_median_id": float(np.nanmedian(spread[~ref])),
            "spread_id_minus_ood": _diff_independent(spread[~ref], spread[ref], n_boot),
            "spearman_ood_mean": float(sp[np.triu_indices(k, 1)].mean()),
            "plan": info.get(f"{d}|{h}"),
            "_spread_ood": spread[ref], "_spread_id": spread[~ref],
        }
  # linear vs MLP seed-only disagreement on the probe, paired over items
  lin_vs_mlp = {}
  for d in real_sets.ID_SETS:
    mm = np.concatenate([margins(d, "mlp", "seed", s) for s in ood_names], 1)
    ml = np.concatenate([margins(d, "linear", "seed", s) for s in ood_names], 1)
    lin_vs_mlp[d] = stats.paired_diff_ci(stats.item_disagreement(mm), stats.item_disagreement(ml),
                                         n_boot=n_boot)
  # across vs within datasets (seed-only MLP members, probe)
  across = {}
  for h in ("mlp", "linear"):
    dec = np.concatenate([np.concatenate([margins(d, h, "seed", s) for s in ood_names], 1) > 0
                          for d in real_sets.ID_SETS], 0)
    group = np.repeat(np.arange(len(real_sets.ID_SETS)), dec.shape[0] // len(real_sets.ID_SETS))
    across[h] = pairwise_kappa_groups(dec, group, n_boot)
  result = {"sets": sets, "runs": runs, "mlp_minus_linear_D_ood_seed": lin_vs_mlp,
            "across_datasets": across, "n_boot": n_boot, "K": int(z[next(
                k for k in z.files if k.endswith("|c"))].shape[0])}
  result["summary"] = summarise(result)
  return result


def summarise(r: dict) -> dict:
  """The protocol's three directional claims, each with its CI, and whether the CI shows it."""
  s = {}
  for d in real_sets.ID_SETS:
    m, lin = r["runs"][f"{d}|mlp|seed"], r["runs"][f"{d}|linear|seed"]
    bl = r["sets"][f"eval/{d}"]["length_baseline"]["value"]
    s[d] = {
        "mlp_acc_id_mean": round(m["acc_id"]["mean"], 3),
        "mlp_acc_id_range_pp": round(100 * (m["acc_id"]["range"][1] - m["acc_id"]["range"][0]), 1),
        "above_length_baseline_id": bool(m["acc_id"]["mean"] > bl), "length_baseline_id": round(bl, 3),
        "mlp_acc_ood_mean": round(m["acc_ood"]["mean"], 3),
        "D_ood_mlp": round(m["D_ood"]["value"], 3), "D_ood_linear": round(lin["D_ood"]["value"], 3),
        "D_ood_mlp_long": round(r["runs"][f"{d}|mlp|long"]["D_ood"]["value"], 3),
        "D_ood_linear_long": round(r["runs"][f"{d}|linear|long"]["D_ood"]["value"], 3),
        "mlp_minus_linear_D_ood": [round(r["mlp_minus_linear_D_ood_seed"][d][k], 3)
                                   for k in ("value", "lo", "hi")],
        "kappa_ood_mlp": [round(m["kappa_ood"][k], 3) for k in ("value", "lo", "hi")],
        "i_kappa_below_0.8": bool(m["kappa_ood"]["hi"] < 0.8),
        "i_D_ood_at_least_0.10": bool(m["D_ood"]["lo"] >= 0.10),
        "D_ood_minus_id_mlp": [round(m["D_ood_minus_id"][k], 3) for k in ("value", "lo", "hi")],
        "ii_D_ood_gt_id": bool(m["D_ood_minus_id"]["lo"] > 0),
    }
  a = r["across_datasets"]["mlp"]["kappa_across_minus_within"]
  s["iii_kappa_across_minus_within_mlp"] = [round(a[k], 3) for k in ("value", "lo", "hi")]
  s["iii_shown"] = bool(a["hi"] < 0)
  return s


def markdown(r: dict) -> str:
  lines = [f"# E-a: RM inconsistency ({r.get('size', '?')} run, K = {r['K']} members, "
           f"{r['n_boot']} bootstrap resamples)", "",
           "## Sets (length baseline = 'the longer response wins', 95% CI)", "",
           "| set | n | length baseline | truncated responses |", "|---|---|---|---|"]
  for s, v in r["sets"].items():
    lines.append(f"| {s} | {v['n']} | {ci(v['length_baseline'])} | {v.get('truncated', '')} |")
  lines += ["", "## Members: accuracy, disagreement D, Fleiss' kappa (ID = own held-out split, "
            "OOD = pooled probe)", "",
            "| dataset | head | members | ID acc mean (range) | member-0 ID acc | OOD acc mean (range) "
            "| D ID | D OOD | D OOD - ID | kappa ID | kappa OOD | D OOD len-matched | spread med ID / OOD "
            "| Spearman OOD |", "|" + "---|" * 14]
  for key, v in r["runs"].items():
    d, h, c = key.split("|")
    ai, ao = v["acc_id"], v["acc_ood"]
    lines.append(
        f"| {d} | {h} | {c} | {ai['mean']:.3f} ({ai['range'][0]:.3f}-{ai['range'][1]:.3f}) | "
        f"{ci(ai['member0'])} | {ao['mean']:.3f} ({ao['range'][0]:.3f}-{ao['range'][1]:.3f}) | "
        f"{ci(v['D_id'])} | {ci(v['D_ood'])} | {ci(v['D_ood_minus_id'])} | {ci(v['kappa_id'])} | "
        f"{ci(v['kappa_ood'])} | {ci(v['D_ood_length_matched'])} | "
        f"{v['spread_median_id']:.3f} / {v['spread_median_ood']:.3f} | {v['spearman_ood_mean']:.3f} |")
  lines += ["", "## Seed-only D on the probe: MLP minus linear (paired over items)", "",
            "| dataset | D(mlp) - D(linear) |", "|---|---|"]
  for d, v in r["mlp_minus_linear_D_ood_seed"].items():
    lines.append(f"| {d} | {ci(v)} |")
  lines += ["", "## Within vs across datasets (seed-only members, probe; mean pairwise kappa / D)", "",
            "| head | kappa within | kappa across | across - within | D within | D across | "
            "across - within |", "|---|---|---|---|---|---|---|"]
  for h, v in r["across_datasets"].items():
    lines.append(f"| {h} | {ci(v['kappa_within'])} | {ci(v['kappa_across'])} | "
                 f"{ci(v['kappa_across_minus_within'])} | {ci(v['D_within'])} | "
                 f"{ci(v['D_across'])} | {ci(v['D_across_minus_within'])} |")
  lines += ["", "## Claims", "", "```", json.dumps(r["summary"], indent=1), "```", ""]
  return "\n".join(lines)


def figure(r: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  names = real_sets.ID_SETS
  x = np.arange(len(names))
  ax = axes[0]
  for j, (h, c, col) in enumerate((("mlp", "seed", "C0"), ("mlp", "boot", "C1"),
                                   ("linear", "seed", "C2"), ("linear", "boot", "C3"))):
    for part, dx, mk in (("D_id", -0.3, "o"), ("D_ood", 0.0, "s")):
      v = [r["runs"][f"{d}|{h}|{c}"][part] for d in names]
      val = np.array([u["value"] for u in v])
      err = np.array([[u["value"] - u["lo"], u["hi"] - u["value"]] for u in v]).T
      ax.errorbar(x + dx + 0.07 * j, val, yerr=err, fmt=mk, color=col, capsize=2,
                  label=f"{h}/{c} {'ID' if part == 'D_id' else 'OOD'}")
  ax.set_xticks(x, names, rotation=15)
  ax.set_ylabel("pairwise decision disagreement D (95% CI)")
  ax.set_title("D: ID (circles) vs OOD probe (squares)")
  ax.legend(fontsize=6, ncol=2)
  ax = axes[1]
  for j, d in enumerate(names):
    v = r["runs"][f"{d}|mlp|seed"]
    ax.hist(v["_spread_ood"][np.isfinite(v["_spread_ood"])], bins=40, histtype="step", density=True,
            color=f"C{j}", label=f"{d} OOD")
    ax.hist(v["_spread_id"][np.isfinite(v["_spread_id"])], bins=40, histtype="step", density=True,
            color=f"C{j}", linestyle="--", label=f"{d} ID")
  ax.set_xlabel("per-response std of standardised member scores (seed-only MLP)")
  ax.set_title("score spread across seeds (Fig. 1 view)")
  ax.legend(fontsize=6)
  ax = axes[2]
  for j, h in enumerate(("mlp", "linear")):
    v = r["across_datasets"][h]
    for k, (name, lab) in enumerate((("kappa_within", "within"), ("kappa_across", "across"))):
      u = v[name]
      ax.errorbar([2 * j + k], [u["value"]], yerr=[[u["value"] - u["lo"]], [u["hi"] - u["value"]]],
                  fmt="o", capsize=3, color=f"C{k}")
  ax.set_xticks([0, 1, 2, 3], ["mlp within", "mlp across", "linear within", "linear across"])
  ax.set_ylabel("mean pairwise kappa on the probe (95% CI)")
  ax.set_title("agreement within vs across training sets")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(r: dict, out_dir: str) -> None:
  report_files.write(r, out_dir, "inconsistency", markdown, figure)
