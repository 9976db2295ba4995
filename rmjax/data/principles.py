"""SALMON principles: load + validate principle collections, render the principle-conditioned
reward-model input.

A collection is a JSON list of `{"dimension": str, "definition": str, "negative_definition"?: str,
"weight"?: number}` (the SALMON repo's `prompts/principles/*.json`; DESIGN.md's `{"name", "text"}`
is accepted as an alias). Every problem is a DataError naming the file, the entry index and the
field, e.g. `p.json: field '[3].definition': missing`.

The RM input (ALGORITHMS.md 3.6) puts the response FIRST, then the instruction, then the sampled
principles as "- ..." bullets, and ends on an unfinished line ("... the quality of the output is")
whose last token carries the reward. The pieces are tokenized apart so that the instruction can be
cut from the left (`query_len`) and the response from the right (`response_len`) independently.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Optional, Sequence

from rmjax.errors import ConfigError, DataError
from rmjax.data.sources import shared_data_root

DEFAULT_PATH = os.path.join(os.path.dirname(__file__), "default_principles.json")


@dataclasses.dataclass(frozen=True)
class Principle:
  dimension: str
  definition: str
  negative_definition: Optional[str] = None
  weight: float = 1.0

  def text(self, negated: bool = False) -> str:
    """The bullet text: the definition, or its negation (the RM then prefers the opposite)."""
    if not negated:
      return self.definition
    if not self.negative_definition:
      raise ConfigError(f"principle {self.dimension!r} has no negative_definition to negate")
    return self.negative_definition


def _string(obj, key, path, i, required):
  if key not in obj:
    if required:
      raise DataError(path, None, f"[{i}].{key}", "missing")
    return None
  value = obj[key]
  if not isinstance(value, str) or not value.strip():
    raise DataError(path, None, f"[{i}].{key}", "must be a non-empty string")
  return value.strip()


def parse_principles(data, path: str = "<principles>", require_negative: bool = False,
                     require_weight: bool = False) -> list[Principle]:
  """A decoded JSON value -> [Principle]; DataError naming path and `[index].field` otherwise."""
  if not isinstance(data, list):
    raise DataError(path, None, None, f"expected a JSON list of principles, got {type(data).__name__}")
  if not data:
    raise DataError(path, None, None, "empty principle list")
  out, seen = [], set()
  for i, obj in enumerate(data):
    if not isinstance(obj, dict):
      raise DataError(path, None, f"[{i}]", f"expected an object, got {type(obj).__name__}")
    obj = dict(obj)
    for alias, key in (("name", "dimension"), ("text", "definition")):
      if alias in obj and key not in obj:
        obj[key] = obj.pop(alias)
    dim = _string(obj, "dimension", path, i, True)
    definition = _string(obj, "definition", path, i, True)
    negative = _string(obj, "negative_definition", path, i, require_negative)
    weight = obj.get("weight", None)
    if weight is None:
      if require_weight:
        raise DataError(path, None, f"[{i}].weight", "missing")
      weight = 1.0
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (
        math.isfinite(weight) and weight > 0):
      raise DataError(path, None, f"[{i}].weight", f"must be a positive number, got {weight!r}")
    if dim in seen:
      raise DataError(path, None, f"[{i}].dimension", f"duplicate dimension {dim!r}")
    seen.add(dim)
    out.append(Principle(dim, definition, negative, float(weight)))
  return out


def load_principles(spec=None, **kw) -> list[Principle]:
  """Principles from a path (.json list), 'default' / None (rmjax's own set), 'shared:NAME'
  (a file of ../shared/data/salmon_principles, e.g. 'shared:principle_collection_rm'), or an
  already-decoded list (of dicts or Principles)."""
  if isinstance(spec, (list, tuple)):
    if spec and all(isinstance(p, Principle) for p in spec):
      return list(spec)
    return parse_principles([dataclasses.asdict(p) if isinstance(p, Principle) else p for p in spec],
                            **kw)
  if spec in (None, "", "default"):
    path = DEFAULT_PATH
  elif str(spec).startswith("shared:"):
    name = str(spec)[7:]
    path = str(shared_data_root(required=True) / "salmon_principles" /
               (name if name.endswith(".json") else name + ".json"))
  else:
    path = os.path.expanduser(str(spec))
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except FileNotFoundError:
    raise DataError(path, None, None, "file not found") from None
  except json.JSONDecodeError as e:
    raise DataError(path, e.lineno, None, f"malformed JSON: {e.msg}") from None
  return parse_principles(data, path, **kw)


def by_dimension(principles: Sequence[Principle]) -> dict:
  return {p.dimension: p for p in principles}


# ------------------------------------------------------------------------------------------------
# RM input rendering
# ------------------------------------------------------------------------------------------------

# Paraphrase of SALMON's reward-model prompt (v0): reviewer system line, the response first, the
# instruction second, the principles as bullets, and an unfinished verdict line.
TEMPLATES = {
    "v0": dict(
        head=("You are a reviewer whose goal is to judge the quality of an AI system's response "
              "to an instruction.\n\n### AI system's response\n"),
        middle="\n\n### Instruction to the AI system\n",
        guide=("\n\n### Annotation guideline\nJudge the response along these dimensions:\n"),
        tail=("\nA good response satisfies all of the above.\n\n### Reviewer\n"
              "Based on the guideline, the quality of the output is")),
    # Same order and structure, short enough for the byte-level tiny model.
    "compact": dict(head="Response:\n", middle="\nInstruction:\n", guide="\nPrinciples:\n",
                    tail="Quality:"),
}


def instruction_text(messages) -> str:
  """Prompt messages -> the instruction text: one user turn as is, longer chats as a transcript."""
  msgs = [m for m in messages if m["role"] != "system"] or list(messages)
  if len(msgs) == 1:
    return msgs[0]["content"]
  return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in msgs)


def principle_bullets(texts: Sequence[str]) -> str:
  return "".join(f"- {t}\n" for t in texts)


def encode_rm_input(tokenizer, instruction: str, response: str, principle_texts: Sequence[str],
                    query_len: int, response_len: int, template: str = "v0") -> list[int]:
  """Token ids of the principle-conditioned RM input; the reward is read at the last id.

  instruction: left-truncated to `query_len` tokens; response: right-truncated to
  `response_len` tokens; principle texts are kept whole (their order is the sampled order).
  """
  if template not in TEMPLATES:
    raise ConfigError(f"unknown SALMON template {template!r}; known: {sorted(TEMPLATES)}")
  if not principle_texts:
    raise ConfigError("the RM input needs at least one principle")
  t = TEMPLATES[template]
  enc = lambda s: list(tokenizer.encode(s, add_special_tokens=False))
  resp = enc(response)[:response_len]
  query = enc(instruction)
  query = query[-query_len:] if len(query) > query_len else query
  return (enc(t["head"]) + resp + enc(t["middle"]) + query +
          enc(t["guide"] + principle_bullets(principle_texts) + t["tail"]))
