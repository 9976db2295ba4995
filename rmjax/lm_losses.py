"""Language-model log-probabilities and the text-generation regularisers of GRM.

Conventions (shared with PPO, which reuses `token_logprobs` / `sequence_logprobs`):
  ids, mask        [B, T]      token ids and 1 on real tokens (right or left padding)
  logits           [B, T, V]   logits at position t predict token t + 1 (standard LM shift)
  token_logprobs   [B, T]      entry t = log p(ids[t] | ids[<t]); entry 0 has no context and is 0
  loss_mask        [B, T]      which token positions count (e.g. the response tokens)
A sequence log-prob is the SUM of its masked token log-probs (GRM, DPO), not the mean.

GRM regularisers (ALGORITHMS.md section 4.2), with l = summed response log-prob, beta = 0.1:
  'sft'        -log sigmoid(beta * l_c)                        (GRM's default)
  'sft_plain'  -l_c
  'dpo_noref'  -log sigmoid(beta * (l_c - l_r))
  'dpo_ref'    -log sigmoid(beta * ((l_c - l_r) - (ref_c - ref_r)))
Every loss is a weighted mean over rows (`weight` [B]: 1 real, 0 filler), like `rmjax.losses`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rmjax.losses import weighted_mean

REGULARISERS = ("sft", "sft_plain", "dpo_noref", "dpo_ref")


def token_logprobs(logits: jax.Array, ids: jax.Array) -> jax.Array:
  """log p(ids[t] | ids[<t]) [B, T] from logits [B, T, V] (float32; entry 0 is 0).

  Uses logit[target] - logsumexp(logits) instead of a full log_softmax, so only one [B, T, V]
  float32 temporary is alive.
  """
  logits = logits[:, :-1].astype(jnp.float32)               # [B, T-1, V] predict tokens 1..T-1
  targets = ids[:, 1:]                                      # [B, T-1]
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  lp = picked - jax.nn.logsumexp(logits, axis=-1)           # [B, T-1]
  return jnp.pad(lp, ((0, 0), (1, 0)))                      # [B, T]


def response_mask(mask: jax.Array, prompt_len: jax.Array) -> jax.Array:
  """1 on real tokens at positions >= prompt_len [B, T] (right-padded rows: the response).

  The first response token sits at prompt_len and is scored by the logits at prompt_len - 1,
  which `token_logprobs` has already shifted into place.
  """
  t = mask.shape[-1]
  pos = jnp.arange(t)[None, :]
  return (mask.astype(bool) & (pos >= prompt_len[:, None])).astype(jnp.float32)


def packed_response_logprobs(token_lp: jax.Array, at: jax.Array, seq_len: jax.Array,
                             prompt_len: jax.Array) -> jax.Array:
  """Summed response log-probs [P] of sequences packed in rows (`rmjax.data.packing`).

  token_lp [R, L] from `token_logprobs` over the packed rows; `at` [P, 2] (row, column of each
  sequence's last token), seq_len / prompt_len [P]. The response is the last seq_len -
  prompt_len tokens; each is scored by the logits of the token before it, which lies in the same
  sequence (prompt_len >= 1), so the sum is a difference of row-wise cumulative sums.
  """
  cs = jnp.cumsum(token_lp, axis=-1)
  row, end = at[:, 0], at[:, 1]
  n = seq_len - prompt_len
  return cs[row, end] - cs[row, end - n]


def shared_prompt_correction(logits: jax.Array, token_lp: jax.Array, ids: jax.Array,
                             at: jax.Array, n_response: jax.Array,
                             prompt_at: jax.Array) -> jax.Array:
  """What to add to `packed_response_logprobs` for prompt-shared rows [P].

  There a response's first token follows the PROMPT's last token (`prompt_at`), not the column
  before it (for the rejected response that column is the chosen response's end): its row-wise
  `token_lp` is replaced by its log-prob under the logits at `prompt_at`. Zero for empty
  responses and for pairs laid out unshared (prompt_at row -1)."""
  row, first = at[:, 0], at[:, 1] - n_response + 1
  first = jnp.clip(first, 0, ids.shape[1] - 1)
  prow, pcol = jnp.maximum(prompt_at[:, 0], 0), prompt_at[:, 1]
  lg = logits[prow, pcol].astype(jnp.float32)                    # [P, V]
  target = ids[row, first]
  lp = jnp.take_along_axis(lg, target[:, None], axis=-1)[:, 0] - jax.nn.logsumexp(lg, axis=-1)
  use = (n_response > 0) & (prompt_at[:, 0] >= 0)
  return jnp.where(use, lp - token_lp[row, first], 0.0)


def sequence_logprobs(token_lp: jax.Array, loss_mask: jax.Array, average: bool = False) -> jax.Array:
  """Summed (or, with `average`, mean) masked token log-probs per row [B]."""
  loss_mask = loss_mask.astype(token_lp.dtype)
  total = jnp.sum(token_lp * loss_mask, axis=-1)
  if average:
    return total / jnp.maximum(jnp.sum(loss_mask, axis=-1), 1.0)
  return total


def response_logprobs(logits, ids, mask, prompt_len) -> jax.Array:
  """Summed log-prob of each row's response tokens [B] (prompt and padding masked)."""
  return sequence_logprobs(token_logprobs(logits, ids), response_mask(mask, prompt_len))


def sft_loss(logp_chosen, *, beta: float = 0.1, logsigmoid: bool = True, weight=None):
  """-log sigmoid(beta * l_c) (GRM default) or, without `logsigmoid`, plain SFT -l_c."""
  per = -jax.nn.log_sigmoid(beta * logp_chosen) if logsigmoid else -logp_chosen
  return weighted_mean(per, weight)


def dpo_loss(logp_chosen, logp_rejected, ref_chosen=None, ref_rejected=None, *, beta: float = 0.1,
             weight=None):
  """-log sigmoid(beta * ((l_c - l_r) - (ref_c - ref_r))); reference-free when refs are None."""
  logits = logp_chosen - logp_rejected
  if (ref_chosen is None) != (ref_rejected is None):
    raise ValueError("give both reference log-probs (chosen and rejected) or neither")
  if ref_chosen is not None:
    logits = logits - (ref_chosen - ref_rejected)
  return weighted_mean(-jax.nn.log_sigmoid(beta * logits), weight)


def regulariser(name: str, logp_chosen, logp_rejected=None, ref_chosen=None, ref_rejected=None,
                *, beta: float = 0.1, weight=None):
  """GRM's L_reg by name (see REGULARISERS and the module docstring)."""
  if name == "sft":
    return sft_loss(logp_chosen, beta=beta, weight=weight)
  if name == "sft_plain":
    return sft_loss(logp_chosen, beta=beta, logsigmoid=False, weight=weight)
  if name == "dpo_noref":
    return dpo_loss(logp_chosen, logp_rejected, beta=beta, weight=weight)
  if name == "dpo_ref":
    if ref_chosen is None or ref_rejected is None:
      raise ValueError("regulariser 'dpo_ref' needs reference log-probs")
    return dpo_loss(logp_chosen, logp_rejected, ref_chosen, ref_rejected, beta=beta, weight=weight)
  raise ValueError(f"unknown regulariser {name!r}; choose from {', '.join(REGULARISERS)}")
