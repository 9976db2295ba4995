"""Pieces every reward-model task builds from its config: the backbone and the tokenizer."""

from __future__ import annotations

import jax
import numpy as np

from rmjax import checkpoints
from rmjax.models.llama import LlamaConfig


def backbone(config) -> tuple[LlamaConfig, dict]:
  """(LlamaConfig with the config's numeric policy, pretrained params on host)."""
  cfg, params = checkpoints.load_pretrained(config.model.spec, seed=config.seed)
  cfg = cfg.replace(dtype=config.model.dtype, param_dtype=config.model.param_dtype,
                    remat=config.model.remat, attention=config.model.get("attention", "xla"))
  return cfg, params


def tokenizer(config):
  return checkpoints.load_tokenizer(config.model.tokenizer or config.model.spec)


def params_with_backbone(params, backbone_params, shardings):
  """Init params with the 'backbone' subtree swapped for pretrained weights, placed onto the
  backbone's shardings (head params keep their fresh init)."""
  placed = jax.tree_util.tree_map(
      lambda x, ref, s: jax.device_put(np.asarray(x, dtype=ref.dtype), s),
      backbone_params, params["backbone"], shardings["backbone"])
  return dict(params, backbone=placed)
