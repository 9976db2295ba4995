"""E-c's statistics (`experiments.armorm_gate`): accuracies and paired differences with 95% CIs,
gate weights per context, verbosity correlations; JSON, Markdown and a figure.

Each model's per-item correctness (1 / 0.5 tie / 0) is averaged over its runs (9 for the gate:
3 splits x 3 seeds; 3 for split-level baselines), then items are bootstrapped (2,000 resamples),
jointly for paired differences. "mixed/all" pools the in-distribution held-out sets.
"""

from __future__ import annotations

import json

import numpy as np

from experiments.armorm_gate import CONTEXT_OBJECTIVE, NAMES, SPLITS, GATE_SEEDS
from experiments import report_files
from experiments.report_files import ci
from rmjax.eval import stats

REPORT_SETS = ("mixed/all", "ood/chat_hard", "ood/rm_bench")
BASELINES = ("best_single(val)", "bt_linear", "bt_mlp", "uniform", "gated(no T)", "oracle_router")


def _per_item(res, model, setname):
  mixed = sorted(k for k in res["correct"][model] if k.startswith("mixed/"))
  if setname == "mixed/all":
    runs = [np.concatenate(parts) for parts in zip(*(res["correct"][model][k] for k in mixed))]
  else:
    runs = res["correct"][model][setname]
  return np.mean(runs, axis=0), np.stack(runs)


def analyse(res: dict, data: dict, n_boot: int = 2000) -> dict:
  sets = sorted(next(iter(res["correct"].values())).keys()) + ["mixed/all"]
  models = list(res["correct"])
  lengths = {}
  for s in sets:
    if s == "mixed/all":
      parts = [data["eval"][k] for k in sorted(data["eval"])]
      lc, lr = (np.concatenate([p[x] for p in parts]) for x in ("len_c", "len_r"))
    else:
      part, name = s.split("/")
      a = data["eval" if part == "mixed" else "ood"][name]
      lc, lr = a["len_c"], a["len_r"]
    lengths[s] = (lc, lr)
  acc = {}
  for m in models:
    acc[m] = {}
    for s in sets:
      item, runs = _per_item(res, m, s)
      acc[m][s] = dict(stats.bootstrap_ci(item, n_boot=n_boot),
                       runs=[float(r.mean()) for r in runs], n=int(item.size))
  baseline = {s: stats.bootstrap_ci(stats.pair_correct(lengths[s][0] - lengths[s][1]), n_boot=n_boot)
              for s in sets}
  n_splits = len(res.get("splits", SPLITS))
  n_seeds = len(res.get("gate_seeds", GATE_SEEDS))
  diffs = {}
  g_item = {s: _per_item(res, "gated(T)", s) for s in sets}
  for b in BASELINES:
    diffs[b] = {}
    for s in sets:
      gi, gruns = g_item[s]
      bi, bruns = _per_item(res, b, s)
      d = stats.paired_diff_ci(gi, bi, n_boot=n_boot)
      # per split: the gate's mean over its seeds vs the baseline of that split
      per_split = []
      for k in range(n_splits):
        gk = gruns[k * n_seeds:(k + 1) * n_seeds].mean()
        bk = bruns[k * n_seeds:(k + 1) * n_seeds].mean() if len(bruns) > n_splits else bruns[k].mean()
        per_split.append(float(gk - bk))
      diffs[b][s] = dict(d, per_split=per_split)
  gate = {k: dict(zip(NAMES, np.mean(v, axis=0).tolist())) for k, v in res["gate_mean"].items()}
  top = {k: max(v, key=v.get) for k, v in gate.items()}
  known = {}
  for ctx, obj in CONTEXT_OBJECTIVE.items():
    key = f"mixed/{ctx}"
    if key in top:
      known[ctx] = {"top": top[key], "expected": obj, "match": top[key] == obj}
  spear = {}
  for when in ("before", "after"):
    vals = [r[f"spearman_verbosity_{when}"] for r in res["runs"]]
    spear[when] = {n: float(np.mean([v[n] for v in vals])) for n in NAMES}
  out = {"accuracy": acc, "length_baseline": baseline, "gated_minus": diffs, "gate_weights": gate,
         "top_objective": top, "context_match": known, "spearman_with_verbosity": spear,
         "runs": res["runs"], "n_boot": n_boot, "splits": n_splits, "gate_seeds": n_seeds}
  out["summary"] = summarise(out)
  return out


def summarise(r: dict) -> dict:
  s = {}
  for b in ("best_single(val)", "bt_linear", "bt_mlp"):
    for st in REPORT_SETS:
      d = r["gated_minus"][b][st]
      s[f"gated-{b} {st}"] = [round(d["value"], 3), round(d["lo"], 3), round(d["hi"], 3),
                              f"{sum(x > 0 for x in d['per_split'])}/{len(d['per_split'])} splits > 0"]
  for m in ("gated(T)", "best_single(val)", "bt_linear", "bt_mlp"):
    s[f"acc {m}"] = {st: round(r["accuracy"][m][st]["value"], 3) for st in REPORT_SETS}
  s["length_baseline"] = {st: round(r["length_baseline"][st]["value"], 3) for st in REPORT_SETS}
  s["context_match"] = f"{sum(v['match'] for v in r['context_match'].values())}/{len(r['context_match'])}"
  d1 = r["gated_minus"]["best_single(val)"]["mixed/all"]
  d2 = r["gated_minus"]["bt_linear"]["mixed/all"]
  s["in_direction"] = bool(d1["lo"] > 0 and d2["lo"] > 0 and  # and a majority of the splits
                           2 * sum(x > 0 for x in d1["per_split"]) > len(d1["per_split"]) and
                           2 * sum(x > 0 for x in d2["per_split"]) > len(d2["per_split"]))
  return s


