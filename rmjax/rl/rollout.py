"""PPO experience: sample, score with policy / reference / value, reward, shape, GAE.

A rollout on left-padded prompts [B, P] runs the jitted KV-cache sampler (`rmjax.inference.generate`)
for N response tokens, then ONE jitted forward pass over the full sequences [B, P + N] gives the
old log-probs (policy), reference log-probs (frozen initial policy) and values. The reward
function scores decoded text and/or tokens on host; `make_advantages` (jitted) turns the scalar
score into per-token rewards (score at the last response token, per-token KL penalty whose
coefficient may be scaled per sequence by the ensemble variance) and runs GAE.

Reward-function interface:
  reward_fn(prompt_texts, response_texts, prompt_tokens, response_tokens)
      -> (reward [B] float, members [B, K] float or None)
Texts are None without a tokenizer. Helpers below build them for the synthetic gold reward, a
token-count reward (CI), a member-score function (e.g. an overopt proxy ensemble) and a gold
function wrapper. `WordTokenizer` is the word-level vocabulary of the synthetic task, so a tiny
random policy emits words the gold reward can tell apart.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rmjax.data import synthetic
from rmjax.errors import ConfigError
from rmjax.models.llama import Llama, LlamaConfig
from rmjax.rl import ppo, rewards
from rmjax.rl.registry import ADVANTAGES
from rmjax.rl.value import ValueModel
from rmjax.inference.generate import generate

NORM_MODES = ("none", "frozen", "running")
# uncertainty mode -> (score = conservative aggregate of the members, KL coefficient scaled by
# each sequence's normalised ensemble variance)
UNCERTAINTY = {"none": (False, False), "reward": (True, False), "variance_kl": (False, True),
               "both": (True, True)}


# ---------------------------------------------------------------- synthetic word vocabulary
class WordTokenizer:
  """Word-level tokenizer over the synthetic task's words: <pad>=0, <eos>=1, <sep>=2, words."""
  SPECIALS = ("<pad>", "<eos>", "<sep>")
  pad_token_id, eos_token_id, sep_id = 0, 1, 2

  def __init__(self):
    words = ["Say", "something", "about", *synthetic.MODES, *synthetic.TOPICS,
             *synthetic.POSITIVE, *synthetic.NEGATIVE, *synthetic.NEUTRAL]
    words = list(dict.fromkeys(words))
    self.vocab = list(self.SPECIALS) + words
    self.ids = {w: i for i, w in enumerate(self.vocab)}
    self.vocab_size = len(self.vocab)

  def encode_prompt(self, prompt: str) -> list:
    return [self.ids[w] for w in prompt.rstrip(".").split()] + [self.sep_id]

  def decode(self, ids) -> str:
    words = [self.vocab[int(i)] for i in ids if int(i) >= len(self.SPECIALS)]
    return " ".join(words) + "."


# ---------------------------------------------------------------- reward functions
def gold_reward_fn(prompt_texts, response_texts, prompt_tokens=None, response_tokens=None):
  """The synthetic task's known gold reward on texts; no members."""
  del prompt_tokens, response_tokens
  return np.array([synthetic.gold_reward(p, r) for p, r in zip(prompt_texts, response_texts)],
                  np.float32), None


def token_count_reward_fn(token_id: int) -> Callable:
  """Reward = number of times `token_id` occurs in the response (a CI-sized known reward)."""
  def fn(prompt_texts, response_texts, prompt_tokens, response_tokens):
    del prompt_texts, response_texts, prompt_tokens
    return np.array([sum(int(t) == token_id for t in r) for r in response_tokens], np.float32), None
  return fn


def members_reward_fn(score_fn: Callable, method: str = "mean", lam: float = 0.5,
                      beta: float = 1.0) -> Callable:
  """Wrap score_fn(prompts, responses) -> members [B, K] (e.g. an overopt proxy ensemble):
  reward = `rmjax.rl.rewards.aggregate(members, method)`, members returned for logging and
  the variance-aware KL."""
  def fn(prompt_texts, response_texts, prompt_tokens=None, response_tokens=None):
    del prompt_tokens, response_tokens
    m = np.asarray(score_fn(list(prompt_texts), list(response_texts)), np.float64)
    if m.ndim != 2:
      raise ValueError(f"member scores must be [B, K], got shape {m.shape}")
    return np.asarray(rewards.aggregate(m, method, lam=lam, beta=beta), np.float32), m
  return fn


