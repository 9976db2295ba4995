"""Pieces every reward-model task builds from its config: backbone, tokenizer and pair data."""

from __future__ import annotations

import functools

import jax
import numpy as np

from rmjax import checkpoints
from rmjax.errors import ConfigError
from rmjax.models.llama import LlamaConfig


def backbone(config) -> tuple[LlamaConfig, dict]:
  """(LlamaConfig with the config's numeric policy, pretrained params on host)."""
  cfg, params = checkpoints.load_pretrained(config.model.spec, seed=config.seed)
  cfg = cfg.replace(dtype=config.model.dtype, param_dtype=config.model.param_dtype,
                    remat=config.model.remat)
  return cfg, params


def tokenizer(config):
  return checkpoints.load_tokenizer(config.model.tokenizer or config.model.spec)


def load_pairs(spec: str, seed: int = 0, limit: int = 0):
  """Pair examples and read stats for a data spec; 'synthetic:N' is the built-in gold-reward set,
  several specs may be joined with '+'; a trailing '@train' / '@eval' keeps one side of the
  90/10 prompt-hash split of the whole (`sources.hash_side`)."""
  from rmjax.data import sources, synthetic
  spec, side = sources.split_side(spec)
  if side is not None:
    examples, stats = load_pairs(spec, seed, 0)
    examples = sources.hash_side(examples, side)
    stats = dict(stats, split_side=side, kept_side=len(examples))
  elif "+" in spec:  # several sources joined
    examples, stats = [], {}
    for part in spec.split("+"):
      part = part if ":" in part else f"{spec.split(':', 1)[0]}:{part}"
      got, s = load_pairs(part, seed, 0)
      examples += got
      stats[part] = {k: v for k, v in s.items() if k != "invalid_examples"}
  elif spec.startswith("synthetic:"):
    n = int(spec.split(":", 1)[1] or 2000)
    examples = synthetic.make_pairs(n, seed=seed)
    stats = {"read": n, "kept": n}
  else:
    examples, stats = sources.load_source(spec)
  if limit:
    examples = examples[:limit]
  return examples, stats


def train_eval_pairs(config):
  """(train examples, eval examples, stats): eval from `data.eval_source`, else a held-out
  fraction of the train source split by prompt hash (a prompt never lands on both sides)."""
  from rmjax.data import sources
  d = config.data
  train, stats = load_pairs(d.source, config.seed, d.limit)
  if d.eval_source:
    evals, _ = load_pairs(d.eval_source, config.seed + 1)
  else:
    train, evals = sources.split_by_prompt_hash(train, eval_fraction=d.eval_fraction, seed=config.seed)
    if d.eval_fraction and not (train and evals):
      raise ConfigError(f"splitting {d.source} by prompt hash left {len(train)} train and "
                        f"{len(evals)} eval pairs (too few distinct prompts): set data.eval_source")
  if d.max_eval_examples:
    evals = evals[:d.max_eval_examples]
  stats = dict(stats, train_pairs=len(train), eval_pairs=len(evals))
  return train, evals, stats


def params_with_backbone(params, backbone_params, shardings):
  """Init params with the 'backbone' subtree swapped for pretrained weights, placed onto the
  backbone's shardings (head params keep their fresh init)."""
  placed = jax.tree_util.tree_map(
      lambda x, ref, s: jax.device_put(np.asarray(x, dtype=ref.dtype), s),
      backbone_params, params["backbone"], shardings["backbone"])
  return dict(params, backbone=placed)
