"""The source-spec grammar of pair data, in one place.

  json:PATH / parquet:PATH      a local file (see `rmjax.data.sources`)
  PATH                          a bare path, by extension: .jsonl[.gz] .json[.gz] .parquet, or a
                                save_to_disk folder (anything else is refused)
  shared:NAME                   a set under ../shared/data
  hub:NAME[:SPLIT]              a Hugging Face dataset, or a save_to_disk folder
  synthetic:N                   the built-in pairs with a known gold reward
  A+B                           several sources joined (a bare B takes A's prefix)
  SPEC@train / SPEC@eval        one side of the 90/10 prompt-hash split of the whole
Ratings (ArmoRM): 'synthetic_multi:N', 'shared:NAME' (`rmjax.data.rating_sources`), JSONL paths;
objective-tagged pairs: 'SOURCE=>objective' joined with ';'.
"""

from __future__ import annotations

import pathlib
from typing import Sequence

from rmjax.data import rating_sources, sources, synthetic, synthetic_multi
from rmjax.data.ratings import read_ratings, tag_pairs
from rmjax.errors import ConfigError, DataError


KINDS = ("json", "parquet", "shared", "hub", "synthetic")  # SPEC's `kind:` prefixes
PATH_KINDS = ((".jsonl", "json"), (".jsonl.gz", "json"), (".json", "json"), (".json.gz", "json"),
              (".parquet", "parquet"))


def resolve_spec(spec: str) -> str:
  """A bare path -> its spec by extension (.jsonl[.gz] / .json[.gz] -> json:, .parquet ->
  parquet:, a `save_to_disk` folder -> hub:); a spec with a kind is returned as is; anything
  else is a ConfigError naming what is accepted."""
  spec = str(spec)
  kind = spec.split(":", 1)[0] if ":" in spec.split("/")[0] else None
  path, _, query = spec.partition("?")
  if kind in KINDS or (kind is not None and not pathlib.Path(path).exists()):
    if kind not in KINDS:
      raise ConfigError(f"bad data source {spec!r}: {kind!r} is not a source kind ("
                        f"{', '.join(KINDS)}); for a file whose path holds ':' use ./path or "
                        "json:path")
    return spec
  for ext, kind in PATH_KINDS:
    if path.endswith(ext):
      return f"{kind}:{spec}"
  if pathlib.Path(path).is_dir() and any(
      (pathlib.Path(path) / f).exists() for f in ("dataset_dict.json", "state.json")):
    return f"hub:{spec}"
  what = "a folder that is not a saved dataset" if pathlib.Path(path).is_dir() else (
      "no such file" if not pathlib.Path(path).exists() else "unknown file type")
  raise ConfigError(f"{path}: {what}; expected a .jsonl, .jsonl.gz, .json or .parquet file, a "
                    "save_to_disk folder, or a spec (json:PATH, parquet:PATH, hub:NAME[:SPLIT], "
                    "shared:NAME, synthetic:N)")


def _synthetic_count(spec: str) -> int:
  arg = spec.split(":", 1)[1]
  if arg and not arg.isdigit():
    raise ConfigError(f"bad data source {spec!r}: synthetic:N takes a whole number of pairs")
  return int(arg or 2000)


def _sum_stats(parts: dict) -> dict:
  """The accounting totals of several sources' stats (n_in, kept, dropped, empty_response)."""
  total = {"n_in": 0, "kept": 0, "empty_response": 0, "dropped": {}}
  for s in parts.values():
    for k in ("n_in", "kept", "empty_response"):
      total[k] += s.get(k, 0)
    for reason, n in s.get("dropped", {}).items():
      total["dropped"][reason] = total["dropped"].get(reason, 0) + n
  return total


def _drop(stats: dict, reason: str, n: int) -> dict:
  dropped = dict(stats.get("dropped", {}))
  if n:
    dropped[reason] = dropped.get(reason, 0) + n
  return dict(stats, dropped=dropped)


def load_pairs(spec: str, seed: int = 0, limit: int = 0):
  """Pair examples and read stats for a data spec; 'synthetic:N' is the built-in gold-reward set,
  several specs may be joined with '+'; a trailing '@train' / '@eval' keeps one side of the
  90/10 prompt-hash split of the whole (`sources.hash_side`); a bare path is read by its
  extension (`resolve_spec`). stats always hold the accounting n_in == kept + sum(dropped)
  (dropped by reason: identical, invalid, skipped, over_limit, other_split_side) and
  empty_response (kept pairs with an empty response)."""
  spec, side = sources.split_side(spec)
  if side is not None:
    examples, stats = load_pairs(spec, seed, 0)
    kept = sources.hash_side(examples, side)
    stats = _drop(dict(stats, split_side=side, kept_side=len(kept)), "other_split_side",
                  len(examples) - len(kept))
    examples = kept
  elif "+" in spec:  # several sources joined
    examples, parts = [], {}
    prefix = spec.split(":", 1)[0] if ":" in spec.split("/")[0] else None
    for part in spec.split("+"):
      part = part if ":" in part or prefix is None else f"{prefix}:{part}"
      got, s = load_pairs(part, seed, 0)
      examples += got
      parts[part] = {k: v for k, v in s.items() if k != "invalid_examples"}
    stats = dict(_sum_stats(parts), parts=parts)
  elif spec.startswith("synthetic:"):
    n = _synthetic_count(spec)
    examples = synthetic.make_pairs(n, seed=seed)
    stats = {"read": n, "n_in": n, "kept": n, "dropped": {}, "empty_response": 0}
  else:
    examples, stats = sources.load_source(resolve_spec(spec))
  if limit and len(examples) > limit:
    stats = _drop(stats, "over_limit", len(examples) - limit)
    examples = examples[:limit]
  return examples, dict(stats, kept=len(examples))


