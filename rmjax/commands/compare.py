"""Compare two or more reward models on the same preference pairs (`rmjax.eval.compare`):
accuracy with 95% bootstrap intervals and ties, the length baseline, decision disagreement,
Fleiss' kappa, Spearman between the models' scores and the standardised score spread, per set,
pooled ID / OOD, and on length-matched pairs; printed as tables and written as
<out>/compare.json, compare.md and compare.png.

Models: --workdir DIR and --model hf:DIR (scored here), --rewards FILE (a per-pair rewards file
as `rmjax eval` writes it, `rmjax.eval.pair_rewards`; e.g. a head an experiment script trained
on cached features). Each of --workdir, --model, --data, --ood, --rewards may be repeated. The
shared --workdir / --model / --data flags are single-valued for the other commands (absl keeps
the last value), so this command reads their repeated values from the command line itself
through its own multi-valued flag set (`_repeated`).

Everything is checked before a model loads: at least two models, every path present, every data
set non-empty, and every rewards file over exactly the compared pairs (matched by pair id).
Without --data / --ood, the sets are those of the rewards files (only rewards files then).
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import flags

from rmjax.checkpoints.workdir import read_config
from rmjax.commands.common import FLAGS, positive_batch_size, require
from rmjax.data.specs import load_pairs
from rmjax.errors import ConfigError, DataError
from rmjax.eval.compare import compare, write_report
from rmjax.eval.pair_rewards import pair_ids, read_rewards
from rmjax.tasks import runs

SUMMARY = "compare several RMs on the same pairs: accuracy CIs, disagreement, kappa, Spearman"
DETAILS = ("Repeat --workdir, --model hf:DIR and --rewards FILE (the <name>.rewards.jsonl of "
           "`rmjax eval`) for the models (two or more), --data for in-distribution sets and "
           "--ood for out-of-distribution sets. Writes compare.json, compare.md, compare.png "
           "under --out.")
EXAMPLE = ("rmjax compare --workdir runs/a --workdir runs/b --rewards head.rewards.jsonl "
           "--data pairs.jsonl --ood shared:llmbar --out runs/compare")
USES = ("workdir", "model", "rewards", "data", "ood", "out", "batch_size", "step", "n_boot",
        "length_tol")

flags.DEFINE_multi_string("rewards", [], "compare: a per-pair rewards JSONL (as `rmjax eval` "
                          "writes) to compare as one model")
flags.DEFINE_multi_string("ood", [], "compare: an out-of-distribution data set (a --data spec)")
flags.DEFINE_integer("n_boot", 2000, "compare: bootstrap resamples per interval")
flags.DEFINE_float("length_tol", 0.2, "compare: length-matched pairs have "
                   "|len_chosen / len_rejected - 1| < length_tol")

_REPEATED = flags.FlagValues()  # the repeatable shared flags, read again from the command line
for _name in ("workdir", "model", "data"):
  flags.DEFINE_multi_string(_name, [], "", flag_values=_REPEATED)


def _repeated() -> dict:
  """{'workdir', 'model', 'data'}: every value given on the command line, in order."""
  _REPEATED.unparse_flags()
  _REPEATED(sys.argv[:1] + sys.argv[2:], known_only=True)
  return {name: list(_REPEATED[name].value or []) for name in ("workdir", "model", "data")}


def _sources(given: dict) -> dict:
  """{label: ('workdir' | 'hf' | 'rewards', path)}, every path checked; labels are the paths'
  last components, or the whole paths where two of those collide."""
  items = [("workdir", p) for p in given["workdir"]] + [("rewards", p) for p in FLAGS.rewards]
  for m in given["model"]:
    if not m.startswith("hf:"):
      raise ConfigError(f"--model {m}: expected hf:DIR (a trained workdir is --workdir)")
    items.append(("hf", m[3:]))
  if len(items) < 2:
    raise ConfigError(f"compare needs at least two models (--workdir, --model hf:DIR, --rewards "
                      f"FILE; each repeatable), got {len(items)}")
  paths = [p for _, p in items]
  if len(set(paths)) < len(paths):
    raise ConfigError(f"a model is named twice: {sorted({p for p in paths if paths.count(p) > 1})}")
  for kind, path in items:
    if kind == "workdir":
      read_config(path)  # a ConfigError naming the path when it is not a trained workdir
    elif kind == "hf" and not os.path.isdir(path):
      raise ConfigError(f"--model hf:{path}: no such directory")
  short = [os.path.basename(os.path.normpath(p)) or p for p in paths]
  labels = short if len(set(short)) == len(short) else paths
  return {label: item for label, item in zip(labels, items)}


def _load_sets(specs: list) -> dict:
  """{spec: pairs}, each set read and checked non-empty."""
  sets = {}
  for spec in specs:
    if spec in sets:
      raise ConfigError(f"data set {spec} is named twice (--data / --ood)")
    pairs, stats = load_pairs(spec)
    if not pairs:
      raise ConfigError(f"{spec}: no pairs to compare ({stats.get('n_in', 0)} read, dropped: "
                        f"{ {k: v for k, v in stats.get('dropped', {}).items() if v} or 'none'})")
    sets[spec] = pairs
  return sets


def _match(path: str, table: dict, name: str, ids: list) -> dict:
  """A rewards file's rewards for set `name` in the order of `ids`: its lines of that set when it
  has them (then exactly those ids), else looked up by id among all its lines."""
  lines = table.get(name)
  if lines is None:
    lines = {}
    for per_set in table.values():
      for k, v in per_set.items():
        lines.setdefault(k, v)
  missing = sum(1 for i in ids if i not in lines)
  extra = len(set(lines) - set(ids)) if name in table else 0
  if missing or extra:
    raise DataError(path, None, None, f"its pairs are not those of set {name} (mismatched data: "
                    f"{missing} of {len(ids)} pair ids missing, {extra} extra)")
  return {"chosen": np.array([lines[i]["reward_chosen"] for i in ids], np.float64),
          "rejected": np.array([lines[i]["reward_rejected"] for i in ids], np.float64)}


def _load_scorer(kind: str, path: str):
  source = f"hf:{path}" if kind == "hf" else path
  step = FLAGS.step if kind == "workdir" else None
  return runs.load_scorer(source, step=step, finite=True, batch_size=positive_batch_size())


def main():
  out = require("out")
  if FLAGS.n_boot < 1 or not FLAGS.length_tol > 0:
    raise ConfigError("--n_boot must be >= 1 and --length_tol > 0")
  given = _repeated()
  sources = _sources(given)
  scored = [k for k, (kind, _) in sources.items() if kind != "rewards"]
  specs = given["data"] + list(FLAGS.ood)
  if scored and not specs:
    raise ConfigError("--data (or --ood) is required to score --workdir / --model models")
  tables = {k: read_rewards(p) for k, (kind, p) in sources.items() if kind == "rewards"}
  sets = _load_sets(specs)
  ids = {s: pair_ids(p) for s, p in sets.items()}
  lengths = {s: ([len(x.chosen) for x in p], [len(x.rejected) for x in p]) for s, p in sets.items()}
  if not specs:  # rewards files only: their sets, as the first file orders them
    first = next(iter(tables.values()))
    ids = {s: list(lines) for s, lines in first.items()}
    lengths = {s: ([v["len_chosen"] for v in lines.values()],
                   [v["len_rejected"] for v in lines.values()]) for s, lines in first.items()}
  models = {k: {s: _match(sources[k][1], t, s, ids[s]) for s in ids} for k, t in tables.items()}
  for label in scored:  # one model in memory at a time
    scorer = _load_scorer(*sources[label])
    models[label] = {}
    for s, pairs in sets.items():
      res_c, res_r = scorer.score_pairs([p.messages for p in pairs], [p.chosen for p in pairs],
                                        [p.rejected for p in pairs])  # as `rmjax eval` scores them
      models[label][s] = {"chosen": np.asarray(res_c["reward"]),
                          "rejected": np.asarray(res_r["reward"])}
    del scorer
  models = {k: models[k] for k in sources}  # the command-line order
  report = compare(models, lengths, ood_sets=FLAGS.ood, tol=FLAGS.length_tol, n_boot=FLAGS.n_boot)
  report["sources"] = {k: f"{kind}:{p}" for k, (kind, p) in sources.items()}
  files = write_report(report, out)
  with open(files["md"], encoding="utf-8") as f:
    print(f.read(), end="")
  print(f"wrote {', '.join(files.values())}")
