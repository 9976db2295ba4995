"""Absolute ratings and objective-tagged pairs, the two label kinds of ArmoRM's stage 1.

Ratings (DESIGN.md section 5): `{"prompt": str | [messages], "response": str,
"ratings": {"<objective>": number | null}, "subset"?: str}`. null = not rated (masked in the
loss); NaN/inf, non-numbers, objectives outside the run's list and missing fields are DataErrors
naming `file:line: field`. Ratings are mapped to [0, 1] with each objective's scale
(`rmjax.data.objectives`).

Objective-tagged pairs: a PairExample plus the objective it judges (e.g. hh-rlhf harmless pairs
-> a safety objective); stage 1 fits that objective's head with BT on them. In files, a pair
record may carry `"objective": name`; a spec `SOURCE=>objective` tags every pair of a source.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

from rmjax.data.pairs import PairExample, check_text, iter_records
from rmjax.data.tokenize import normalize_prompt
from rmjax.errors import DataError


@dataclasses.dataclass(frozen=True)
class RatingExample:
  """One rated response. ratings: [O] float32 in [0, 1], NaN where missing."""
  prompt: tuple
  response: str
  ratings: np.ndarray
  subset: Optional[str] = None
  source: str = ""

  @property
  def messages(self):
    return [{"role": r, "content": c} for r, c in self.prompt]


@dataclasses.dataclass(frozen=True)
class ObjectivePair:
  """A comparison judged on one objective (index into the run's objective list)."""
  pair: PairExample
  objective: int


def parse_rating(obj, objectives: Sequence, path="<data>", line=None) -> RatingExample:
  """One ratings record -> RatingExample; `objectives` from `objectives.resolve`."""
  if not isinstance(obj, dict):
    raise DataError(path, line, None, "each line must be a JSON object")
  for field in ("prompt", "response", "ratings"):
    if field not in obj:
      raise DataError(path, line, field, "missing")
  messages = normalize_prompt(obj["prompt"], path, line, "prompt")
  check_text(obj["response"], path, line, "response")
  raw = obj["ratings"]
  if not isinstance(raw, dict):
    raise DataError(path, line, "ratings", f"expected an object {{objective: number}}, got "
                    f"{type(raw).__name__}")
  index = {o.name: i for i, o in enumerate(objectives)}
  out = np.full(len(objectives), np.nan, np.float32)
  for name, value in raw.items():
    field = f"ratings.{name}"
    if name not in index:
      raise DataError(path, line, field, f"unknown objective (this run has {list(index)})")
    if value is None:
      continue
    if isinstance(value, bool):
      value = float(value)  # BeaverTails is_safe: True -> 1, False -> 0
    if not isinstance(value, (int, float)):
      raise DataError(path, line, field, f"expected a number or null, got {type(value).__name__}")
    if not math.isfinite(value):
      raise DataError(path, line, field, f"not a finite number ({value}); use null for missing")
    out[index[name]] = objectives[index[name]].to_unit(value)
  subset = obj.get("subset")
  if subset is not None and not isinstance(subset, str):
    raise DataError(path, line, "subset", f"expected a string, got {type(subset).__name__}")
  return RatingExample(prompt=tuple((m["role"], m["content"]) for m in messages),
                       response=obj["response"], ratings=out, subset=subset,
                       source=f"{path}:{line}")


def read_ratings(path: str, objectives: Sequence, limit: Optional[int] = None) -> list:
  """All ratings records of a JSON Lines (or .json list) file; the first bad one raises."""
  out = []
  for line, obj in iter_records(path):
    out.append(parse_rating(obj, objectives, path, line))
    if limit and len(out) >= limit:
      break
  return out


def write_ratings(path: str, examples: Sequence[RatingExample], objectives: Sequence) -> None:
  """Inverse of `read_ratings` (native scales; NaN -> null)."""
  import json
  with open(path, "w") as f:
    for e in examples:
      r = {o.name: (None if np.isnan(v) else o.from_unit(v)) for o, v in zip(objectives, e.ratings)}
      rec = {"prompt": e.messages, "response": e.response, "ratings": r}
      if e.subset:
        rec["subset"] = e.subset
      f.write(json.dumps(rec) + "\n")


def tag_pairs(pairs: Sequence[PairExample], objective: str, names: Sequence[str],
              where: str = "objective pairs") -> list:
  """Objective-tagged pairs; the objective must be one of the run's `names`."""
  if objective not in names:
    raise DataError(where, None, "objective", f"unknown objective {objective!r} (this run has "
                    f"{list(names)})")
  j = list(names).index(objective)
  return [ObjectivePair(p, j) for p in pairs]


def length_rating(texts: Sequence[str]) -> np.ndarray:
  """log(1 + characters) / log(1 + 4000), clipped to [0, 1]: a verbosity objective for data
  without a rated one (the shared sets have no HelpSteer verbosity). [N] float32."""
  n = np.array([len(t) for t in texts], np.float64)
  return np.clip(np.log1p(n) / np.log1p(4000.0), 0.0, 1.0).astype(np.float32)
