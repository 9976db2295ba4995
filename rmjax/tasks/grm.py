"""GRM task: a reward model that keeps its LM head, trained with BT plus a text-generation
regulariser (Yang et al., 2024; ALGORITHMS.md section 4).

  L = (1 - alpha) * L_BT + alpha * L_reg,   L_reg in rmjax.lm_losses.REGULARISERS

One forward of `RewardModel(keep_lm_logits=True)` over [chosen; rejected] gives the rewards
(reward head on the last real token) and the LM logits for the summed response log-probs
(prompt and padding masked with the batch's `prompt_len` and masks).

The 'dpo_ref' regulariser needs a frozen copy of the base LM. It lives in the params under the
top-level key 'reference': the loop then shards it exactly like the trained backbone (same
logical names), checkpoints it (so a resumed run has it), and `Task.trainable` freezes it (no
update, no Adam moments); the loss also reads it through `stop_gradient`. Scoring never needs
it: `make_model` builds the reward model alone and `rmjax score/eval` restore only its params.
With alpha = 0 the loss and gradients are the BT task's (tested: same trajectory).
With `model.lora` the reference is the policy's own base weights with the adapters off
(`rmjax.models.lora.adapters_off`): no 'reference' copy is held.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rmjax import lm_losses, losses
from rmjax.errors import ConfigError
from rmjax.models import lora
from rmjax.models.llama import Llama
from rmjax.models.reward_model import RewardModel
from rmjax.tasks.pairs import (REFERENCE, PairMethod, bt_pair_loss, forward_pairs, packed_kwargs,
                               pair_spec, reward_model, without_reference)


def make_model(config, cfg, keep_lm_logits: bool = False) -> RewardModel:
  """The GRM reward model. Scoring (`rmjax score/eval`) uses the default, which skips the LM
  logits; the params tree is the same either way (the backbone always holds its LM head)."""
  return reward_model(config, cfg, keep_lm_logits=keep_lm_logits)


def check_loss_config(loss_cfg) -> None:
  if loss_cfg.reg not in lm_losses.REGULARISERS:
    raise ConfigError(f"loss.reg must be one of {', '.join(lm_losses.REGULARISERS)}, "
                      f"got {loss_cfg.reg!r}")
  if not 0.0 <= float(loss_cfg.alpha) <= 1.0:
    raise ConfigError(f"loss.alpha must be in [0, 1], got {loss_cfg.alpha}")
  if float(loss_cfg.beta) <= 0.0:
    raise ConfigError(f"loss.beta must be > 0, got {loss_cfg.beta}")


def _pair_logprobs(logits_c, logits_r, batch):
  """Summed response log-probs of chosen and rejected rows, each [B] (packed batches: both
  read the packed rows' logits at their own spans)."""
  if "segment_ids" in batch:
    ids = batch["input_ids"]
    tok_lp = lm_losses.token_logprobs(logits_c, ids)
    out = []
    for side in ("chosen", "rejected"):
      at, seq_len = batch[f"{side}_at"], batch[f"{side}_len"]
      lp = lm_losses.packed_response_logprobs(tok_lp, at, seq_len, batch["prompt_len"])
      if "prompt_at" in batch:  # prompt-shared rows: each response's first token follows the prompt
        lp = lp + lm_losses.shared_prompt_correction(logits_c, tok_lp, ids, at,
                                                     seq_len - batch["prompt_len"], batch["prompt_at"])
      out.append(lp)
    return tuple(out)
  lp_c = lm_losses.response_logprobs(logits_c, batch["chosen_ids"], batch["chosen_mask"],
                                     batch["prompt_len"])
  lp_r = lm_losses.response_logprobs(logits_r, batch["rejected_ids"], batch["rejected_mask"],
                                     batch["prompt_len"])
  return lp_c, lp_r


def reference_logprobs(ref_lm: Llama, ref_params, batch):
  """Summed response log-probs under the frozen reference (no gradient), chosen and rejected."""
  if "segment_ids" in batch:
    logits = ref_lm.apply({"params": jax.lax.stop_gradient(ref_params)}, batch["input_ids"],
                          segment_ids=batch["segment_ids"], **packed_kwargs(batch))
    lp_c, lp_r = _pair_logprobs(logits, logits, batch)
    return jax.lax.stop_gradient(lp_c), jax.lax.stop_gradient(lp_r)
  ids = jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"]], axis=0)
  mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]], axis=0)
  logits = ref_lm.apply({"params": jax.lax.stop_gradient(ref_params)}, ids, mask)
  b = batch["chosen_ids"].shape[0]
  lp_c, lp_r = _pair_logprobs(logits[:b], logits[b:], batch)
  return jax.lax.stop_gradient(lp_c), jax.lax.stop_gradient(lp_r)


def grm_loss_fn(model: RewardModel, loss_cfg, ref_lm: Llama | None = None):
  """loss_fn(params, batch, rng) -> (loss, metrics): (1 - alpha) * BT + alpha * L_reg."""
  alpha, beta, reg = float(loss_cfg.alpha), float(loss_cfg.beta), loss_cfg.reg

  def loss_fn(params, batch, rng):
    c, r = forward_pairs(model, without_reference(params), batch, rng=rng)
    w = batch["weight"]
    bt_loss = bt_pair_loss(c["reward"], r["reward"], batch, loss_cfg)
    lp_c, lp_r = _pair_logprobs(c["logits"], r["logits"], batch)
    ref_c = ref_r = None
    if reg == "dpo_ref":
      ref = params[REFERENCE] if REFERENCE in params else lora.adapters_off(params["backbone"])
      ref_c, ref_r = reference_logprobs(ref_lm, ref, batch)
    reg_loss = lm_losses.regulariser(reg, lp_c, lp_r, ref_c, ref_r, beta=beta, weight=w)
    loss = (1.0 - alpha) * bt_loss + alpha * reg_loss
    mean = lambda x: losses.weighted_mean(x, w)
    n_tok = (batch["chosen_len"] - batch["prompt_len"] if "segment_ids" in batch else
             lm_losses.response_mask(batch["chosen_mask"], batch["prompt_len"]).sum(-1))
    metrics = dict(losses.pair_metrics(c["reward"], r["reward"], w), bt_loss=bt_loss,
                   reg_loss=reg_loss, chosen_logps=mean(lp_c), rejected_logps=mean(lp_r),
                   chosen_logps_per_token=mean(lp_c / jnp.maximum(n_tok, 1.0)))
    if ref_c is not None:
      metrics.update(ref_chosen_logps=mean(ref_c), ref_rejected_logps=mean(ref_r))
    return loss, metrics
  return loss_fn


def grm_loss(config, model, cfg):
  ref_lm = (lora.wrap(Llama(cfg), config.model.get("lora")) if config.loss.reg == "dpo_ref"
            else None)
  return grm_loss_fn(model, config.loss, ref_lm)


SPEC = pair_spec("grm", PairMethod(
    loss=grm_loss, model=make_model,
    train_model=lambda config, cfg: make_model(config, cfg, keep_lm_logits=True),
    check=lambda config: check_loss_config(config.loss),
    reference=lambda config: config.loss.reg == "dpo_ref",
    info=lambda config: {"grm": dict(alpha=float(config.loss.alpha), reg=config.loss.reg,
                                     beta=float(config.loss.beta))}))
build = SPEC.build