# ---------------------------------------------------------------- reward normalisation
def norm_init() -> dict:
  return {"count": np.float32(0), "mean": np.float32(0), "m2": np.float32(0)}


def normalize_rewards(r: np.ndarray, state: dict, mode: str, eps: float = 1e-6):
  """(normalised rewards, new state). 'frozen': mean/std of the FIRST batch, kept (GRM);
  'running': statistics over every reward seen so far (Chan et al. merge); 'none': as is."""
  if mode not in NORM_MODES:
    raise ConfigError(f"unknown reward normalisation {mode!r}; choose from {', '.join(NORM_MODES)}")
  if mode == "none":
    return r, state
  n, mean, m2 = float(state["count"]), float(state["mean"]), float(state["m2"])
  if mode == "running" or n == 0:
    bn, bmean, bm2 = len(r), float(np.mean(r)), float(np.sum((r - np.mean(r)) ** 2))
    tot = n + bn
    delta = bmean - mean
    mean, m2, n = mean + delta * bn / tot, m2 + bm2 + delta ** 2 * n * bn / tot, tot
  std = np.sqrt(m2 / max(n, 1.0))
  new = {"count": np.float32(n), "mean": np.float32(mean), "m2": np.float32(m2)}
  return ((r - mean) / max(std, eps)).astype(np.float32), new


# ---------------------------------------------------------------- jitted pieces
def rollout_logprobs(logits, ids, prompt_len: int):
  """Per-token log-probs [B, N] of the response tokens ids[:, P:] of rollout rows (every row
  left-padded to the same prompt length P), and their logits [B, N, V]. (For right-padded
  pairs with per-row prompt lengths, summed: `rmjax.lm_losses.response_logprobs`.)"""
  resp_logits = logits[:, prompt_len - 1:-1].astype(jnp.float32)
  targets = ids[:, prompt_len:]
  lp = (jnp.take_along_axis(resp_logits, targets[..., None], axis=-1)[..., 0]
        - jax.nn.logsumexp(resp_logits, axis=-1))
  return lp, resp_logits


def policy_forward(params, ids, mask, *, cfg: LlamaConfig, prompt_len: int):
  """(log-probs [B, N], response logits [B, N, V]) of a policy on full sequences [B, P + N]."""
  logits = Llama(cfg).apply({"params": params}, ids, mask)
  return rollout_logprobs(logits, ids, prompt_len)


def value_forward(params, ids, mask, *, cfg: LlamaConfig, prompt_len: int):
  """Values [B, N]: entry t values the state before response token t (position P - 1 + t)."""
  return ValueModel(cfg).apply({"params": params}, ids, mask)[:, prompt_len - 1:-1]


@functools.partial(jax.jit, static_argnames=("cfg", "value_cfg", "prompt_len"))
def score_sequences(policy, ref, value, ids, mask, resp_mask, *, cfg, value_cfg, prompt_len):
  """Old log-probs, reference log-probs, values [B, N] (with a value model: `value` not None),
  each sequence's summed k1 KL [B] and the policy's entropy (one jit)."""
  logp, logits = policy_forward(policy, ids, mask, cfg=cfg, prompt_len=prompt_len)
  ref_logp, _ = policy_forward(ref, ids, mask, cfg=cfg, prompt_len=prompt_len)
  m = resp_mask.astype(jnp.float32)
  out = {"old_logp": logp * m, "ref_logp": ref_logp * m, "entropy": ppo.entropy(logits, m)}
  if value is not None:
    out["values"] = value_forward(value, ids, mask, cfg=value_cfg, prompt_len=prompt_len) * m
  out["seq_kl"] = jnp.sum((out["old_logp"] - out["ref_logp"]) * m, axis=-1)   # [B] sum of k1
  return out