def require_examples(spec: str, examples, stats: dict) -> None:
  """A source that yields no example is a DataError naming it and why (not a batch-size error
  further on): 'no records', or every record dropped with the counts by reason."""
  if examples:
    return
  n_in, dropped = stats.get("n_in", 0), stats.get("dropped", {})
  why = "no records" if not n_in else f"all {n_in} records dropped (" + ", ".join(
      f"{reason}: {n}" for reason, n in sorted(dropped.items())) + ")"
  raise DataError(spec, None, None, f"{why}; nothing to train on")


def train_eval_pairs(config):
  """(train examples, eval examples, stats): eval from `data.eval_source`, else a held-out
  fraction of the train source split by prompt hash (a prompt never lands on both sides);
  data.eval_fraction=0 without an eval_source trains without eval (no eval examples)."""
  d = config.data
  train, stats = load_pairs(d.source, config.seed, d.limit)
  require_examples(d.source, train, stats)
  eval_stats = None
  if d.eval_source:
    evals, eval_stats = load_pairs(d.eval_source, config.seed + 1)
    require_examples(d.eval_source, evals, eval_stats)
  else:
    train, evals = sources.split_by_prompt_hash(train, eval_fraction=d.eval_fraction, seed=config.seed)
    if d.eval_fraction and not (train and evals):
      raise ConfigError(f"splitting {d.source} by prompt hash left {len(train)} train and "
                        f"{len(evals)} eval pairs (too few distinct prompts): set data.eval_source")
  cut = max(len(evals) - d.max_eval_examples, 0) if d.max_eval_examples else 0
  evals = evals[:len(evals) - cut]
  stats = dict(stats, train_pairs=len(train), eval_pairs=len(evals))
  if cut:
    stats["eval_pairs_beyond_max_eval_examples"] = cut
  if eval_stats is not None:
    stats["eval_source_stats"] = {k: v for k, v in eval_stats.items() if k != "invalid_examples"}
  return train, evals, stats


def _read(stats, spec: str, n_in: int, kept: int, dropped=None) -> None:
  """Record one source's accounting in `stats` (when the caller asked for it)."""
  if stats is not None:
    stats[spec] = {"n_in": int(n_in), "kept": int(kept),
                   "dropped": {k: int(v) for k, v in (dropped or {}).items() if v}}


def load_objective_pairs(spec: str, names: Sequence[str], seed: int = 0,
                         stats: dict | None = None) -> list:
  """'SOURCE=>objective' joined with ';' (e.g. 'shared:hh_rlhf_harmless_test@train=>safety') ->
  ObjectivePairs; SOURCE is any `rmjax.data.specs.load_pairs` spec, optionally ending in
  '@train' / '@eval' for one side of the 90/10 prompt-hash split. `stats` (a dict) gets each
  SOURCE's {n_in, kept, dropped by reason}."""
  out = []
  for part in filter(None, (s.strip() for s in spec.split(";"))):
    if "=>" not in part:
      raise DataError(part, None, None, "expected SOURCE=>objective")
    src, objective = (s.strip() for s in part.rsplit("=>", 1))
    if src.startswith("synthetic_multi:"):
      tag_pairs([], objective, names, where=src)  # validates the name
      got = synthetic_multi.make_objective_pairs(int(src.split(":", 1)[1] or 500), objective,
                                                 names, seed)
      out.extend(got)
      _read(stats, src, len(got), len(got))
      continue
    pairs, st = load_pairs(src, seed)
    _read(stats, src, st["n_in"], len(pairs), st.get("dropped"))
    out.extend(tag_pairs(pairs, objective, names, where=src))
  return out


def load_ratings_spec(spec: str, objectives: Sequence, seed: int = 0, unrated=(),
                      missing: float = 0.1, stats: dict | None = None) -> list:
  """'synthetic_multi:N' (built-in, `unrated` objectives never rated), 'shared:NAME' (USR
  Topical-Chat, XSTest: `rmjax.data.rating_sources`) or 'json:PATH' / PATH, several joined
  with '+'. `stats` (a dict) gets each part's {n_in, kept, dropped by reason}."""
  names = [o.name for o in objectives]
  out = []
  for part in filter(None, (s.strip() for s in spec.split("+"))):
    if part.startswith("shared:"):
      got, st = rating_sources.load_shared_ratings(part[7:], objectives)
      n_in, bad = st.get("read", len(got)), st.get("invalid", 0)
      _read(stats, part, n_in, len(got), {
          "invalid": bad, "no rating of this run's objectives": n_in - bad - len(got)})
    elif part.startswith("synthetic_multi:"):
      got = synthetic_multi.make_ratings(int(part.split(":", 1)[1] or 2000), seed, names,
                                         missing=missing, unrated=tuple(unrated))
      _read(stats, part, len(got), len(got))
    else:  # a bad record is an error, none is dropped
      got = read_ratings(part[5:] if part.startswith("json:") else part, objectives)
      _read(stats, part, len(got), len(got))
    out.extend(got)
  return out


def load_pairs_spec(spec: str, seed: int = 0, stats: dict | None = None) -> list:
  """Pairs: 'synthetic_multi:N' or any `rmjax.data.specs.load_pairs` spec, optionally
  ending in '@train' / '@eval' (one side of the prompt-hash split). `stats` (a dict) gets
  {spec: {n_in, kept, dropped by reason}}."""
  if spec.startswith("synthetic_multi:"):
    got = synthetic_multi.make_pairs(int(spec.split(":", 1)[1] or 2000), seed)
    _read(stats, spec, len(got), len(got))
    return got
  got, st = load_pairs(spec, seed)
  _read(stats, spec, st["n_in"], len(got), st.get("dropped"))
  return got
