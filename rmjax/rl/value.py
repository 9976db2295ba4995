"""The PPO value model: a Llama backbone with a per-token scalar head.

Params {'backbone': <Llama params>, 'value_head': <ScalarHead params>}: the same backbone layout
as `rmjax.models.reward_model.RewardModel`, so the value model can start from a trained reward
model (SALMON, Zhang et al.: value initialised from the RM; its scalar head too) or from the
policy (backbone only, fresh head), chosen by config (`init_value_params`).

With `model.lora` (rank > 0) the value model is a LoRA model too (`lora_settings`): adapters
beside its attention kernels, stored as `backbone/.../<kernel>_lora_a|b`; only the adapters and
the value head train (the PPO `Trainer` masks its optimizer and stops the base's gradient).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rmjax.errors import ConfigError
from rmjax.models import lora
from rmjax.models.heads import ScalarHead
from rmjax.models.init import init_params
from rmjax.models.llama import Llama, LlamaConfig


class ValueModel(nn.Module):
  """ids, mask [B, T] -> values [B, T]: V at position t values the state after token t."""
  cfg: LlamaConfig

  def setup(self):
    self.backbone = Llama(self.cfg)
    self.value_head = ScalarHead()

  def __call__(self, input_ids, attention_mask):
    if self.is_initializing():  # params hold the full backbone (LM head too), as in RewardModel
      _, hidden = self.backbone(input_ids, attention_mask, output="both")
    else:
      hidden = self.backbone(input_ids, attention_mask, output="hidden")
    return self.value_head(hidden)  # [B, T]


def lora_settings(s: Optional[lora.LoraSettings]) -> Optional[lora.LoraSettings]:
  """The value model's LoRA from the policy's `model.lora` settings: the same adapters minus
  'lm_head' (the value model never runs its LM head, so an adapter there would get no gradient
  yet hold Adam state). None when nothing is left: the backbone is then frozen whole and only
  the value head trains (the `Trainer` freezes the base whenever `model.lora` is on)."""
  if s is None:
    return None
  targets = tuple(t for t in s.targets if t != "lm_head")
  return dataclasses.replace(s, targets=targets) if targets else None


def boxed_init(cfg: LlamaConfig, rng, lora_cfg: Optional[lora.LoraSettings] = None) -> dict:
  """Freshly initialised value params, boxed with logical names (for shardings); with
  `lora_cfg` (from `lora_settings`) fresh adapters (B = 0) beside the targeted kernels."""
  return init_params(lora.wrap(ValueModel(cfg), lora_cfg), rng)


def init_value_params(fresh: dict, source: str, policy_params=None, rm_params=None) -> dict:
  """Value params from `fresh` (unboxed init) with the backbone (and head) swapped in.

  source: 'policy' (backbone <- policy params, fresh head), 'rm' (backbone <- RM backbone and,
  for a scalar RM head, the head too), 'random' (fresh). Leaves keep `fresh`'s dtypes. LoRA
  adapters in `fresh` (`boxed_init` with settings) are kept as they are: the sources hold the
  plain backbone.
  """
  fresh, adapters = lora.split(fresh)
  return lora.join(_init_value_params(fresh, source, policy_params, rm_params), adapters)


def _init_value_params(fresh: dict, source: str, policy_params, rm_params) -> dict:
  def cast(tree, ref):
    return jax.tree_util.tree_map(lambda x, r: jnp.asarray(np.asarray(x), r.dtype), tree, ref)

  if source == "random":
    return fresh
  if source == "policy":
    if policy_params is None:
      raise ConfigError("value init 'policy' needs the policy params")
    return dict(fresh, backbone=cast(policy_params, fresh["backbone"]))
  if source == "rm":
    if rm_params is None or "backbone" not in rm_params:
      raise ConfigError("value init 'rm' needs a reward model with a 'backbone' param tree")
    out = dict(fresh, backbone=cast(rm_params["backbone"], fresh["backbone"]))
    head = rm_params.get("reward_head", {})
    if jax.tree_util.tree_structure(head) == jax.tree_util.tree_structure(fresh["value_head"]):
      out["value_head"] = cast(head, fresh["value_head"])
    return out
  raise ConfigError(f"unknown value init {source!r}; choose policy, rm or random")