def markdown(r: dict) -> str:
  models = list(r["accuracy"])
  sets = list(next(iter(r["accuracy"].values())).keys())
  lines = [f"# E-c: ArmoRM's gate ({r.get('size', '?')} run; {r.get('splits', len(SPLITS))} splits x "
           f"{r.get('gate_seeds', len(GATE_SEEDS))} gate seeds; {r['n_boot']} bootstrap resamples)", "",
           "## Accuracy (per-item correctness averaged over runs; 95% CI over items)", "",
           "| model | " + " | ".join(f"{s} (n={r['accuracy'][models[0]][s]['n']})" for s in sets) + " |",
           "|---|" + "---|" * len(sets)]
  for m in models:
    lines.append(f"| {m} | " + " | ".join(ci(r["accuracy"][m][s]) for s in sets) + " |")
  lines.append("| longer wins | " + " | ".join(ci(r["length_baseline"][s]) for s in sets) + " |")
  lines += ["", "## gated(T) minus each baseline (paired over items; per-split differences)", "",
            "| baseline | " + " | ".join(REPORT_SETS) + " |", "|---|" + "---|" * len(REPORT_SETS)]
  for b, v in r["gated_minus"].items():
    lines.append(f"| {b} | " + " | ".join(
        f"{ci(v[s])}; splits {', '.join(f'{x:+.3f}' for x in v[s]['per_split'])}"
        for s in REPORT_SETS) + " |")
  keys = list(r["gate_weights"])
  lines += ["", "## Mean gate weight per context (gated(T), 9 runs)", "",
            "| objective | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
  for n in NAMES:
    lines.append(f"| {n} | " + " | ".join(f"{r['gate_weights'][k][n]:.3f}" for k in keys) + " |")
  lines += ["", "Top objective per known context: " + "; ".join(
      f"{c}: {v['top']} (expected {v['expected']}{', match' if v['match'] else ''})"
      for c, v in r["context_match"].items()), "",
      "## Spearman with verbosity, before / after T (mean over splits)", "",
      "| objective | before | after |", "|---|---|---|"]
  for n in NAMES:
    lines.append(f"| {n} | {r['spearman_with_verbosity']['before'][n]:.3f} | "
                 f"{r['spearman_with_verbosity']['after'][n]:.3f} |")
  lines += ["", "## Per split", ""]
  for run in r["runs"]:
    lines.append(f"- split {run['split']}: best single on validation = {run['best_single_val']}; "
                 f"oracle routes {run['oracle']}; BT head steps {run['bt_steps']}")
  lines += ["", "## Summary", "", "```", json.dumps(r["summary"], indent=1), "```", ""]
  return "\n".join(lines)


def figure(r: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(15, 4.8), gridspec_kw={"width_ratios": [1.3, 1]})
  ax = axes[0]
  models = list(r["accuracy"])
  x = np.arange(len(REPORT_SETS))
  wdt = 0.8 / (len(models) + 1)
  for j, m in enumerate(models):
    v = [r["accuracy"][m][s] for s in REPORT_SETS]
    val = np.array([u["value"] for u in v])
    err = np.array([[u["value"] - u["lo"], u["hi"] - u["value"]] for u in v]).T
    ax.bar(x + j * wdt, val, wdt, yerr=err, capsize=2, label=m)
  bl = [r["length_baseline"][s]["value"] for s in REPORT_SETS]
  ax.bar(x + len(models) * wdt, bl, wdt, color="grey", label="longer wins")
  ax.axhline(0.5, color="k", lw=0.6, ls=":")
  ax.set_xticks(x + 0.4, REPORT_SETS)
  ax.set_ylim(0.2, 1.0)
  ax.set_ylabel("pair accuracy (95% CI)")
  ax.legend(fontsize=7, ncol=2)
  ax.set_title("E-c: gate vs baselines (frozen SmolLM2-135M features)")
  ax = axes[1]
  keys = list(r["gate_weights"])
  mat = np.array([[r["gate_weights"][k][n] for k in keys] for n in NAMES])
  im = ax.imshow(mat, aspect="auto", cmap="viridis")
  ax.set_yticks(range(len(NAMES)), NAMES, fontsize=7)
  ax.set_xticks(range(len(keys)), [k.replace("mixed/", "") for k in keys], rotation=40, fontsize=7,
                ha="right")
  fig.colorbar(im, ax=ax)
  ax.set_title("mean gate weight per context")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(r: dict, out_dir: str) -> None:
  report_files.write(r, out_dir, "armorm_gate", markdown, figure)
