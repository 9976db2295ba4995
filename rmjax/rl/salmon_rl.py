"""SALMON's RL-time pieces (ALGORITHMS.md 3.8), reusable by the PPO task.

- `sample_principles`: the RM prompt's principles, re-drawn for every rollout: shuffle the list,
  then draw `k` WITHOUT replacement with probability proportional to weight; reasoning prompts
  boost dimensions whose name contains "reason" or "numerical" by +128, red-teaming prompts
  "ethical" or "harmless". No negations at RL time.
- `rl_principle_texts`: the 3 fixed intervention principles + the sampled ones.
- `truncate_at_stop`, `stop_penalty`, `length_bonus`, `shape_reward`: r_RM on the response cut at
  the stop string, + a penalty when the stop string never appears, + 5 * min(len/response_len * m,
  0.8) with m = 1 (general) or -0.4 (reasoning).
- `kl_token_rewards`: per-token -coef * max(0, logp - logp_ref) with the scalar reward added at the
  last position of the right-padded response window (index -1, not the EOS), then x scale.
All array functions are pure jnp over [B] / [B, T].
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

from rmjax.data.principles import Principle

GENERAL, REASONING, REDTEAMING = 0, 1, 2
QUESTION_TYPES = {"general": GENERAL, "reasoning": REASONING, "redteaming": REDTEAMING}
BOOST_KEYWORDS = {REASONING: ("reason", "numerical"), REDTEAMING: ("ethical", "harmless")}
LENGTH_MULTIPLIER = {GENERAL: 1.0, REASONING: -0.4, REDTEAMING: 1.0}
STOP_STRING = "\n\n### User"

# Paraphrases of the 3 fixed "intervention" principles of SALMON's PPO-time RM template (v1).
INTERVENTION_PRINCIPLES = (
    "The response should not comment on itself, praise its own quality or describe how it was "
    "written.",
    "The response should do what the instruction asks rather than list high-level pros and cons, "
    "or add step-by-step explanations or code that were not requested.",
    "The response should stay on point and not add examples or digressions nobody asked for.",
)


def _qtype(question_type) -> int:
  if question_type is None:
    return GENERAL
  if isinstance(question_type, str):
    if question_type not in QUESTION_TYPES:
      raise ValueError(f"unknown question type {question_type!r}; use {sorted(QUESTION_TYPES)}")
    return QUESTION_TYPES[question_type]
  return int(question_type)


def principle_weights(principles: Sequence[Principle], question_type=None,
                      boost: float = 128.0) -> np.ndarray:
  """Sampling weights [N]: each principle's weight, +`boost` for the question type's keywords."""
  qt = _qtype(question_type)
  keys = BOOST_KEYWORDS.get(qt, ())
  return np.asarray([p.weight + (boost if any(k in p.dimension.lower() for k in keys) else 0.0)
                     for p in principles], np.float64)


def sample_principles(principles: Sequence[Principle], k: int, rng: np.random.Generator,
                      question_type=None, boost: float = 128.0) -> list[Principle]:
  """k principles, shuffled then drawn without replacement with probability ∝ weight."""
  if k < 0:
    raise ValueError(f"k must be >= 0, got {k}")
  order = list(rng.permutation(len(principles)))
  pool = [principles[i] for i in order]
  w = principle_weights(pool, question_type, boost)
  out = []
  for _ in range(min(k, len(pool))):
    j = int(rng.choice(len(pool), p=w / w.sum()))
    out.append(pool.pop(j))
    w = np.delete(w, j)
  return out


def rl_principle_texts(principles: Sequence[Principle], rng: np.random.Generator, k: int = 3,
                       question_type=None, fixed: Sequence[str] = INTERVENTION_PRINCIPLES) -> list:
  """Bullet texts of the RL-time RM prompt: the fixed intervention principles + k sampled."""
  return list(fixed) + [p.definition for p in sample_principles(principles, k, rng, question_type)]


def truncate_at_stop(text: str, stop: str = STOP_STRING) -> tuple[str, bool]:
  """(text cut before the first stop string, whether the stop string was found)."""
  i = text.find(stop)
  return (text, False) if i < 0 else (text[:i], True)


def stop_penalty(found_stop, penalty: float = -6.0):
  """[B] penalty where the stop string / EOS never appeared (unfinished), else 0. SALMON's
  intended value is -6.0 (its released script passes none; the dataclass default is -1.0)."""
  return jnp.where(jnp.asarray(found_stop, bool), 0.0, penalty)


def length_bonus(response_lengths, response_len: int, question_type=GENERAL, scale: float = 5.0,
                 cap: float = 0.8):
  """[B] scale * min(len / response_len * m, cap); m per question type (1.0, or -0.4 for
  reasoning: a length penalty). `question_type` is a scalar or a [B] int array."""
  qt = jnp.asarray(question_type if not isinstance(question_type, str) else _qtype(question_type))
  m = jnp.where(qt == REASONING, LENGTH_MULTIPLIER[REASONING], 1.0)
  ell = jnp.asarray(response_lengths, jnp.float32) / float(response_len) * m
  return scale * jnp.minimum(ell, cap)


def shape_reward(rm_reward, response_lengths, found_stop, response_len: int, question_type=GENERAL,
                 penalty: float = -6.0, bonus_scale: float = 5.0, bonus_cap: float = 0.8):
  """[B] SALMON's sequence reward: r_RM + stop penalty + capped length bonus."""
  return (jnp.asarray(rm_reward, jnp.float32) + stop_penalty(found_stop, penalty) +
          length_bonus(response_lengths, response_len, question_type, bonus_scale, bonus_cap))


def kl_token_rewards(seq_reward, logp, logp_ref, mask, kl_coef: float = 0.01,
                     scale: float = 10.0, clamp: bool = True):
  """Per-token rewards [B, T]: -kl_coef * k1 at every real token (k1 = logp - logp_ref, clamped at
  0 as SALMON does), the sequence reward added at index -1 of the padded window, all x `scale`
  (SALMON multiplies rewards by 10 instead of whitening them). Returns (rewards, k1)."""
  mask = jnp.asarray(mask, jnp.float32)
  k1 = jnp.asarray(logp, jnp.float32) - jnp.asarray(logp_ref, jnp.float32)
  if clamp:
    k1 = jnp.maximum(k1, 0.0)
  k1 = k1 * mask
  r = -kl_coef * k1
  r = r.at[:, -1].add(jnp.asarray(seq_reward, jnp.float32))
  return scale * r, k1
