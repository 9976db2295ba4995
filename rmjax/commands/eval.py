"""Evaluate a reward model on preference pairs: accuracy (per subset, vs the length baseline)."""

from __future__ import annotations

import json
import os

from rmjax.commands.common import FLAGS, require
from rmjax.commands.score import load_scorer
from rmjax.data.specs import load_pairs
from rmjax.errors import ConfigError
from rmjax.eval.armorm_report import objective_accuracies
from rmjax.eval.metrics import pair_report
from rmjax.eval.uncertainty import uncertainty_report

SUMMARY = "accuracy of a trained RM (or an HF RM via --model) on preference pairs"
EXAMPLE = "rmjax eval --workdir /tmp/bt --data shared:hh_rlhf_test"
USES = ("workdir", "model", "data", "out", "batch_size", "step")


def main():
  data = require("data")
  spec = data if ":" in data.split("/")[0] else f"json:{data}"
  pairs, _ = load_pairs(spec)
  if not pairs:
    raise ConfigError(f"{data}: no pairs to evaluate")
  scorer = load_scorer()
  prompts = [p.messages for p in pairs]
  res_c = scorer.score(prompts, [p.chosen for p in pairs])
  res_r = scorer.score(prompts, [p.rejected for p in pairs])
  report = pair_report(res_c["reward"], res_r["reward"], [p.subset for p in pairs],
                       [len(p.chosen) for p in pairs], [len(p.rejected) for p in pairs])
  if "objectives" in res_c:  # ArmoRM: how each objective alone orders the pairs
    report["objective_accuracy"] = objective_accuracies(
        res_c["objectives"], res_r["objectives"], list(scorer.config.objectives.names))
  if "members" in res_c:  # ensembles: is the spread informative about errors?
    report["uncertainty"] = uncertainty_report(res_c["members"], res_r["members"])
  report.update(data=data, step=scorer.step)
  out_dir = FLAGS.out or os.path.join(require("workdir"), "eval")
  os.makedirs(out_dir, exist_ok=True)
  name = os.path.basename(data.rstrip("/")).split(".")[0].replace(":", "_") or "eval"
  with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
    json.dump(report, f, indent=2)
  print(json.dumps(report))
