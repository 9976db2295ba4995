"""Compare K reward models on the same preference pairs: `compare(...)` -> one JSON-able report,
`write_report(report, out_dir)` -> compare.json, compare.md, compare.png (`rmjax compare`).

Per scope (each set; the in-distribution sets pooled and the OOD sets pooled, when more than
one), and again on the scope's length-matched pairs (`stats.length_matched`, where "longer wins" is near chance):
  - each model's accuracy (ties 0.5) with a 95% bootstrap interval and its tie count, and the
    paired difference of every two models (items resampled jointly);
  - the length baseline ("the longer response wins");
  - how the models disagree: mean pairwise decision disagreement (+ the [K, K] matrix), Fleiss'
    kappa of the decisions r(chosen) > r(rejected), the Spearman correlation of the models'
    scores over every response of the scope, and the mean per-response spread of the scores
    across models after standardising each model on the pooled ID responses (reward scales are
    arbitrary per model; on a common pool spreads compare across scopes: ID vs OOD).
"""

from __future__ import annotations

import itertools
import json
import math
import os

import numpy as np

from rmjax.eval import stats

ID_POOLED, OOD_POOLED = "ID (pooled)", "OOD (pooled)"


def _check(models: dict, lengths: dict) -> list:
  names = list(models)
  if len(names) < 2:
    raise ValueError(f"compare needs at least 2 models, got {len(names)}")
  sets = list(lengths)
  for name, per_set in models.items():
    for s in sets:
      if s not in per_set:
        raise ValueError(f"model {name!r} has no scores for set {s!r}")
      n = len(lengths[s][0])
      if not len(per_set[s]["chosen"]) == len(per_set[s]["rejected"]) == len(lengths[s][1]) == n:
        raise ValueError(f"model {name!r}, set {s!r}: rewards and lengths differ in length")
  return names


def _scope(names, c, r, len_c, len_r, spread, n_boot, seed) -> dict:
  """Every statistic of one scope from rewards c, r [K, N], lengths [N] and the per-response
  standardised spread [2N] (chosen then rejected)."""
  n = c.shape[1]
  if n == 0:
    return {"n": 0}
  m = c - r
  kw = dict(n_boot=n_boot, seed=seed)
  correct = stats.pair_correct(m)
  acc = {name: dict(stats.bootstrap_ci(correct[k], **kw), ties=int(np.sum(m[k] == 0)))
         for k, name in enumerate(names)}
  diffs = {f"{names[i]} - {names[j]}": stats.paired_diff_ci(correct[i], correct[j], **kw)
           for i, j in itertools.combinations(range(len(names)), 2)}
  rho = stats.spearman_matrix(np.concatenate([c, r], axis=1))
  finite = spread[np.isfinite(spread)]
  return {"n": n, "accuracy": acc, "accuracy_diff": diffs,
          "length_baseline": stats.bootstrap_ci(stats.pair_correct(len_c - len_r), **kw),
          "disagreement": stats.disagreement(m, **kw),
          "fleiss_kappa": stats.fleiss_kappa((m > 0).astype(int), **kw),
          "spearman": {"matrix": rho.tolist(),
                       "mean": float(np.nanmean(rho[~np.eye(len(names), dtype=bool)]))
                       if np.isfinite(rho).any() else None},
          "spread": stats.bootstrap_ci(finite, **kw)}


