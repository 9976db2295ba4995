"""Score (prompt, response) records with a trained reward model: one JSON line out per line in.

Everything that can be checked is checked before the model loads: the flags, the output path
and every input record (all bad lines are named, up to a cap, as file:line: field). Each output
line carries its input `line` (and `id` when given); a blank input line is dropped with a
reported reason, and the counts (n_in, n_scored, n_dropped by reason, n_truncated) go to stderr.
`--strict` turns any drop or truncation into an error. The output is written to a temporary
file and renamed, and a model whose parameters or scores are not finite writes nothing.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import sys
import zlib

from absl import flags

from rmjax import tasks
from rmjax.checkpoints.workdir import read_config, write_json_atomic
from rmjax.commands.common import FLAGS, positive_batch_size, require
from rmjax.data.pairs import iter_records
from rmjax.data.tokenize import normalize_prompt
from rmjax.errors import CheckpointError, ConfigError, DataError
from rmjax.tasks import runs

SUMMARY = "score {prompt, response} JSONL records with a trained RM (or an HF RM via --model)"
EXAMPLE = "rmjax score --workdir /tmp/bt --data in.jsonl --out scores.jsonl"
USES = ("workdir", "model", "data", "out", "batch_size", "step", "principles", "strict")
MAX_REPORTED = 5  # bad lines named in the one-line error

flags.DEFINE_string("out", None, "output path (score: JSONL; eval: report directory)")
flags.DEFINE_string("model", None, "score/eval: an HF reward model (hf:DIR) instead of --workdir")
flags.DEFINE_string("principles", None, "score (SALMON): principle file (JSON list of "
                    "{dimension, definition}) to condition the reward model on")


def _lines(path: str):
  """(line number, text) of a .jsonl / .jsonl.gz file, blank lines included; unreadable files
  (a directory, binary, truncated gzip, invalid UTF-8) are a one-line DataError."""
  if os.path.isdir(path):
    raise DataError(path, None, None, "is a directory, not a JSONL file")
  if not os.path.exists(path):
    raise DataError(path, None, None, "file not found")
  number = 0
  try:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
      for number, raw in enumerate(f, start=1):
        yield number, raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(path, number, None, f"not UTF-8 text ({e.reason}); gzip files must "
                    f"end in .gz") from None
  except (EOFError, OSError, zlib.error) as e:
    raise DataError(path, number + 1 if number else None, None,
                    f"unreadable ({type(e).__name__}: {e})") from None


def read_inputs(path: str):
  """(rows, dropped): rows are the records to score, each with its input `_line`; dropped maps
  a reason to the line numbers dropped for it. Every bad record is collected (missing field,
  wrong type, malformed JSON) and reported in one DataError naming up to MAX_REPORTED of them.
  An empty response is a response (it is scored)."""
  path = str(path)
  stem = path[:-3] if path.endswith(".gz") else path
  is_list = stem.endswith(".json")  # a JSON list of records: no lines to be blank
  records = iter_records(path) if is_list else _lines(path)
  rows, dropped, bad = [], {}, []
  for line, obj in records:
    if not is_list:
      if not obj.strip():
        dropped.setdefault("blank line", []).append(line)
        continue
      try:
        obj = json.loads(obj)
      except json.JSONDecodeError as e:
        bad.append(DataError(path, line, None, f"malformed JSON: {e.msg} (column {e.colno})"))
        continue
    problem = _check_record(obj, path, line)
    if problem is not None:
      bad.append(problem)
      continue
    rows.append(dict(obj, _line=line))
  if bad:
    more = f" (and {len(bad) - MAX_REPORTED} more bad lines)" if len(bad) > MAX_REPORTED else ""
    raise DataError(path, None, None, f"{len(bad)} bad record(s): "
                    + "; ".join(str(e) for e in bad[:MAX_REPORTED]) + more)
  if not rows:
    raise DataError(path, None, None, "no records to score (the file is empty or blank)")
  return rows, dropped


def _check_record(obj, path, line):
  if not isinstance(obj, dict):
    return DataError(path, line, None, "each line must be a JSON object")
  for field in ("prompt", "response"):
    if field not in obj:
      return DataError(path, line, field, "missing")
  if not isinstance(obj["response"], str):
    return DataError(path, line, "response",
                     f"expected a string, got {type(obj['response']).__name__}")
  try:
    normalize_prompt(obj["prompt"], path, line, "prompt")
  except DataError as e:
    return e
  return None


def check_out(out: str) -> None:
  """--out must be a file path in a folder this process can write (checked before loading)."""
  if os.path.isdir(out):
    raise ConfigError(f"--out {out}: is a directory; give a file path")
  folder = os.path.dirname(os.path.abspath(out))
  probe = folder
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
    raise ConfigError(f"--out {out}: {probe} is not a writable directory")


def load_scorer(config=None, **kw):
  """The reward model named by --model (hf:DIR) or --workdir, refused when its parameters are
  not all finite (a diverged run's weights would score NaN). `config`: the workdir's
  config.json when the command has read it already (it is read once)."""
  source = FLAGS.model or require("workdir")
  return runs.load_scorer(source, step=FLAGS.step, config=config, finite=True,
                          batch_size=positive_batch_size(), **kw)


def _truncated(scorer) -> int:
  """Inputs the scorer's encoder has cut to max_length so far."""
  return int(getattr(getattr(scorer, "encoder", None), "n_truncated", 0))


def _json_finite(value) -> bool:
  if isinstance(value, dict):
    return all(map(_json_finite, value.values()))
  if isinstance(value, (list, tuple)):
    return all(map(_json_finite, value))
  return not isinstance(value, float) or math.isfinite(value)


def write_jsonl_atomic(path: str, records) -> None:
  """JSON lines (no NaN) written through a temporary file beside `path`: never a half file."""
  write_json_atomic(path, None, text="".join(json.dumps(r, allow_nan=False) + "\n" for r in records))


def main():
  data, out = require("data"), require("out")
  positive_batch_size()
  check_out(out)
  rows, dropped = read_inputs(data)
  n_in = len(rows) + sum(map(len, dropped.values()))
  if FLAGS.strict and dropped:
    reason, lines = next(iter(dropped.items()))
    raise DataError(data, lines[0], None, f"{reason} (--strict; {len(lines)} such line(s))")
  config = None if FLAGS.model else read_config(require("workdir"))  # read once, here
  if FLAGS.principles and config is not None:
    spec = tasks.get(config.task)
    if not spec.takes_principles:
      raise ConfigError(f"--principles needs a principle-conditioned model; task "
                        f"{spec.name!r} takes none")
  scorer = load_scorer(config)
  prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
  if FLAGS.strict:  # tokenise first: a truncation fails before the forward passes
    for i, (p, r) in enumerate(zip(prompts, responses)):
      before = _truncated(scorer)
      scorer.token_ids(p, r, FLAGS.principles)
      if _truncated(scorer) > before:
        raise DataError(data, rows[i]["_line"], None, "longer than the model's max_length: it "
                        "would be truncated (--strict)")
  start = _truncated(scorer)
  res = scorer.score(prompts, responses, principles=FLAGS.principles)
  n_truncated = _truncated(scorer) - start
  records = []
  for i, r in enumerate(rows):
    rec = {"id": r["id"]} if "id" in r else {}
    rec["line"] = r["_line"]
    rec.update(scorer.record(res, i))
    records.append(rec)
  bad = [r["line"] for r in records if not _json_finite(r)]
  if bad:
    raise CheckpointError(f"the model gives non-finite rewards for {len(bad)} of {len(records)} "
                          f"inputs (first: {data}:{bad[0]}); nothing written")
  write_jsonl_atomic(out, records)
  report = {"n_in": n_in, "n_scored": len(records),
            "n_dropped": {k: len(v) for k, v in dropped.items()}, "n_truncated": n_truncated}
  if dropped or n_truncated:
    lines = {k: v[:MAX_REPORTED] for k, v in dropped.items()}
    print(f"rmjax score: warning: {data}: dropped {lines} (line numbers), {n_truncated} "
          f"truncated; --strict makes these errors", file=sys.stderr)
  print(f"score report: {json.dumps(report)}", file=sys.stderr)
  print(f"wrote {len(records)} scores to {out}")
