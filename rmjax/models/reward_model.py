"""Backbone + heads -> a dict of named outputs; the one reward-model module of rmjax.

Param tree: {'backbone': <Llama params>, 'head': <head params>}. The backbone's LM head stays
available (GRM) when `keep_lm_logits` is set; chosen and rejected go through one forward by
concatenating them on the batch axis (see `rmjax.tasks.bt`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from rmjax.models.heads import EnsembleHead, ScalarHead, pool_last
from rmjax.models.llama import Llama, LlamaConfig

HEADS = ("scalar", "mlp", "ensemble")  # RewardModel.head


class RewardModel(nn.Module):
  """Outputs: 'reward' [B]; 'pooled' [B, D]; 'members' [B, K] for ensembles; 'logits' [B, T, V]
  when `keep_lm_logits`. `stop_backbone_grad` makes head-only training skip backbone gradients."""
  cfg: LlamaConfig
  head: str = "scalar"          # 'scalar' | 'mlp' | 'ensemble'
  head_hidden: int = 1024
  head_dropout: float = 0.0
  members: int = 1
  keep_lm_logits: bool = False
  stop_backbone_grad: bool = False

  def setup(self):
    self.backbone = Llama(self.cfg)
    if self.head == "scalar":
      self.reward_head = ScalarHead()
    elif self.head == "mlp":
      self.reward_head = ScalarHead(hidden=self.head_hidden, dropout=self.head_dropout)
    elif self.head == "ensemble":
      self.reward_head = EnsembleHead(self.members)
    else:
      raise ValueError(f"unknown head {self.head!r} ({', '.join(HEADS)})")

  def __call__(self, input_ids, attention_mask, deterministic: bool = True,
               segment_ids=None, pool_at=None, prefix_ids=None, positions=None) -> dict:
    """Packed rows (`rmjax.data.packing`): `segment_ids` [R, L] replaces the mask and the
    rewards are read at `pool_at` [P, 2] (row, column of each sequence's last token);
    prompt-shared rows add `prefix_ids` and `positions` (`Llama`)."""
    out = {}
    kw = {} if segment_ids is None else {"segment_ids": segment_ids}
    if prefix_ids is not None:
      kw.update(prefix_ids=prefix_ids, positions=positions)
    if self.keep_lm_logits or self.is_initializing():  # params always hold the full backbone
      logits, hidden = self.backbone(input_ids, attention_mask, output="both", **kw)
      if self.keep_lm_logits:
        out["logits"] = logits
    else:
      hidden = self.backbone(input_ids, attention_mask, output="hidden", **kw)
    if pool_at is None:
      pooled = pool_last(hidden, attention_mask)
    else:
      pooled = hidden[pool_at[:, 0], pool_at[:, 1]]
    if self.stop_backbone_grad:
      pooled = jax.lax.stop_gradient(pooled)
    return dict(out, **self.score_features(pooled, deterministic=deterministic))

  def score_features(self, pooled, deterministic: bool = True) -> dict:
    """The heads alone on pooled features [B, D] (head-only training on cached features)."""
    out = {"pooled": pooled}
    scores = self.reward_head(pooled, deterministic=deterministic)
    if self.head == "ensemble":
      out["members"] = scores
      out["reward"] = jnp.mean(scores, axis=-1)
    else:
      out["reward"] = scores
    return out