def compare(models: dict, lengths: dict, id_sets=None, ood_sets=None, tol: float = 0.2,
            n_boot: int = 2000, seed: int = 0) -> dict:
  """The comparison report (module docstring) of models {name: {set: {"chosen": [N],
  "rejected": [N]}}} (rewards of the same N pairs per set, in the same order for every model),
  lengths {set: (len_chosen [N], len_rejected [N])} in characters; sets not in `ood_sets` are
  ID unless `id_sets` names them."""
  names = _check(models, lengths)
  ood = set(ood_sets or ())
  id_sets = [s for s in lengths if (s in id_sets if id_sets is not None else s not in ood)]
  ood_list = [s for s in lengths if s in ood]
  c = {s: np.stack([np.asarray(models[k][s]["chosen"], np.float64) for k in names]) for s in lengths}
  r = {s: np.stack([np.asarray(models[k][s]["rejected"], np.float64) for k in names]) for s in lengths}
  lc = {s: np.asarray(lengths[s][0], np.float64) for s in lengths}
  lr = {s: np.asarray(lengths[s][1], np.float64) for s in lengths}
  pool = id_sets or list(lengths)  # the common reference for standardising each model
  every = np.concatenate([np.concatenate([c[s], r[s]], 1) for s in lengths], 1)
  ref = np.concatenate([np.full(2 * lc[s].size, s in pool) for s in lengths])
  flat_spread = stats.standardized_spread(every, ref)
  sp_c, sp_r, start = {}, {}, 0  # per set: the spread of each chosen / rejected response [N]
  for s in lengths:
    n = lc[s].size
    sp_c[s], sp_r[s] = flat_spread[start:start + n], flat_spread[start + n:start + 2 * n]
    start += 2 * n
  scopes, pools = {s: [s] for s in lengths}, {}
  for label, pooled, members in (("ID", ID_POOLED, id_sets), ("OOD", OOD_POOLED, ood_list)):
    if members:  # one set is its own pool
      pools[label] = pooled if len(members) > 1 else members[0]
      scopes[pools[label]] = members
  report = {"models": names, "sets": {s: {"n": int(lc[s].size), "ood": s in ood} for s in lengths},
            "id_sets": id_sets, "ood_sets": ood_list, "length_tol": tol, "n_boot": n_boot,
            "reference_pool": pool, "pools": pools, "scopes": {}, "length_matched": {}}
  for scope, members in scopes.items():
    sc, sr, slc, slr, spc, spr = (np.concatenate([d[s] for s in members], axis=-1)
                                  for d in (c, r, lc, lr, sp_c, sp_r))
    for key, keep in (("scopes", np.ones(slc.size, bool)),
                      ("length_matched", stats.length_matched(slc, slr, tol))):
      report[key][scope] = _scope(names, sc[:, keep], sr[:, keep], slc[keep], slr[keep],
                                  np.concatenate([spc[keep], spr[keep]]), n_boot, seed)
  return report


