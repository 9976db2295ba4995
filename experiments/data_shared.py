"""Shared real data sets for experiment scripts: the hh-rlhf train/eval split and OOD sets.

hh-rlhf offers only test splits offline (harmless-base + 3 helpful files, 8,552 pairs): they are
split 90/10 by prompt hash (seed recorded) into train and in-distribution eval. OOD: LLMBar and
RM-Bench. When ../shared/data is absent, every helper raises SharedDataMissing with a clear
message; `python experiments/data_shared.py` prints the counts (or the skip reason).
"""

import json
import sys

from rmjax.data import load_source, shared_data_root, split_by_prompt_hash

HH_SOURCES = ('shared:hh_rlhf_harmless_test', 'shared:hh_rlhf_helpful_test')
OOD_SOURCES = {'llmbar': 'shared:llmbar', 'rm_bench': 'shared:rm_bench'}


class SharedDataMissing(FileNotFoundError):
  """../shared/data (or $RMJAX_SHARED_DATA) is not there: experiments using it are skipped."""


def require_shared():
  root = shared_data_root()
  if root is None:
    raise SharedDataMissing('skipped: shared data not found (expected ../shared/data beside the '
                            'repo, or set RMJAX_SHARED_DATA)')
  return root


def hh_rlhf_split(eval_fraction=0.1, seed=0, limit=None):
  """-> (train, eval, stats): hh-rlhf harmless + helpful pairs split by prompt hash."""
  require_shared()
  examples, stats = [], {}
  for spec in HH_SOURCES:
    got, s = load_source(spec, limit=limit)
    examples += got
    stats[spec] = {k: v for k, v in s.items() if k != 'invalid_examples'}
  train, evals = split_by_prompt_hash(examples, eval_fraction, seed)
  stats.update(train=len(train), eval=len(evals), eval_fraction=eval_fraction, seed=seed)
  return train, evals, stats


def ood_sets(names=tuple(OOD_SOURCES), limit=None):
  """-> {name: (examples, stats)} for the OOD sets (LLMBar, RM-Bench by default)."""
  require_shared()
  return {n: load_source(OOD_SOURCES[n], limit=limit) for n in names}


def main():
  try:
    train, evals, stats = hh_rlhf_split()
    ood = {n: len(ex) for n, (ex, _) in ood_sets().items()}
  except SharedDataMissing as e:
    print(e)
    return 0
  print(json.dumps({'hh_rlhf': stats, 'ood': ood, 'train': len(train), 'eval': len(evals)}))
  return 0


if __name__ == '__main__':
  sys.exit(main())
