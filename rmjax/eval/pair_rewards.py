"""The per-pair rewards file: what `rmjax eval` writes beside its report and `rmjax compare
--rewards` reads, so any scorer (a workdir, an HF RM, a head an experiment script trained on a
feature cache) can be compared on the same pairs.

One JSON line per scored pair:
  id               a stable hash of the pair's content (prompt, chosen, rejected): 16 hex digits
                   of sha256, '#2', '#3'... appended to repeats of an identical pair, so the same
                   pairs read from another path or format get the same ids
  set              the data spec the pair came from; subset: its subset name or null
  reward_chosen, reward_rejected   the model's rewards (finite floats)
  len_chosen, len_rejected         the responses' lengths in characters
"""

from __future__ import annotations

import hashlib
import json
import math

from rmjax.data.records import iter_records
from rmjax.errors import DataError

FIELDS = ("id", "set", "subset", "reward_chosen", "reward_rejected", "len_chosen", "len_rejected")
MAX_REPORTED = 5  # bad lines named in one error


def pair_ids(pairs) -> list:
  """Content ids of PairExamples (see the module docstring), in order."""
  ids, seen = [], {}
  for p in pairs:
    blob = json.dumps([list(map(list, p.prompt)), p.chosen, p.rejected], ensure_ascii=False)
    h = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
    seen[h] = seen.get(h, 0) + 1
    ids.append(h if seen[h] == 1 else f"{h}#{seen[h]}")
  return ids


def rewards_records(pairs, set_name: str, r_c, r_r) -> list:
  """The file's lines (dicts in FIELDS order) for scored pairs of data spec `set_name`."""
  return [{"id": i, "set": set_name, "subset": p.subset, "reward_chosen": float(c),
           "reward_rejected": float(r), "len_chosen": len(p.chosen),
           "len_rejected": len(p.rejected)}
          for i, p, c, r in zip(pair_ids(pairs), pairs, r_c, r_r)]


def _problem(obj) -> str | None:
  if not isinstance(obj, dict):
    return "each line must be a JSON object"
  missing = [f for f in FIELDS if f not in obj]
  if missing:
    return f"missing field(s) {', '.join(missing)}"
  if not isinstance(obj["id"], str) or not isinstance(obj["set"], str):
    return "id and set must be strings"
  for f in ("reward_chosen", "reward_rejected"):
    if isinstance(obj[f], bool) or not isinstance(obj[f], (int, float)) or not math.isfinite(obj[f]):
      return f"{f} must be a finite number"
  for f in ("len_chosen", "len_rejected"):
    if isinstance(obj[f], bool) or not isinstance(obj[f], int) or obj[f] < 0:
      return f"{f} must be a non-negative integer"
  return None


def read_rewards(path: str) -> dict:
  """{set: {id: record}} from a rewards file, every line checked (bad lines named, up to
  MAX_REPORTED, in one DataError); an id repeated within a set, or a file with no lines, is an
  error too."""
  sets, bad = {}, []
  for line, obj in iter_records(path, bad="yield"):
    problem = str(obj) if isinstance(obj, DataError) else _problem(obj)
    if problem is None and obj["id"] in sets.get(obj["set"], {}):
      problem = f"id {obj['id']!r} repeated in set {obj['set']!r}"
    if problem is not None:
      bad.append(problem if isinstance(obj, DataError) else f"{path}:{line}: {problem}")
      continue
    sets.setdefault(obj["set"], {})[obj["id"]] = obj
  if bad:
    more = f" (and {len(bad) - MAX_REPORTED} more)" if len(bad) > MAX_REPORTED else ""
    raise DataError(path, None, None, f"{len(bad)} bad rewards line(s): "
                    + "; ".join(bad[:MAX_REPORTED]) + more)
  if not sets:
    raise DataError(path, None, None, "no rewards in the file (empty)")
  return sets