def strict_json(obj):
  """`obj` with NaN / inf as None and numpy scalars as Python numbers (strict JSON)."""
  if isinstance(obj, dict):
    return {str(k): strict_json(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [strict_json(v) for v in obj]
  if isinstance(obj, (np.integer, np.bool_)):
    return obj.item()
  if isinstance(obj, (float, np.floating)):
    return float(obj) if math.isfinite(obj) else None
  return obj


def _ci(d, digits: int = 3) -> str:
  if not isinstance(d, dict) or d.get("value") is None or not math.isfinite(d["value"]):
    return "-"
  if d.get("lo") is None or not math.isfinite(d["lo"]):
    return f"{d['value']:.{digits}f}"
  return f"{d['value']:.{digits}f} [{d['lo']:.{digits}f}, {d['hi']:.{digits}f}]"


def _tables(report: dict, key: str) -> list:
  names = report["models"]
  lines = ["| scope | n | " + " | ".join(names) + " | longer wins |",
           "|---|---:|" + "---:|" * (len(names) + 1)]
  for scope, st in report[key].items():
    if not st["n"]:
      lines.append(f"| {scope} | 0 |" + " - |" * (len(names) + 1))
      continue
    accs = [f"{_ci(st['accuracy'][m])}" + (f" ({st['accuracy'][m]['ties']} ties)"
                                           if st["accuracy"][m]["ties"] else "") for m in names]
    lines.append(f"| {scope} | {st['n']} | " + " | ".join(accs) + f" | {_ci(st['length_baseline'])} |")
  lines += ["", "| scope | disagreement | Fleiss' kappa | mean Spearman | standardised spread |",
            "|---|---:|---:|---:|---:|"]
  for scope, st in report[key].items():
    if st["n"]:
      rho = st["spearman"]["mean"]
      lines.append(f"| {scope} | {_ci(st['disagreement'])} | {_ci(st['fleiss_kappa'])} | "
                   f"{'-' if rho is None or not math.isfinite(rho) else f'{rho:.3f}'} | "
                   f"{_ci(st['spread'])} |")
  return lines


def markdown(report: dict) -> str:
  """compare.md: accuracy (95% CI, ties 0.5) per model per scope beside the length baseline,
  then agreement between the models; all pairs, then the length-matched pairs; then the paired
  accuracy differences."""
  ood = ", ".join(report["ood_sets"]) or "none"
  lines = [f"# Compare: {', '.join(report['models'])}", "",
           f"Accuracy counts a tie as 0.5; [95% bootstrap CI over pairs, {report['n_boot']} "
           f"resamples]. OOD sets: {ood}. Spread: std across models of each response's score, "
           f"each model standardised on the responses of {', '.join(report['reference_pool'])}.",
           "", "## All pairs", ""]
  lines += _tables(report, "scopes")
  lines += ["", f"## Length-matched pairs (|len_c / len_r - 1| < {report['length_tol']})", ""]
  lines += _tables(report, "length_matched")
  lines += ["", "## Paired accuracy differences (all pairs)", "", "| scope | difference | value |",
            "|---|---|---:|"]
  for scope, st in report["scopes"].items():
    lines += [f"| {scope} | {k} | {_ci(v)} |" for k, v in st.get("accuracy_diff", {}).items()]
  return "\n".join(lines) + "\n"


def _err(d) -> tuple:
  v, lo, hi = (d.get(k) if isinstance(d, dict) else None for k in ("value", "lo", "hi"))
  if v is None or not math.isfinite(v):
    return np.nan, 0.0, 0.0
  ok = lo is not None and math.isfinite(lo)
  return v, v - lo if ok else 0.0, hi - v if ok else 0.0


def write_png(path: str, report: dict) -> None:
  """compare.png: accuracy per model per scope with CI error bars beside the length baseline;
  decision disagreement on the ID vs the OOD pools (all pairs and length-matched)."""
  import matplotlib  # pylint: disable=g-import-not-at-top  (slow import, only when plotting)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names, scopes = report["models"], [s for s, st in report["scopes"].items() if st["n"]]
  fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.3 * len(scopes) * (len(names) + 1) / 2 + 4), 4.2),
                           gridspec_kw={"width_ratios": [3, 1]})
  ax, width, x = axes[0], 0.8 / (len(names) + 1), np.arange(len(scopes))
  for k, name in enumerate(names + ["longer wins"]):
    vals = [_err(report["scopes"][s]["accuracy"][name] if k < len(names)
                 else report["scopes"][s]["length_baseline"]) for s in scopes]
    ax.bar(x + (k - len(names) / 2) * width, [v[0] for v in vals], width,
           yerr=np.array([[v[1] for v in vals], [v[2] for v in vals]]), capsize=2, label=name,
           color="0.6" if k == len(names) else None, hatch="//" if k == len(names) else None)
  ax.axhline(0.5, color="k", ls=":", lw=0.8)
  ax.set_xticks(x, [f"{s[-28:]}\n(n={report['scopes'][s]['n']})" for s in scopes], fontsize=7,
                rotation=20, ha="right")
  ax.set_ylim(0, 1)
  ax.set_ylabel("pairwise accuracy (ties 0.5), 95% CI")
  ax.set_title("accuracy per model vs the length baseline")
  ax.legend(fontsize=7)
  ax = axes[1]
  pools = report["pools"]
  for j, (key, label) in enumerate((("scopes", "all pairs"), ("length_matched", "length-matched"))):
    vals = [_err(report[key][p].get("disagreement")) for p in pools.values()]
    ax.bar(np.arange(len(pools)) + (j - 0.5) * 0.4, [v[0] for v in vals], 0.4, label=label,
           yerr=np.array([[v[1] for v in vals], [v[2] for v in vals]]), capsize=3)
  ax.set_xticks(np.arange(len(pools)), list(pools))
  ax.set_ylabel("P[two models order a pair differently]")
  ax.set_title("decision disagreement")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100, format="png")  # path may be a temp name
  plt.close(fig)


def _write_text(path: str, text: str) -> None:
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def _replace(path: str, write) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def write_report(report: dict, out_dir: str) -> dict:
  """compare.json (strict JSON: NaN as null), compare.md and compare.png under out_dir, each
  written to a temporary file and renamed; returns {'json', 'md', 'png'} paths."""
  os.makedirs(out_dir, exist_ok=True)
  files = {k: os.path.join(out_dir, f"compare.{k}") for k in ("json", "md", "png")}
  clean = strict_json(dict(report, files=files))
  text = json.dumps(clean, indent=2, allow_nan=False) + "\n"
  _replace(files["png"], lambda p: write_png(p, clean))
  for key, body in (("md", markdown(clean)), ("json", text)):
    _replace(files[key], lambda p, body=body: _write_text(p, body))
  return files
