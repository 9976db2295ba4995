"""Pieces every reward-model task builds from its config: the backbone, the tokenizer, and, when
`model.spec` is an HF reward model (`LlamaForSequenceClassification`), its trained score head."""

from __future__ import annotations

import jax
import numpy as np

from rmjax import checkpoints
from rmjax.checkpoints import hf_rm
from rmjax.checkpoints.presets import config_only
from rmjax.models.llama import LlamaConfig


def numeric_policy(config, cfg: LlamaConfig) -> LlamaConfig:
  """`cfg` with the run's numeric policy (`model.dtype`, `param_dtype`, `remat`, `attention`;
  configs saved before `model.attention` existed ran 'xla'): the one place every model of a
  run (reward models, the PPO policy, AOT plans) gets it from."""
  m = config.model
  return cfg.replace(dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat,
                     attention=m.get("attention", "xla"))


def backbone_config(config) -> LlamaConfig:
  """The LlamaConfig `backbone` gives, from the spec's config alone (no weights read)."""
  return numeric_policy(config, config_only(config.model.spec))


def backbone(config) -> tuple[LlamaConfig, dict]:
  """(LlamaConfig with the config's numeric policy, pretrained params on host)."""
  cfg, params = checkpoints.load_pretrained(config.model.spec, seed=config.seed)
  return numeric_policy(config, cfg), params


def tokenizer(config):
  return checkpoints.load_tokenizer(config.model.tokenizer or config.model.spec)


def placed(host, ref, shardings):
  """Host arrays `host` in the dtypes of the tree `ref`, placed onto `shardings`."""
  return jax.tree_util.tree_map(lambda x, r, s: jax.device_put(np.asarray(x, dtype=r.dtype), s),
                                host, ref, shardings)


def params_with_backbone(params, backbone_params, shardings):
  """Init params with the 'backbone' subtree swapped for pretrained weights, placed onto the
  backbone's shardings (head params keep their fresh init)."""
  return dict(params, backbone=placed(backbone_params, params["backbone"], shardings["backbone"]))


def pretrained_head(config):
  """The score head of an HF sequence classifier named by `model.spec` ('hf:DIR'), as
  {'kind', 'members', 'params'} (rmjax.checkpoints.hf_rm.score_head), else None."""
  spec = config.model.spec
  if not (isinstance(spec, str) and spec.startswith("hf:")):
    return None
  return hf_rm.score_head(spec[3:])


def with_pretrained_head(config, load_pretrained):
  """`load_pretrained(params, shardings)` that also swaps in `pretrained_head(config)` when it
  fits the model's 'reward_head' (a 1-label classifier under a scalar head, K labels under a
  K-member ensemble head): fine-tuning then starts from the classifier's own rewards. A head
  that does not fit (an MLP head, another K) keeps its fresh init."""
  head = pretrained_head(config)
  if head is None or load_pretrained is None:
    return load_pretrained

  def load(params, shardings):
    out = load_pretrained(params, shardings)
    if "reward_head" not in out or not hf_rm.head_fits(head["params"], out["reward_head"]):
      return out
    return dict(out, reward_head=placed(head["params"], out["reward_head"],
                                        shardings["reward_head"]))
  return load
