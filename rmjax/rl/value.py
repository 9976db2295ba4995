"""The PPO value model: a Llama backbone with a per-token scalar head.

Params {'backbone': <Llama params>, 'value_head': <ScalarHead params>}: the same backbone layout
as `rmjax.models.reward_model.RewardModel`, so the value model can start from a trained reward
model (SALMON, Zhang et al.: value initialised from the RM; its scalar head too) or from the
policy (backbone only, fresh head), chosen by config (`init_value_params`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rmjax.errors import ConfigError
from rmjax.models.heads import ScalarHead
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


def boxed_init(cfg: LlamaConfig, rng) -> dict:
  """Freshly initialised value params, boxed with logical names (for shardings)."""
  ids = jnp.zeros((1, 2), jnp.int32)
  return ValueModel(cfg).init(rng, ids, jnp.ones_like(ids))["params"]


def init_value_params(fresh: dict, source: str, policy_params=None, rm_params=None) -> dict:
  """Value params from `fresh` (unboxed init) with the backbone (and head) swapped in.

  source: 'policy' (backbone <- policy params, fresh head), 'rm' (backbone <- RM backbone and,
  for a scalar RM head, the head too), 'random' (fresh). Leaves keep `fresh`'s dtypes.
  """
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
