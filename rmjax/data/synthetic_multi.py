"""Built-in multi-objective data with KNOWN per-objective ground truth (ArmoRM's tiny run).

Three prompt categories, each judged by a different objective (so a context-dependent gate beats
any fixed mixture):
  math     "What is 3 plus 4?"               -> correctness
  harmful  "How do I steal a car?"            -> safety
  open     "Say something kind about cats."   -> helpfulness  (prompt from rmjax.data.synthetic)
Responses are 3-12 short words from marker pools, so a byte-level tiny model can read them:
  helpfulness  #HELP words (example, detail, ...)           true = min(n, 3) / 3
  correctness  #RIGHT - #WRONG words                         true = clip((d + 2) / 4, 0, 1)
  safety       #UNSAFE words (weapon, poison, ...)           true = 1 - min(n, 2) / 2
  coherence    #GARBLE words (zxq, ...)                      true = 1 - min(n, 2) / 2
  verbosity    word count                                   true = (n - 3) / 9
Verbosity is a confounder: the *rated* helpfulness that stage 1 sees is 0.6 true + 0.4
verbosity (raters like long answers), while preferences (`make_pairs`) follow the true value of
the category's objective. The objective order puts verbosity at index 4, like ArmoRM's 19.
"""

from __future__ import annotations

import numpy as np

from rmjax.data import synthetic
from rmjax.data.pairs import make_pair
from rmjax.data.ratings import ObjectivePair, RatingExample

OBJECTIVES = ("helpfulness", "correctness", "safety", "coherence", "verbosity")
CATEGORIES = ("math", "harmful", "open")
CATEGORY_OBJECTIVE = {"math": "correctness", "harmful": "safety", "open": "helpfulness"}
HELP = ("example", "detail", "because", "step", "explain")
RIGHT = ("exact", "right", "true", "proof")
WRONG = ("wrong", "false", "error", "guess")
UNSAFE = ("weapon", "poison", "attack", "bomb")
GARBLE = ("zxq", "qvk", "jjx")
FILLER = synthetic.NEUTRAL
HARMS = ("steal a car", "make poison", "hack a bank", "hurt someone", "build a bomb")
MIN_WORDS, MAX_WORDS = 3, 12
HELP_VERBOSITY_BIAS = 0.4


def make_prompt(rng) -> tuple:
  """(category, prompt text)."""
  cat = CATEGORIES[rng.integers(len(CATEGORIES))]
  if cat == "math":
    a, b = rng.integers(1, 10, size=2)
    return cat, f"What is {a} plus {b}?"
  if cat == "harmful":
    return cat, f"How do I {HARMS[rng.integers(len(HARMS))]}?"
  topic = synthetic.TOPICS[rng.integers(len(synthetic.TOPICS))]
  return cat, synthetic.make_prompt("kind", topic)


def category(prompt: str) -> str:
  """Category of a prompt made here ('open' for anything else)."""
  if prompt.startswith("What is ") and " plus " in prompt:
    return "math"
  if prompt.startswith("How do I "):
    return "harmful"
  return "open"


def sample_response(rng) -> str:
  """3-12 words from the marker pools and filler; longer answers carry more words of each kind."""
  n = int(rng.integers(MIN_WORDS, MAX_WORDS + 1))
  pools = (HELP, RIGHT, WRONG, UNSAFE, GARBLE, FILLER)
  probs = np.array([0.16, 0.14, 0.12, 0.1, 0.08, 0.4])
  words = []
  for _ in range(n):
    pool = pools[rng.choice(len(pools), p=probs)]
    words.append(pool[rng.integers(len(pool))])
  return " ".join(words) + "."


def true_scores(response: str) -> dict:
  """Ground-truth objectives in [0, 1] (see the module docstring)."""
  words = response.lower().replace(".", " ").split()
  count = lambda pool: sum(w in pool for w in words)
  return {
      "helpfulness": min(count(HELP), 3) / 3.0,
      "correctness": float(np.clip((count(RIGHT) - count(WRONG) + 2) / 4.0, 0.0, 1.0)),
      "safety": 1.0 - min(count(UNSAFE), 2) / 2.0,
      "coherence": 1.0 - min(count(GARBLE), 2) / 2.0,
      "verbosity": (len(words) - MIN_WORDS) / float(MAX_WORDS - MIN_WORDS),
  }


def rated_scores(response: str) -> dict:
  """What raters report: true scores, with helpfulness biased towards long answers."""
  s = true_scores(response)
  s["helpfulness"] = (1 - HELP_VERBOSITY_BIAS) * s["helpfulness"] + HELP_VERBOSITY_BIAS * s["verbosity"]
  return s


def gold_reward(prompt: str, response: str) -> float:
  """The preference-generating reward: the true score of the prompt category's objective."""
  return true_scores(response)[CATEGORY_OBJECTIVE[category(prompt)]]


def make_ratings(n: int, seed: int = 0, names=OBJECTIVES, missing: float = 0.1,
                 unrated=()) -> list:
  """n RatingExamples (ratings in `names` order, [0, 1]); each rating is missing (NaN) with
  probability `missing`, and objectives in `unrated` are never rated (pairs-only objectives)."""
  rng = np.random.default_rng([seed, 11])
  out = []
  for i in range(n):
    cat, prompt = make_prompt(rng)
    response = sample_response(rng)
    s = rated_scores(response)
    r = np.array([s.get(k, np.nan) for k in names], np.float32)
    r[rng.random(len(names)) < missing] = np.nan
    for k in unrated:
      r[list(names).index(k)] = np.nan
    out.append(RatingExample(prompt=(("user", prompt),), response=response, ratings=r,
                             subset=cat, source=f"synthetic_multi:{i + 1}"))
  return out


def _pair(rng, score, prompt=None, cat=None, line=0):
  while True:
    if prompt is None:
      c, p = make_prompt(rng)
    else:
      c, p = cat, prompt
    a, b = sample_response(rng), sample_response(rng)
    ga, gb = score(p, a), score(p, b)
    if ga != gb:
      chosen, rejected = (a, b) if ga > gb else (b, a)
      return make_pair(p, chosen, rejected, subset=c, path="synthetic_multi", line=line)


def make_pairs(n: int, seed: int = 0) -> list:
  """n PairExamples, chosen = higher `gold_reward` (ties resampled); subset = category."""
  rng = np.random.default_rng([seed, 12])
  return [_pair(rng, gold_reward, line=i + 1) for i in range(n)]


def make_objective_pairs(n: int, objective: str, names=OBJECTIVES, seed: int = 0) -> list:
  """n ObjectivePairs judged on `objective`'s true score (pairs-only labels, like hh-rlhf
  harmless pairs for a safety objective)."""
  rng = np.random.default_rng([seed, 13, list(names).index(objective)])
  score = lambda p, r: true_scores(r)[objective]
  j = list(names).index(objective)
  return [ObjectivePair(_pair(rng, score, line=i + 1), j) for i in range(n)]
