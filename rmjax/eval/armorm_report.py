"""ArmoRM evaluation: gated score vs every single objective and the uniform mixture, per-objective
accuracies, mean gate weight per prompt subset, and the plots (PNG, Agg backend) in workdir/eval.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from rmjax.eval.metrics import pair_report


def objective_accuracies(obj_c, obj_r, names: Sequence[str]) -> dict:
  """Per-objective pairwise accuracy (strict >) from [N, O] objective scores of both sides."""
  obj_c, obj_r = np.asarray(obj_c), np.asarray(obj_r)
  return {n: float(np.mean(obj_c[:, j] > obj_r[:, j])) for j, n in enumerate(names)}


def gate_by_subset(gate, subsets, names: Sequence[str]) -> dict:
  """{subset: {objective: mean gate weight}} (gate [N, O])."""
  subsets = np.asarray([s or "all" for s in subsets])
  return {s: dict(zip(names, map(float, np.asarray(gate)[subsets == s].mean(0))))
          for s in sorted(set(subsets))}


def pair_eval(heads, head_params, arrays: dict, pairs, names: Sequence[str]) -> dict:
  """Held-out pairs from embeddings (hc, hr, hx): accuracy of the gated score, of each single
  objective (raw r and verbosity-adjusted rT), of uniform mixtures, and gate weights by subset."""
  out = {}
  full_c = heads.apply({"params": head_params}, arrays["hc"], arrays["hx"])
  full_r = heads.apply({"params": head_params}, arrays["hr"], arrays["hx"])
  sc, sr = np.asarray(full_c["reward"]), np.asarray(full_r["reward"])
  rc, rr = np.asarray(full_c["objectives"]), np.asarray(full_r["objectives"])
  ac, ar = np.asarray(full_c["adjusted"]), np.asarray(full_r["adjusted"])
  subsets = [p.subset for p in pairs]
  rep = pair_report(sc, sr, subsets, [len(p.chosen) for p in pairs], [len(p.rejected) for p in pairs])
  out["accuracy"] = float(rep["accuracy"])
  out["report"] = rep
  out["objective_accuracy"] = objective_accuracies(rc, rr, names)
  out["adjusted_objective_accuracy"] = objective_accuracies(ac, ar, names)
  singles = list(out["objective_accuracy"].values()) + list(out["adjusted_objective_accuracy"].values())
  out["best_single_accuracy"] = float(max(singles))
  out["uniform_accuracy"] = float(max(np.mean(rc.mean(1) > rr.mean(1)), np.mean(ac.mean(1) > ar.mean(1))))
  out["gate_by_subset"] = gate_by_subset(np.asarray(full_c["gate"]), subsets, names)
  out["gate_beats_best_single"] = out["accuracy"] > out["best_single_accuracy"]
  out["gate_beats_uniform"] = out["accuracy"] > out["uniform_accuracy"]
  return out


def plots(directory: str, ev: dict, decor: dict) -> list:
  """gate_by_subset.png (mean gate weight per subset and objective) and verbosity.png
  (Spearman with the verbosity objective before / after T). Returns the written paths."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  os.makedirs(directory, exist_ok=True)
  paths = []
  g = ev["gate_by_subset"]
  subsets, names = list(g), list(next(iter(g.values())))
  fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(names), 0.8 + 0.5 * len(subsets)))
  mat = np.array([[g[s][n] for n in names] for s in subsets])
  im = ax.imshow(mat, cmap="viridis", aspect="auto")
  ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
  ax.set_yticks(range(len(subsets)), subsets)
  for i in range(len(subsets)):
    for j in range(len(names)):
      ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", color="w", fontsize=7)
  ax.set_title("mean gate weight by prompt subset")
  fig.colorbar(im, ax=ax)
  fig.tight_layout()
  paths.append(os.path.join(directory, "gate_by_subset.png"))
  fig.savefig(paths[-1], dpi=100)
  plt.close(fig)
  names = list(decor["spearman_before"])
  x = np.arange(len(names))
  fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(names), 3.2))
  ax.bar(x - 0.2, [decor["spearman_before"][n] for n in names], 0.4, label="before T")
  ax.bar(x + 0.2, [decor["spearman_after"][n] for n in names], 0.4, label="after T")
  ax.axhline(0.03, color="k", ls="--", lw=0.8)
  ax.set_xticks(x, names, rotation=45, ha="right")
  ax.set_ylabel(f"Spearman with {decor['verbosity']}")
  ax.legend()
  fig.tight_layout()
  paths.append(os.path.join(directory, "verbosity.png"))
  fig.savefig(paths[-1], dpi=100)
  plt.close(fig)
  with open(os.path.join(directory, "armorm_eval.json"), "w") as f:
    json.dump(ev, f, indent=2, default=float)
  return paths
