"""The files `rmjax eval` leaves for people to read, for every reward-model kind: the report JSON
(written atomically), a PNG (accuracy per subset beside the length baseline, the reward-margin
histogram, the calibration curve, and per-objective accuracy when the model has objectives) and
a Markdown summary (accuracy tables and the n accounting). Names come from the whole data spec,
so two specs never share a file (`plain.jsonl` and `plain.jsonl.gz` used to both write
plain.json). ArmoRM's gate/verbosity plots stay in `rmjax.eval.armorm_report`.
"""

from __future__ import annotations

import hashlib
import os
import re

import numpy as np

from rmjax.checkpoints.workdir import write_json_atomic


def report_name(spec: str) -> str:
  """A file-name-safe, collision-free stem for a data spec: its last path component (kind and
  options kept, unsafe characters as '_') plus 8 hex digits of the whole spec's sha256."""
  spec = str(spec)
  kind, sep, rest = spec.partition(":")
  tail = rest if sep and "/" not in kind else spec
  base = tail.rstrip("/").rsplit("/", 1)[-1] or "eval"
  if sep and "/" not in kind:
    base = f"{kind}_{base}"
  base = re.sub(r"[^A-Za-z0-9._=-]+", "_", base).strip("._") or "eval"
  return f"{base[:80]}-{hashlib.sha256(spec.encode('utf-8')).hexdigest()[:8]}"


def _subset_rows(report: dict) -> list:
  """[(name, n, accuracy, length baseline)]: 'overall' first, then each subset."""
  rows = [("overall", report["n"], report["accuracy"], report.get("length_baseline_accuracy"))]
  base = report.get("length_baseline_per_subset", {})
  for s, acc in report.get("per_subset", {}).items():
    rows.append((s, report["per_subset_n"][s], acc, base.get(s)))
  return rows


def write_png(path: str, report: dict, margins) -> str:
  """The figure: accuracy per subset beside the length baseline, the margin (r_c - r_r)
  histogram, the calibration curve (from report['calibration']) and, for multi-objective
  models, each objective's accuracy."""
  import matplotlib  # pylint: disable=g-import-not-at-top  (slow import, only when plotting)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  objectives = report.get("objective_accuracy") or {}
  panels = 4 if objectives else 3
  fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 4.0))
  rows = _subset_rows(report)
  x = np.arange(len(rows))
  ax = axes[0]
  ax.bar(x - 0.2, [r[2] for r in rows], 0.4, label="reward model")
  ax.bar(x + 0.2, [np.nan if r[3] is None else r[3] for r in rows], 0.4, label="longer wins")
  ax.axhline(0.5, color="k", ls=":", lw=0.8)
  ax.set_xticks(x, [f"{r[0]}\n(n={r[1]})" for r in rows], rotation=30, ha="right", fontsize=7)
  ax.set_ylim(0, 1)
  ax.set_ylabel("pairwise accuracy")
  ax.set_title("accuracy vs length baseline")
  ax.legend(fontsize=7)
  ax = axes[1]
  margins = np.asarray(margins, np.float64)
  ax.hist(margins, bins=min(40, max(5, margins.size // 5)), color="tab:blue", alpha=0.8)
  ax.axvline(0.0, color="k", lw=0.8)
  ax.set_xlabel("reward margin r(chosen) - r(rejected)")
  ax.set_ylabel("pairs")
  ax.set_title(f"margins (mean {report['margin']:.3f})")
  ax = axes[2]
  cal = report.get("calibration", {})
  ax.plot([0.5, 1], [0.5, 1], "k--", lw=0.8, label="perfect")
  ax.plot(cal.get("confidence", []), cal.get("accuracy", []), "o-", label="model")
  ax.set_xlim(0.5, 1)
  ax.set_ylim(0, 1)
  ax.set_xlabel("confidence max(p, 1-p), p = sigmoid(margin)")
  ax.set_ylabel("observed accuracy")
  ax.set_title(f"calibration (ECE {report['ece']:.3f})")
  ax.legend(fontsize=7)
  if objectives:
    ax = axes[3]
    names = list(objectives)
    ax.bar(range(len(names)), [objectives[n] for n in names])
    ax.axhline(report["accuracy"], color="tab:red", lw=1, label="model score")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_title("accuracy of each objective alone")
    ax.legend(fontsize=7)
  fig.suptitle(f"{report.get('data', '')} (step {report.get('step')})", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def _fmt(v):
  if v is None:
    return "-"
  return f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown(report: dict) -> str:
  """The summary: accuracy overall and per subset beside the length baseline, the accounting
  (n_in = n_scored + dropped), and the model-kind extras (objectives, ensemble uncertainty)."""
  lines = [f"# Eval: {report.get('data', '')}", "",
           f"Model: {report.get('model', '')}, step {report.get('step')}; "
           f"ECE {_fmt(report['ece'])}, mean margin {_fmt(report['margin'])}.", "",
           "| subset | n | accuracy | length baseline |", "|---|---:|---:|---:|"]
  lines += [f"| {s} | {n} | {_fmt(a)} | {_fmt(b)} |" for s, n, a, b in _subset_rows(report)]
  acc = report.get("accounting", {})
  lines += ["", "## Accounting", "", "| count | n |", "|---|---:|"]
  lines += [f"| {k} | {'n/a' if acc[k] is None else acc[k]} |"
            for k in ("n_in", "n_scored", "n_empty_response", "n_truncated") if k in acc]
  lines += [f"| dropped: {k} | {v} |" for k, v in sorted(acc.get("n_dropped", {}).items())]
  for key, title in (("rewardbench", "RewardBench sections"),
                     ("objective_accuracy", "Accuracy of each objective alone"),
                     ("uncertainty", "Ensemble uncertainty")):
    if isinstance(report.get(key), dict):
      lines += ["", f"## {title}", "", "| name | value |", "|---|---:|"]
      lines += [f"| {k} | {_fmt(v)} |" for k, v in report[key].items()
                if isinstance(v, (int, float)) or v is None]
  return "\n".join(lines) + "\n"


def write_report_files(out_dir: str, spec: str, report: dict, margins) -> dict:
  """Writes <name>.json (atomic), <name>.png and <name>.md under out_dir for data `spec`;
  returns {'json', 'png', 'md'} paths (also stored in the JSON under 'files')."""
  os.makedirs(out_dir, exist_ok=True)
  stem = os.path.join(out_dir, report_name(spec))
  files = {"json": stem + ".json", "png": stem + ".png", "md": stem + ".md"}
  write_png(files["png"], report, margins)
  with open(files["md"] + ".tmp", "w") as f:
    f.write(markdown(report))
  os.replace(files["md"] + ".tmp", files["md"])
  write_json_atomic(files["json"], dict(report, files=files))
  return files
