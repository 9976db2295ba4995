"""Evaluate a reward model on preference pairs: accuracy (per subset, vs the length baseline;
a tie r(chosen) == r(rejected) counts 0.5 and n_ties counts them), with the n accounting,
written as JSON + PNG + Markdown (`rmjax.eval.report_files`).

Beside the report, `<name>.rewards.jsonl` holds one line per scored pair (`rmjax.eval.
pair_rewards`): id (a stable hash of prompt + chosen + rejected), set (the --data spec), subset,
reward_chosen, reward_rejected, len_chosen, len_rejected (characters); `rmjax compare --rewards
FILE` reads it, and the report names it under 'rewards_file'."""

from __future__ import annotations

import os

import numpy as np

from rmjax.commands.common import FLAGS, require
from rmjax.checkpoints.workdir import dumps_strict
from rmjax.commands.score import load_scorer, write_jsonl_atomic
from rmjax.data.specs import load_pairs
from rmjax.errors import ConfigError, DataError
from rmjax.eval.armorm_report import objective_accuracies
from rmjax.eval.metrics import calibration_bins, pair_report
from rmjax.eval.pair_rewards import rewards_records
from rmjax.eval.report_files import report_name, write_report_files
from rmjax.eval.uncertainty import uncertainty_report

SUMMARY = "accuracy of a trained RM (or an HF RM via --model) on preference pairs"
DETAILS = ("Writes <out>/<name>.json, .png, .md and the per-pair rewards <name>.rewards.jsonl, one "
           "line per scored pair: id (stable hash of prompt + chosen + rejected), set (the --data "
           "spec), subset, reward_chosen, reward_rejected, len_chosen, len_rejected (characters); "
           "`rmjax compare --rewards FILE` reads it. A tie counts 0.5 (n_ties in the report).")
EXAMPLE = "rmjax eval --workdir /tmp/bt --data shared:hh_rlhf_test"
USES = ("workdir", "model", "data", "out", "batch_size", "step", "strict")


def accounting(stats: dict, n_scored: int, n_truncated) -> dict:
  """n_in = n_scored + sum(n_dropped) (by reason: identical, invalid, skipped, ...), the kept
  pairs with an empty response, and the pairs the scorer's encoder cut to max_length."""
  dropped = {k: int(v) for k, v in stats.get("dropped", {}).items() if v}
  return {"n_in": int(stats.get("n_in", n_scored + sum(dropped.values()))), "n_scored": n_scored,
          "n_dropped": dropped, "n_empty_response": int(stats.get("empty_response", 0)),
          "n_truncated": n_truncated}


def check_none_truncated(scorer, pairs, data: str) -> None:
  """--strict: a DataError when a pair would be cut to the scorer's max_length (the pair rule,
  `rmjax.data.tokenize.truncate`; models that render their own inputs, TaskSpec.score_ids, are
  not checked)."""
  if getattr(getattr(scorer, "spec", None), "score_ids", None) is not None:
    return
  n = sum(1 for p in pairs
          if scorer.encoder.encode_responses(p.messages, [p.chosen, p.rejected])[2])
  if n:
    raise DataError(data, None, None, f"{n} pair(s) longer than max_length "
                    f"{scorer.encoder.max_length} would be truncated (--strict)")


def count_truncated(res_c: dict, res_r: dict):
  """Pairs the scorer cut to max_length (from its per-row flags); None when the model renders
  its own inputs (TaskSpec.score_ids) and reports no flags."""
  if "truncated" not in res_c:
    return None
  return int(np.sum(np.asarray(res_c["truncated"]) | np.asarray(res_r["truncated"])))


def out_dir() -> str:
  """--out, else <workdir>/eval; an HF model (--model) has no workdir, so it needs --out."""
  if FLAGS.out:
    return FLAGS.out
  if FLAGS.model:
    raise ConfigError("--out is required for `rmjax eval --model` (there is no workdir to "
                      "write the report into)")
  return os.path.join(require("workdir"), "eval")


def main():
  data = require("data")
  directory = out_dir()
  pairs, stats = load_pairs(data)
  acc = accounting(stats, len(pairs), None)
  if not pairs:
    raise ConfigError(f"{data}: no pairs to evaluate ({acc['n_in']} read, dropped: "
                      f"{acc['n_dropped'] or 'none'})")
  if FLAGS.strict and acc["n_dropped"]:
    raise DataError(data, None, None, f"records dropped: {acc['n_dropped']} (--strict)")
  scorer = load_scorer()
  if FLAGS.strict:  # refuse before the forward: an encode-only pass over the pairs
    check_none_truncated(scorer, pairs, data)
  prompts = [p.messages for p in pairs]
  # each pair's prompt cut once for both responses, as training cut it (Scorer.pair_rows)
  res_c, res_r = scorer.score_pairs(prompts, [p.chosen for p in pairs], [p.rejected for p in pairs])
  n_truncated = count_truncated(res_c, res_r)
  report = pair_report(res_c["reward"], res_r["reward"], [p.subset for p in pairs],
                       [len(p.chosen) for p in pairs], [len(p.rejected) for p in pairs])
  margins = np.asarray(res_c["reward"], np.float64) - np.asarray(res_r["reward"], np.float64)
  report["calibration"] = calibration_bins(1.0 / (1.0 + np.exp(-margins)))
  if "objectives" in res_c:  # ArmoRM: how each objective alone orders the pairs
    report["objective_accuracy"] = objective_accuracies(
        res_c["objectives"], res_r["objectives"], list(scorer.config.objectives.names))
  if "members" in res_c:  # ensembles: is the spread informative about errors?
    report["uncertainty"] = uncertainty_report(res_c["members"], res_r["members"])
  report.update(data=data, step=scorer.step, model=FLAGS.model or FLAGS.workdir,
                accounting=accounting(stats, len(pairs), n_truncated))
  report["rewards_file"] = os.path.join(directory, report_name(data) + ".rewards.jsonl")
  write_jsonl_atomic(report["rewards_file"],
                     rewards_records(pairs, data, res_c["reward"], res_r["reward"]))
  report["files"] = write_report_files(directory, data, report, margins)
  print(dumps_strict(report))
