"""SALMON: judge scores per (pair, principle) -> principle-conditioned RM training examples.

Follows ALGORITHMS.md 3.5 (IBM/SALMON `aggregate_synthetic_preference.py`):
  1. v_d = variance of all stored judge scores of dimension d (both orders pooled);
  2. s_d = mean(s12, s21) / v_d when both orders agree in sign, else 0;
  3. `passes` passes over the pairs; each draws, per pair, a shuffled dimension order and
     K ~ Geometric(p) on {1, 2, ...}, re-drawn until K <= min(max_k, |D|); the first K dims are used;
  4. each used dimension is negated with probability 1/2 (RM sees its negative_definition; the
     score's sign flips);
  5. label from the dominant principle argmax_d |s_d|: 1 if > 0, 2 if < 0, skipped if 0;
  6. symbolic rule: "As an AI language model" in exactly one output -> with prob. 1/2 prefer the
     other (the language-ID rule needs fastText and is not implemented);
  7. label noise: flip with prob. 0.10 (0.25 when a rule fired), on purpose;
  8. random A/B swap (label swapped with the outputs).
Everything is drawn from one `np.random.default_rng(seed)` in record order: same input and seed,
same output.

Input records (what `rmjax collect` writes): {"id", "prompt", "output_1", "output_2",
"scores": {dimension: [s12, s21]}}; s12 > 0 means the judge prefers output_1 with output_1
shown first, s21 > 0 means it prefers output_1 with the order swapped.
"""

from __future__ import annotations

import collections
import functools
from typing import Optional, Sequence

import numpy as np

from rmjax.data.principles import Principle, by_dimension, load_principles
from rmjax.errors import ConfigError
from rmjax.data import synthetic

AI_PHRASE = "as an ai language model"


def consistency_label(s12: float, s21: float) -> int:
  """1: output_1 preferred in both orders; 2: output_2 in both; 0: inconsistent or a tie."""
  if s12 > 0 and s21 > 0:
    return 1
  if s12 < 0 and s21 < 0:
    return 2
  return 0


def sample_k(rng: np.random.Generator, p: float, max_k: int) -> int:
  """K ~ Geometric(p) on {1, 2, ...}, re-drawn until K <= max_k (truncation by rejection)."""
  while True:
    k = int(rng.geometric(p))
    if k <= max_k:
      return k


def truncated_geometric_pmf(p: float, max_k: int) -> np.ndarray:
  """P(K = k) for k = 1..max_k of the truncated geometric (for tests and reports)."""
  k = np.arange(1, max_k + 1)
  pmf = p * (1 - p) ** (k - 1)
  return pmf / pmf.sum()


