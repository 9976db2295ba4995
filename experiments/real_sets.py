"""The real-data sets of experiments E-a and E-c (../shared/EXPERIMENTS.md), fixed once.

Train / in-distribution (ID) eval per dataset, split by prompt hash (seed 0) so that no prompt
straddles the split; pairs drawn in hash order, so the sets are deterministic and every
experiment reading the feature cache sees the same pairs:

  hh_harmless, hh_helpful   hh-rlhf test files (the only offline split): 800 train + 150 eval
  alpaca_eval               AlpacaEval GPT-4 annotations (AI feedback), split by instruction
                            (20% of the 805 instructions held out), ties dropped: 800 + 150
  autoj                     Auto-J pairwise, ties dropped (984 pairs): 800 + 150

OOD probes (never trained on): LLMBar (all 1,000; subsets kept), PandaLM (majority label, ties
dropped: 894), RM-Bench chat + safety, concise chosen vs concise rejected (570).
E-c also reads the XSTest completions (2,250 rated rows) and USR Topical-Chat (360).

`python -m experiments.real_sets` prints the sizes.
"""

from __future__ import annotations

import copy
import functools
import json
import sys

from rmjax.data import load_source
from rmjax.data.sources import prompt_hash_fraction

SEED = 0
N_TRAIN, N_EVAL = 800, 150
ID_SETS = ("hh_harmless", "hh_helpful", "alpaca_eval", "autoj")
OOD_SETS = ("llmbar", "pandalm", "rm_bench")
SPECS = {
    "hh_harmless": "shared:hh_rlhf_harmless_test",
    "hh_helpful": "shared:hh_rlhf_helpful_test",
    "alpaca_eval": "shared:alpaca_eval_annotations/alpaca_eval_gpt4",
    "autoj": "shared:autoj_pairwise_test",
    "llmbar": "shared:llmbar",
    "pandalm": "shared:pandalm_testset",
    "rm_bench": "shared:rm_bench?format=rm_bench_diag",
}
RM_BENCH_DOMAINS = ("chat", "safety-refuse", "safety-response")


def _hash_order(examples):
  return sorted(range(len(examples)), key=lambda i: (prompt_hash_fraction(examples[i], SEED), i))


def split_pairs(examples, n_train=N_TRAIN, n_eval=N_EVAL):
  """(train, eval): prompts in hash order; the first prompts fill eval, the next train (a prompt's
  pairs stay together)."""
  order = _hash_order(examples)
  train, evals, side, last = [], [], "eval", None
  for i in order:
    key = prompt_hash_fraction(examples[i], SEED)
    if side == "eval" and len(evals) >= n_eval and key != last:
      side = "train"
    if side == "train" and len(train) >= n_train and key != last:
      break
    (evals if side == "eval" else train).append(examples[i])
    last = key
  return train, evals


def split_by_instruction(examples, eval_fraction=0.2, n_train=N_TRAIN, n_eval=N_EVAL):
  """AlpacaEval: instructions (not pairs) split by hash; pairs of each side drawn in a fixed
  hash order of (instruction, generator) so every instruction contributes about equally."""
  held_out = [prompt_hash_fraction(e, SEED) < eval_fraction for e in examples]
  ev = [e for e, h in zip(examples, held_out) if h]
  tr = [e for e, h in zip(examples, held_out) if not h]

  def spread(part, n):
    key = lambda e: prompt_hash_fraction(e, SEED + 1, key=lambda x: x.rejected + x.chosen)
    part = sorted(part, key=key)
    return part[:n]
  return spread(tr, n_train), spread(ev, n_eval)


@functools.lru_cache(maxsize=None)
def _load(spec: str) -> tuple:
  """(examples as a tuple, stats) of `load_source(spec)`, read once per process: the experiments
  read the same sets several times (E-b's prompt selection and its gold, a notebook's cells).
  PairExample is frozen and the tuple cannot grow, so callers cannot change what others see."""
  ex, stats = load_source(spec)
  return tuple(ex), stats


def load(name: str) -> tuple:
  """([PairExample], stats) of the set `name` of SPECS, as `load_source` returns them (a fresh
  list and stats dict per call; the parse itself is cached per process)."""
  ex, stats = _load(SPECS[name])
  return list(ex), copy.deepcopy(stats)


@functools.lru_cache(maxsize=None)
def _sets() -> dict:
  out = {"train": {}, "eval": {}, "ood": {}, "stats": {}}
  for name in ID_SETS:
    ex, stats = load(name)
    tr, ev = (split_by_instruction(ex) if name == "alpaca_eval" else split_pairs(ex))
    out["train"][name], out["eval"][name] = tuple(tr), tuple(ev)
    out["stats"][name] = {"loaded": len(ex), "train": len(tr), "eval": len(ev),
                          "dropped": stats.get("dropped", {})}
  for name in OOD_SETS:
    ex, stats = load(name)
    if name == "rm_bench":
      ex = [e for e in ex if e.subset.split("/")[0] in RM_BENCH_DOMAINS
            and e.source.endswith("#c0r0")]
    out["ood"][name] = tuple(ex)
    out["stats"][name] = {"loaded": len(ex), "dropped": stats.get("dropped", {})}
  return out


def load_sets() -> dict:
  """{'train': {set: [PairExample]}, 'eval': {set: [...]}, 'ood': {set: [...]}, 'stats': ...}.
  Built once per process (the loads and hash splits are deterministic); each call returns new
  dicts and lists, so a caller may change its copy."""
  sets = _sets()
  out = {part: {name: list(ex) for name, ex in sets[part].items()}
         for part in ("train", "eval", "ood")}
  out["stats"] = copy.deepcopy(sets["stats"])
  return out


def rated_rows() -> dict:
  """E-c's rated rows: {'usr': [RatingExample], 'xstest': [...]} with the objectives they rate."""
  from experiments.armorm_shared import NAMES
  from rmjax.data import objectives as objs
  from rmjax.data import rating_sources as rs
  ob = objs.resolve(NAMES)
  return {"usr": rs.load_shared_ratings("usr_topicalchat", ob)[0],
          "xstest": rs.load_shared_ratings("xstest", ob)[0]}


def main():
  sets = load_sets()
  print(json.dumps(sets["stats"], indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
