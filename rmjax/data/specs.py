"""The source-spec grammar of pair data, in one place.

  json:PATH / PATH.jsonl[.gz]   a local file (see `rmjax.data.sources`)
  shared:NAME                   a set under ../shared/data
  hub:NAME                      a Hugging Face dataset
  synthetic:N                   the built-in pairs with a known gold reward
  A+B                           several sources joined (a bare B takes A's prefix)
  SPEC@train / SPEC@eval        one side of the 90/10 prompt-hash split of the whole
Ratings (ArmoRM): 'synthetic_multi:N', 'shared:NAME' (`rmjax.data.rating_sources`), JSONL paths;
objective-tagged pairs: 'SOURCE=>objective' joined with ';'.
"""

from __future__ import annotations

from typing import Sequence

from rmjax.data import rating_sources, sources, synthetic, synthetic_multi
from rmjax.data.ratings import read_ratings, tag_pairs
from rmjax.errors import ConfigError, DataError


def load_pairs(spec: str, seed: int = 0, limit: int = 0):
  """Pair examples and read stats for a data spec; 'synthetic:N' is the built-in gold-reward set,
  several specs may be joined with '+'; a trailing '@train' / '@eval' keeps one side of the
  90/10 prompt-hash split of the whole (`sources.hash_side`)."""
  spec, side = sources.split_side(spec)
  if side is not None:
    examples, stats = load_pairs(spec, seed, 0)
    examples = sources.hash_side(examples, side)
    stats = dict(stats, split_side=side, kept_side=len(examples))
  elif "+" in spec:  # several sources joined
    examples, stats = [], {}
    for part in spec.split("+"):
      part = part if ":" in part else f"{spec.split(':', 1)[0]}:{part}"
      got, s = load_pairs(part, seed, 0)
      examples += got
      stats[part] = {k: v for k, v in s.items() if k != "invalid_examples"}
  elif spec.startswith("synthetic:"):
    n = int(spec.split(":", 1)[1] or 2000)
    examples = synthetic.make_pairs(n, seed=seed)
    stats = {"read": n, "kept": n}
  else:
    examples, stats = sources.load_source(spec)
  if limit:
    examples = examples[:limit]
  return examples, stats


def train_eval_pairs(config):
  """(train examples, eval examples, stats): eval from `data.eval_source`, else a held-out
  fraction of the train source split by prompt hash (a prompt never lands on both sides)."""
  d = config.data
  train, stats = load_pairs(d.source, config.seed, d.limit)
  if d.eval_source:
    evals, _ = load_pairs(d.eval_source, config.seed + 1)
  else:
    train, evals = sources.split_by_prompt_hash(train, eval_fraction=d.eval_fraction, seed=config.seed)
    if d.eval_fraction and not (train and evals):
      raise ConfigError(f"splitting {d.source} by prompt hash left {len(train)} train and "
                        f"{len(evals)} eval pairs (too few distinct prompts): set data.eval_source")
  if d.max_eval_examples:
    evals = evals[:d.max_eval_examples]
  stats = dict(stats, train_pairs=len(train), eval_pairs=len(evals))
  return train, evals, stats


def load_objective_pairs(spec: str, names: Sequence[str], seed: int = 0) -> list:
  """'SOURCE=>objective' joined with ';' (e.g. 'shared:hh_rlhf_harmless_test@train=>safety') ->
  ObjectivePairs; SOURCE is any `rmjax.data.specs.load_pairs` spec, optionally ending in
  '@train' / '@eval' for one side of the 90/10 prompt-hash split."""
  out = []
  for part in filter(None, (s.strip() for s in spec.split(";"))):
    if "=>" not in part:
      raise DataError(part, None, None, "expected SOURCE=>objective")
    src, objective = (s.strip() for s in part.rsplit("=>", 1))
    if src.startswith("synthetic_multi:"):
      tag_pairs([], objective, names, where=src)  # validates the name
      out.extend(synthetic_multi.make_objective_pairs(int(src.split(":", 1)[1] or 500), objective,
                                                      names, seed))
      continue
    pairs, _ = load_pairs(src, seed)
    out.extend(tag_pairs(pairs, objective, names, where=src))
  return out


def load_ratings_spec(spec: str, objectives: Sequence, seed: int = 0, unrated=(),
                      missing: float = 0.1) -> list:
  """'synthetic_multi:N' (built-in, `unrated` objectives never rated), 'shared:NAME' (USR
  Topical-Chat, XSTest: `rmjax.data.rating_sources`) or 'json:PATH' / PATH, several joined
  with '+'."""
  names = [o.name for o in objectives]
  out = []
  for part in filter(None, (s.strip() for s in spec.split("+"))):
    if part.startswith("shared:"):
      out.extend(rating_sources.load_shared_ratings(part[7:], objectives)[0])
    elif part.startswith("synthetic_multi:"):
      out.extend(synthetic_multi.make_ratings(int(part.split(":", 1)[1] or 2000), seed, names,
                                              missing=missing, unrated=tuple(unrated)))
    else:
      out.extend(read_ratings(part[5:] if part.startswith("json:") else part, objectives))
  return out


def load_pairs_spec(spec: str, seed: int = 0) -> list:
  """Pairs: 'synthetic_multi:N' or any `rmjax.data.specs.load_pairs` spec, optionally
  ending in '@train' / '@eval' (one side of the prompt-hash split)."""
  if spec.startswith("synthetic_multi:"):
    return synthetic_multi.make_pairs(int(spec.split(":", 1)[1] or 2000), seed)
  return load_pairs(spec, seed)[0]
