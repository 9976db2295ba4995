"""Score (prompt, response) records with a trained reward model: one JSON line out per line in."""

from __future__ import annotations

import json
import os

from absl import flags

from rmjax import tasks
from rmjax.checkpoints.workdir import read_config
from rmjax.commands.common import FLAGS, positive_batch_size, require
from rmjax.data.pairs import iter_records
from rmjax.errors import ConfigError, DataError

SUMMARY = "score {prompt, response} JSONL records with a trained RM (or an HF RM via --model)"
EXAMPLE = "rmjax score --workdir /tmp/bt --data in.jsonl --out scores.jsonl"
USES = ("workdir", "model", "data", "out", "batch_size", "step", "principles")

flags.DEFINE_string("out", None, "output path (score: JSONL; eval: report directory)")
flags.DEFINE_string("model", None, "score/eval: an HF reward model (hf:DIR) instead of --workdir")
flags.DEFINE_string("principles", None, "score (SALMON): principle file (JSON list of "
                    "{dimension, definition}) to condition the reward model on")


def read_inputs(path):
  rows = []
  for line, obj in iter_records(path):
    if not isinstance(obj, dict):
      raise DataError(path, line, None, "each line must be a JSON object")
    for field in ("prompt", "response"):
      if field not in obj:
        raise DataError(path, line, field, "missing")
    if not isinstance(obj["response"], str) or not obj["response"].strip():
      raise DataError(path, line, "response", "must be a non-empty string")
    rows.append(obj)
  return rows


def load_scorer(**kw):
  """The reward model named by --model (hf:DIR) or --workdir."""
  source = FLAGS.model or require("workdir")
  return tasks.load_scorer(source, step=FLAGS.step, batch_size=positive_batch_size(), **kw)


def main():
  data, out = require("data"), require("out")
  rows = read_inputs(data)
  if FLAGS.principles and not FLAGS.model:
    spec = tasks.get(read_config(require("workdir")).task)
    if not spec.takes_principles:
      raise ConfigError(f"--principles needs a principle-conditioned model; task "
                        f"{spec.name!r} takes none")
  scorer = load_scorer()
  res = scorer.score([r["prompt"] for r in rows], [r["response"] for r in rows],
                     principles=FLAGS.principles)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    for i, r in enumerate(rows):
      rec = {"id": r["id"]} if "id" in r else {}
      rec.update(scorer.record(res, i))
      f.write(json.dumps(rec) + "\n")
  print(f"wrote {len(rows)} scores to {out}")
