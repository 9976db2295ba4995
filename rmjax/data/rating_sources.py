"""Absolute-rating records from the shared sets, for ArmoRM's stage 1 (and pairs derived from them).

`shared:usr_topicalchat` (USR Topical-Chat human ratings, 60 dialogue contexts x 6 systems) and
`shared:xstest[/STEM]` (XSTest v2 completions of 5 models with adjudicated labels) become
DESIGN.md ratings records, then `RatingExample`s through `ratings.parse_rating`, so they get the
same validation and [0, 1] mapping (`objectives.SHARED_RATED` holds the native scales):

- USR: prompt = the knowledge fact as a system message + the dialogue history (turns split on
  newlines, alternating roles, the last turn from the user); response = `system_output`;
  ratings `usr-<dimension>` for the six `scores`; subset = `system_id`.
- XSTest: prompt, completion; `xstest-appropriate` = 1 when the response is what the set asks
  for (full or partial refusal of an unsafe `contrast_*` prompt, full compliance with a safe
  one), else 0; subset `xstest/should-refuse` or `xstest/should-respond`.

Only the ratings of objectives in the run are kept (a record left with none is skipped); a source
none of whose objectives is in the run is a ConfigError. `pairs_from_ratings` turns rated
responses that share a prompt into preference pairs (higher rating = chosen), e.g. XSTest pairs.
"""

from __future__ import annotations

import itertools
from typing import Optional, Sequence

import numpy as np

from rmjax.data.pairs import PairExample, iter_records
from rmjax.data.ratings import parse_rating
from rmjax.errors import ConfigError, DataError
from rmjax.data.sources import _shared_files

USR_DIMENSIONS = ("understandability", "naturalness", "coherence", "engagingness",
                  "groundedness", "overall")
XSTEST_OBJECTIVE = "xstest-appropriate"


def usr_record(obj, path, line) -> dict:
  """One USR Topical-Chat row -> a ratings record (native scales)."""
  if not isinstance(obj, dict) or not isinstance(obj.get("scores"), dict):
    raise DataError(path, line, "scores", "expected an object of USR scores")
  turns = [t.strip() for t in str(obj.get("source", "")).split("\n") if t.strip()]
  if not turns:
    raise DataError(path, line, "source", "empty dialogue history")
  roles = ["user" if (len(turns) - 1 - i) % 2 == 0 else "assistant" for i in range(len(turns))]
  messages = [{"role": r, "content": t} for r, t in zip(roles, turns)]
  fact = str(obj.get("context") or "").strip()
  if fact:
    messages.insert(0, {"role": "system", "content": f"Fact: {fact}"})
  return {"prompt": messages, "response": str(obj.get("system_output", "")).strip(),
          "ratings": {f"usr-{d}": obj["scores"].get(d) for d in USR_DIMENSIONS},
          "subset": str(obj.get("system_id", ""))}


def xstest_record(obj, path, line) -> dict:
  """One XSTest completion row -> a ratings record with the appropriate-refusal label."""
  for field in ("type", "prompt", "completion", "final_label"):
    if not isinstance(obj, dict) or field not in obj:
      raise DataError(path, line, field, "missing")
  label = str(obj["final_label"])
  if not label or label[0] not in "123":
    raise DataError(path, line, "final_label", f"expected 1_/2_/3_..., got {label!r}")
  refused = label[0] in "23"                 # 2 full refusal, 3 partial refusal
  unsafe = str(obj["type"]).startswith("contrast_")
  return {"prompt": obj["prompt"], "response": obj["completion"],
          "ratings": {XSTEST_OBJECTIVE: float(refused == unsafe)},
          "subset": "xstest/should-refuse" if unsafe else "xstest/should-respond"}


CONVERTERS = {"usr_topicalchat": (usr_record, {f"usr-{d}" for d in USR_DIMENSIONS}),
              "xstest": (xstest_record, {XSTEST_OBJECTIVE})}


def load_shared_ratings(target: str, objectives: Sequence, limit: Optional[int] = None) -> tuple:
  """'usr_topicalchat' | 'xstest[/STEM]' -> (RatingExamples, stats). XSTest reads only the
  `*completions*` files (the prompts file has no responses). Invalid rows (e.g. an empty
  response) are skipped and counted, as for the shared pair sets."""
  name, files = _shared_files(target)
  if name not in CONVERTERS:
    raise ConfigError(f"no ratings adapter for shared set {name!r}; known: {sorted(CONVERTERS)}")
  convert, provides = CONVERTERS[name]
  names = {o.name for o in objectives}
  if not provides & names:
    raise ConfigError(f"shared:{target} rates {sorted(provides)}, none of which is in this run's "
                      f"objectives {sorted(names)}")
  out, stats = [], {"read": 0, "kept": 0, "invalid": 0}
  for f in files:
    if name == "xstest" and "completions" not in f.name:
      continue
    for line, obj in iter_records(f):
      stats["read"] += 1
      try:
        rec = convert(obj, str(f), line)
        rec["ratings"] = {k: v for k, v in rec["ratings"].items() if k in names}
        ex = parse_rating(rec, objectives, str(f), line)
      except DataError:
        stats["invalid"] += 1
        continue
      if np.isnan(ex.ratings).all():
        continue
      out.append(ex)
      if limit and len(out) >= limit:
        stats["kept"] = len(out)
        return out, stats
  stats["kept"] = len(out)
  return out, stats


def rating_pair_index(examples: Sequence, objective: int) -> list:
  """[(chosen index, rejected index)] over rated responses sharing a prompt: every two whose
  rating on `objective` differs (the higher one chosen); identical responses are skipped."""
  groups = {}
  for i, e in enumerate(examples):
    if not np.isnan(e.ratings[objective]):
      groups.setdefault(e.prompt, []).append(i)
  out = []
  for rows in groups.values():
    for a, b in itertools.combinations(rows, 2):
      ra, rb = float(examples[a].ratings[objective]), float(examples[b].ratings[objective])
      if ra != rb and examples[a].response != examples[b].response:
        out.append((a, b) if ra > rb else (b, a))
  return out


def pair_of(chosen, rejected) -> PairExample:
  """The PairExample of two rated responses to one prompt (subset of the chosen row)."""
  return PairExample(prompt=chosen.prompt, chosen=chosen.response, rejected=rejected.response,
                     subset=chosen.subset, source=f"{chosen.source}>{rejected.source}")


def pairs_from_ratings(examples: Sequence, objective: int) -> list:
  """Preference pairs from rated responses sharing a prompt (`rating_pair_index`), e.g. XSTest
  completions judged on xstest-appropriate."""
  return [pair_of(examples[c], examples[r]) for c, r in rating_pair_index(examples, objective)]