@functools.partial(jax.jit, static_argnames=("kl_kind", "whiten", "estimator", "group_size"))
def make_advantages(score, kl_coef_seq, old_logp, ref_logp, values, resp_mask, gamma, lam,
                    kl_clamp_min, *, kl_kind: str = "k1", whiten: bool = True,
                    estimator: str = "gae", group_size: int = 1):
  """Shaped per-token rewards (score at the last token, -kl_coef_seq * KL per token), the
  ADVANTAGES entry `estimator`'s advantages (whitened) and, from a critic, returns; the
  per-sequence KL penalty. `values` is None for estimators without a value model."""
  m = resp_mask.astype(jnp.float32)
  kl = ppo.kl_estimate(old_logp, ref_logp, kl_kind, clamp_min=kl_clamp_min) * m
  r = ppo.token_rewards(score, kl, m, kl_coef_seq)
  adv, returns = ADVANTAGES.get(estimator)(r, values, m, gamma=gamma, lam=lam,
                                           group_size=group_size)
  if whiten:
    adv = ppo.whiten(adv, m)
  out = {"advantages": adv, "penalty": jnp.sum(kl_coef_seq[:, None] * kl, axis=-1)}
  if returns is not None:
    out["returns"] = returns
  return out


def uncertainty_terms(reward, members, method: str, uncertainty: str, lam: float, beta: float,
                      w_min: float, w_max: float):
  """(score [B], KL weights [B], ensemble variance [B] or None) from the raw reward function
  output: with uncertainty 'reward'/'both' the score is the conservative aggregate of members
  (mean / uwo / lcb / wco); with 'variance_kl'/'both' each sequence's KL coefficient is scaled by
  its normalised ensemble variance (section 2.3)."""
  if uncertainty not in UNCERTAINTY:
    raise ConfigError(f"unknown uncertainty mode {uncertainty!r}; choose from {', '.join(UNCERTAINTY)}")
  conservative, weighted_kl = UNCERTAINTY[uncertainty]
  b = len(reward)
  if members is None:
    if uncertainty != "none":
      raise ConfigError(f"uncertainty {uncertainty!r} needs a reward function with ensemble members")
    return np.asarray(reward, np.float32), np.ones(b, np.float32), None
  members = np.asarray(members, np.float64)
  var = members.var(axis=-1)
  score = np.asarray(reward, np.float32)
  if conservative:
    score = np.asarray(rewards.aggregate(members, method, lam=lam, beta=beta), np.float32)
  w = np.ones(b, np.float32)
  if weighted_kl:
    w = np.asarray(ppo.variance_weights(jnp.asarray(var, jnp.float32), w_min, w_max), np.float32)
  return score, w, var.astype(np.float32)


def decode_rows(tokenizer, rows) -> Optional[list]:
  if tokenizer is None:
    return None
  return [tokenizer.decode(r) for r in rows]


def generate_responses(policy, cfg, prompt_ids, prompt_mask, rng, sampling, mesh=None):
  """Sampler call -> (full ids [B, P + N], full mask, response mask [B, N], response tokens)."""
  out = generate(policy, cfg, prompt_ids, prompt_mask, rng, sampling, mesh=mesh)
  tokens = np.asarray(jax.device_get(out["tokens"]))
  resp_mask = np.asarray(jax.device_get(out["mask"]))
  ids = np.concatenate([np.asarray(prompt_ids), tokens], axis=1).astype(np.int32)
  mask = np.concatenate([np.asarray(prompt_mask), resp_mask], axis=1).astype(np.int32)
  return ids, mask, resp_mask.astype(np.int32), tokens


def strip_eos(tokens, resp_mask, eos_ids) -> list:
  """Response token lists without padding and without a final EOS."""
  out = []
  for row, m in zip(tokens, resp_mask):
    r = [int(t) for t in row[:int(m.sum())]]
    if r and r[-1] in eos_ids:
      r = r[:-1]
    out.append(r)
  return out
