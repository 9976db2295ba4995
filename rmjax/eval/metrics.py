"""Pair-evaluation metrics: accuracy overall and per subset, RewardBench sections, calibration,
and the length baseline that every accuracy should be read against."""

from __future__ import annotations

from collections import defaultdict
from typing import Optional, Sequence

import numpy as np

from rmjax.eval.stats import pair_correct

# allenai/reward-bench EXAMPLE_COUNTS / SUBSET_MAPPING (official constants, see ALGORITHMS.md 5.1)
REWARDBENCH_SECTIONS = {
    "chat": {"alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95,
             "mt-bench-easy": 28, "mt-bench-med": 40},
    "chat_hard": {"mt-bench-hard": 37, "llmbar-natural": 100, "llmbar-adver-neighbor": 134,
                  "llmbar-adver-GPTInst": 92, "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46},
    "safety": {"refusals-dangerous": 100, "refusals-offensive": 100, "xstest-should-refuse": 154,
               "xstest-should-respond": 250, "donotanswer": 136},
    "reasoning": {"math-prm": 984, "hep-cpp": 164, "hep-go": 164, "hep-java": 164, "hep-js": 164,
                  "hep-python": 164, "hep-rust": 164},
}


def calibration_bins(p_chosen, bins: int = 10) -> dict:
  """The reliability table of sigmoid(r_c - r_r) read as P(chosen preferred): confidence =
  max(p, 1-p) in `bins` equal bins over [0.5, 1]; per non-empty bin its mean confidence, its
  accuracy (a pair is right when p > 0.5, half right when p = 0.5) and its pair count."""
  p = np.asarray(p_chosen, np.float64)
  conf = np.maximum(p, 1 - p)
  correct = pair_correct(p - 0.5)  # a tie (p = 0.5) is half right
  edges = np.linspace(0.5, 1.0, bins + 1)
  idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
  out = {"confidence": [], "accuracy": [], "n": []}
  for b in range(bins):
    sel = idx == b
    if sel.any():
      out["confidence"].append(float(conf[sel].mean()))
      out["accuracy"].append(float(correct[sel].mean()))
      out["n"].append(int(sel.sum()))
  return out


def expected_calibration_error(p_chosen: np.ndarray, bins: int = 10) -> float:
  """ECE of sigmoid(r_c - r_r) read as P(chosen preferred) (`calibration_bins`): the
  bin-count-weighted gap between accuracy and confidence."""
  table = calibration_bins(p_chosen, bins)
  total = sum(table["n"])
  if not total:
    return float("nan")
  return float(sum(n * abs(a - c) for n, a, c in zip(table["n"], table["accuracy"],
                                                      table["confidence"])) / total)


def rewardbench_sections(per_subset: dict) -> Optional[dict]:
  """Section scores (example-count-weighted) when subset names match RewardBench's; else None."""
  out = {}
  for section, counts in REWARDBENCH_SECTIONS.items():
    present = {s: n for s, n in counts.items() if s in per_subset}
    if present:
      out[section] = sum(per_subset[s] * n for s, n in present.items()) / sum(present.values())
  if not out:
    return None
  if len(out) == 4:
    out["score_mean4"] = float(np.mean([out[s] for s in REWARDBENCH_SECTIONS]))
  return out


def pair_report(r_c, r_r, subsets: Sequence[Optional[str]], len_c=None, len_r=None) -> dict:
  """One JSON-able report for scored pairs. A tie (r_c == r_r) counts 0.5, not wrong as in
  RewardBench (`rmjax.eval.stats.pair_correct`); n_ties says how many there were."""
  r_c, r_r = np.asarray(r_c, np.float64), np.asarray(r_r, np.float64)
  diff = r_c - r_r
  right = pair_correct(diff)
  report = {"n": int(right.size), "accuracy": float(right.mean()) if right.size else float("nan"),
            "n_ties": int(np.sum(diff == 0)),
            "margin": float(diff.mean()) if right.size else float("nan"),
            "ece": expected_calibration_error(1.0 / (1.0 + np.exp(-diff)))}
  groups = defaultdict(list)
  for i, s in enumerate(subsets):
    groups[s or "all"].append(i)
  if len(groups) > 1 or "all" not in groups:
    report["per_subset"] = {s: float(right[idx].mean()) for s, idx in sorted(groups.items())}
    report["per_subset_n"] = {s: len(idx) for s, idx in sorted(groups.items())}
    sections = rewardbench_sections(report["per_subset"])
    if sections:
      report["rewardbench"] = sections
  if len_c is not None:
    len_c, len_r = np.asarray(len_c), np.asarray(len_r)
    longer = pair_correct(len_c.astype(np.float64) - len_r)
    report["length_baseline_accuracy"] = float(longer.mean())
    if "per_subset" in report:
      report["length_baseline_per_subset"] = {s: float(longer[idx].mean())
                                              for s, idx in sorted(groups.items())}
    for name, sel in (("chosen_longer", len_c > len_r), ("chosen_shorter", len_c < len_r)):
      report[f"accuracy_when_{name}"] = float(right[sel].mean()) if sel.any() else float("nan")
      report[f"n_{name}"] = int(sel.sum())
  return report
