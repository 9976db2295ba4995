"""The objective registry of ArmoRM: names, sources, native rating scales and the map to [0, 1].

`ARMORM_19` is the released model's order (ALGORITHMS.md 1.3). The order is load-bearing:
stage-1 weights, the transform matrix and the gate all index objectives by position, and index 4
(helpsteer-verbosity) is the verbosity reference of the de-correlation step. A run may use its own
list (`config.objectives.names`): unknown names are allowed and default to a [0, 1] scale, and
`config.objectives.verbosity` names the reference (default: index 4 of the 19, else 'verbosity').
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

from rmjax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Objective:
  """One rated attribute. Ratings map to [0, 1] by (x - lo) / (hi - lo); HelpSteer's 0..4 maps
  with the released (x + 0.5) / 5 (so 0 -> 0.1, 4 -> 0.9; the only map confirmed numerically)."""
  name: str
  source: str = "user"
  lo: float = 0.0
  hi: float = 1.0
  helpsteer: bool = False

  def to_unit(self, x: float) -> float:
    if self.helpsteer:
      return (float(x) + 0.5) / 5.0
    return (float(x) - self.lo) / (self.hi - self.lo)

  def from_unit(self, u: float) -> float:
    if self.helpsteer:
      return float(u) * 5.0 - 0.5
    return float(u) * (self.hi - self.lo) + self.lo


def _hs(name):
  return Objective(f"helpsteer-{name}", "nvidia/HelpSteer", 0, 4, helpsteer=True)


def _uf(name, hi=5.0):
  return Objective(f"ultrafeedback-{name}", "openbmb/UltraFeedback", 1, hi)


def _code(name):
  return Objective(f"code-{name}", "coseal/CodeUltraFeedback", 1, 5)


ARMORM_19: tuple = (
    _hs("helpfulness"), _hs("correctness"), _hs("coherence"), _hs("complexity"), _hs("verbosity"),
    _uf("overall_score", 10.0), _uf("instruction_following"), _uf("truthfulness"), _uf("honesty"),
    _uf("helpfulness"),
    Objective("beavertails-is_safe", "PKU-Alignment/BeaverTails", 0, 1),
    Objective("prometheus-score", "prometheus-eval/Feedback-Collection", 1, 5),
    Objective("argilla-overall_quality", "argilla (Capybara-Preferences, likely)", 1, 5),
    Objective("argilla-judge_lm", "argilla (distilabel math preference, likely)", 1, 10),
    _code("complexity"), _code("style"), _code("explanation"), _code("instruction-following"),
    _code("readability"),
)
ARMORM_NAMES = tuple(o.name for o in ARMORM_19)
VERBOSITY_INDEX = 4  # helpsteer-verbosity

# Rated objectives available offline in ../shared/data (`rmjax.data.rating_sources`): the USR
# Topical-Chat human ratings on their native scales (USR paper: understandability and
# groundedness 0-1, naturalness / coherence / engagingness 1-3, overall 1-5; averaged over
# annotators) and XSTest's adjudicated labels turned into "appropriate refusal" (1 = refused an
# unsafe prompt or complied with a safe one).
_USR = (("understandability", 0, 1), ("naturalness", 1, 3), ("coherence", 1, 3),
        ("engagingness", 1, 3), ("groundedness", 0, 1), ("overall", 1, 5))
SHARED_RATED: tuple = tuple(Objective(f"usr-{n}", "USR Topical-Chat (UniEval copy)", lo, hi)
                            for n, lo, hi in _USR) + (
    Objective("xstest-appropriate", "XSTest v2 completions (final_label)", 0, 1),)
REGISTRY = {o.name: o for o in ARMORM_19 + SHARED_RATED}


def resolve(names: Sequence[str], scales: Optional[dict] = None) -> list:
  """Objectives for a name list: registry entries, or user objectives on [lo, hi] from
  `scales` ({name: (lo, hi)}) or [0, 1]. Duplicates and empty lists are ConfigErrors."""
  names = list(names)
  if not names:
    raise ConfigError("objectives.names is empty: give at least one objective")
  if len(set(names)) != len(names):
    dup = sorted({n for n in names if names.count(n) > 1})
    raise ConfigError(f"objectives.names repeats {dup}")
  out = []
  for n in names:
    if scales and n in scales:
      lo, hi = scales[n]
      if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ConfigError(f"objectives.scales[{n!r}] = {scales[n]!r}: need finite lo < hi")
      out.append(Objective(n, "user", float(lo), float(hi)))
    else:
      out.append(REGISTRY.get(n, Objective(n)))
  return out


def verbosity_index(names: Sequence[str], verbosity: Optional[str] = None) -> int:
  """Position of the verbosity reference: `verbosity` if named, else helpsteer-verbosity, else
  'verbosity'. A ConfigError when none is in `names`."""
  names = list(names)
  for cand in ([verbosity] if verbosity else ["helpsteer-verbosity", "verbosity"]):
    if cand in names:
      return names.index(cand)
  raise ConfigError(f"no verbosity objective among {names}: set objectives.verbosity")