def normalized_scores(records: Sequence[dict], dims: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """(s [N, D] variance-normalised consistent scores, v [D] per-dimension variances)."""
  raw = np.asarray([[r["scores"][d] for d in dims] for r in records], np.float64)  # [N, D, 2]
  if raw.size == 0:
    return np.zeros((0, len(dims))), np.ones(len(dims))
  v = raw.transpose(1, 0, 2).reshape(len(dims), -1).var(axis=1)  # [D], both orders pooled
  v = np.where(v > 0, v, 1.0)
  s12, s21 = raw[..., 0], raw[..., 1]
  agree = np.sign(s12) == np.sign(s21)
  s = np.where(agree, (s12 + s21) / 2.0 / v, 0.0)
  return s, v


def _has_ai_phrase(text: str) -> bool:
  return AI_PHRASE in text.lower()


def aggregate(records: Sequence[dict], principles: Sequence[Principle],
              dimensions: Optional[Sequence[str]] = None, *, seed: int = 0, passes: int = 4,
              p_geom: float = 0.2, max_k: int = 8, negate_prob: float = 0.5,
              flip_prob: float = 0.10, rule_flip_prob: float = 0.25, swap_prob: float = 0.5,
              ai_rule: bool = True) -> tuple[list[dict], dict]:
  """Records with judge scores -> (RM examples, stats).

  Example: {"prompt", "output_1", "output_2", "preference": 1|2, "dimensions": [str],
  "negated": [bool], "principles": [bullet text], "dominant": str, "dominant_negated": bool,
  "k": int, "flipped": bool, "swapped": bool, "rule": bool, "id"}.
  stats: kept/skipped counts, K histogram, negation, flip, swap and rule rates.
  """
  table = by_dimension(principles)
  dims = list(dimensions) if dimensions else [p.dimension for p in principles]
  unknown = [d for d in dims if d not in table]
  if unknown:
    raise ConfigError(f"dimensions {unknown} are not in the principle collection "
                      f"({', '.join(table)})")
  if negate_prob > 0:
    missing = [d for d in dims if not table[d].negative_definition]
    if missing:
      raise ConfigError(f"negation needs a negative_definition for {missing}")
  complete = [r for r in records if all(d in r.get("scores", {}) for d in dims)]
  s, v = normalized_scores(complete, dims)
  rng = np.random.default_rng(seed)
  kmax = min(max_k, len(dims))
  examples = []
  counts = collections.Counter()
  k_hist = np.zeros(kmax + 1, np.int64)
  for _ in range(passes):
    for i, rec in enumerate(complete):
      order = rng.permutation(len(dims))
      k = sample_k(rng, p_geom, kmax)
      chosen = order[:k]
      neg = rng.random(k) < negate_prob
      k_hist[k] += 1
      counts["draws"] += 1
      counts["principles"] += k
      counts["negated"] += int(neg.sum())
      sd = np.where(neg, -s[i, chosen], s[i, chosen])
      j = int(np.argmax(np.abs(sd)))
      if sd[j] == 0:
        counts["skipped_tie"] += 1
        continue
      label = 1 if sd[j] > 0 else 2
      rule = False
      if ai_rule:
        a1, a2 = _has_ai_phrase(rec["output_1"]), _has_ai_phrase(rec["output_2"])
        if a1 != a2 and rng.random() < 0.5:
          label, rule = (2 if a1 else 1), True
      flipped = bool(rng.random() < (rule_flip_prob if rule else flip_prob))
      if flipped:
        label = 3 - label
      swapped = bool(rng.random() < swap_prob)
      o1, o2 = rec["output_1"], rec["output_2"]
      if swapped:
        o1, o2, label = o2, o1, 3 - label
      names = [dims[c] for c in chosen]
      examples.append({
          "id": rec.get("id"), "prompt": rec["prompt"], "output_1": o1, "output_2": o2,
          "preference": label, "dimensions": names, "negated": [bool(x) for x in neg],
          "principles": [table[n].text(bool(x)) for n, x in zip(names, neg)],
          "dominant": names[j], "dominant_negated": bool(neg[j]), "k": k,
          "flipped": flipped, "swapped": swapped, "rule": rule})
      counts["kept"] += 1
      counts["flipped"] += flipped
      counts["swapped"] += swapped
      counts["rule"] += rule
  draws = max(counts["draws"], 1)
  kept = max(counts["kept"], 1)
  stats = {
      "records": len(records), "complete": len(complete), "examples": counts["kept"],
      "skipped_tie": counts["skipped_tie"], "dimensions": dims,
      "variance": {d: float(x) for d, x in zip(dims, v)},
      "k_hist": {int(k): int(c) for k, c in enumerate(k_hist) if k},
      "k_mean": float((np.arange(kmax + 1) * k_hist).sum() / draws),
      "negation_rate": counts["negated"] / max(counts["principles"], 1),
      "flip_rate": counts["flipped"] / kept, "swap_rate": counts["swapped"] / kept,
      "rule_rate": counts["rule"] / kept,
      "consistency": {d: float(np.mean(s[:, c] != 0)) if len(complete) else 0.0
                      for c, d in enumerate(dims)},
  }
  return examples, stats


# ------------------------------------------------------------------------------------------------
# A synthetic judge with a known rule (tests, notebook, tiny config)
# ------------------------------------------------------------------------------------------------

SYNTHETIC_PRINCIPLES = (
    Principle("Concise", "Be brief.", "Be long-winded.", 2.0),
    Principle("Kind", "Be kind.", "Be harsh.", 1.0),
    Principle("On topic", "Stay on topic.", "Drift off topic.", 1.0),
)


def _words(text):
  return text.replace(".", " ").split()


def synthetic_judge_scores(prompt: str, out1: str, out2: str, rng, noise: float = 0.3) -> dict:
  """{dimension: [s12, s21]} of a known rule over the synthetic pair set (rmjax.data.synthetic):
  Concise prefers fewer words, Kind more positive than negative words, On topic the prompt's
  topic; each order gets its own Gaussian noise (so small differences come out inconsistent)."""
  c1, c2 = synthetic.score_components(prompt, out1), synthetic.score_components(prompt, out2)
  # Kind is about positive words whatever the prompt's mode.
  kind = lambda t: sum(w in synthetic.POSITIVE for w in _words(t)) - sum(
      w in synthetic.NEGATIVE for w in _words(t))
  diffs = {"Concise": (len(_words(out2)) - len(_words(out1))) / 2.0,
           "Kind": float(kind(out1) - kind(out2)),
           "On topic": c1["topic"] - c2["topic"]}
  return {d: [float(x + noise * rng.standard_normal()), float(x + noise * rng.standard_normal())]
          for d, x in diffs.items()}


def synthetic_records(n: int, seed: int = 0, noise: float = 0.3) -> list[dict]:
  """n judged pairs over the synthetic prompts, in the format `rmjax collect` writes."""
  rng = np.random.default_rng([seed, 7])
  out = []
  while len(out) < n:
    _, prompt = synthetic.sample_prompt(rng)
    topic = synthetic.parse_prompt(prompt)[1]
    a, b = synthetic.sample_response(rng, topic), synthetic.sample_response(rng, topic)
    if a == b:
      continue
    out.append({"id": f"syn-{seed}-{len(out)}", "prompt": prompt, "output_1": a, "output_2": b,
                "scores": synthetic_judge_scores(prompt, a, b, rng, noise)})
  return out


def length_records(n: int, seed: int = 0, noise: float = 0.3, pad_words: tuple = (3, 8)) -> list:
  """n pairs that differ ONLY in length: output B = output A plus `pad_words` filler words
  (neutral words, no sentiment or topic), in random A/B order, judged by the same known rule
  (`synthetic_judge_scores`: Concise prefers the shorter, the other dimensions score ~0)."""
  rng = np.random.default_rng([seed, 8])
  out = []
  for i in range(n):
    _, prompt = synthetic.sample_prompt(rng)
    topic = synthetic.parse_prompt(prompt)[1]
    short = synthetic.sample_response(rng, topic).rstrip(".").split()[:int(rng.integers(2, 5))]
    extra = [synthetic.NEUTRAL[j] for j in rng.integers(len(synthetic.NEUTRAL),
                                                         size=int(rng.integers(*pad_words)))]
    long = short + extra
    a, b = " ".join(short) + ".", " ".join(long) + "."
    if rng.random() < 0.5:
      a, b = b, a
    out.append({"id": f"len-{seed}-{i}", "prompt": prompt, "output_1": a, "output_2": b,
                "scores": synthetic_judge_scores(prompt, a, b, rng, noise)})
  return out


@functools.lru_cache(maxsize=32)
def _principles_cached(spec: str) -> tuple:
  if spec == "synthetic":
    return tuple(SYNTHETIC_PRINCIPLES)
  return tuple(load_principles(spec))


def get_principles(spec) -> list:
  """'synthetic' (the known-rule set), 'default', 'shared:NAME', a path, or a list."""
  if isinstance(spec, (list, tuple)):
    return load_principles(list(spec))
  return list(_principles_cached(str(spec or "default")))
