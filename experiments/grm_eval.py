"""Evaluate a trained reward-model workdir on pair sets, in process (used by grm_ood.py and the
GRM notebook).

Same numbers as `rmjax eval --workdir W --data SPEC`, but the pairs are tokenized exactly as in
training (prompt/response split, truncation to data.max_length) and batched with PairBatcher,
and the model is built once for several sets. Params are restored straight from the orbax
checkpoint onto a data-parallel mesh.
"""

from __future__ import annotations

import json
import os
import sys
import pathlib

if __package__ in (None, ''):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections as mlc  # noqa: E402
import numpy as np  # noqa: E402

from rmjax import checkpoints, sharding as shd  # noqa: E402
from rmjax.models.llama import LlamaConfig  # noqa: E402
from rmjax.train import bt  # noqa: E402
from rmjax.train.checkpoint import Checkpointer  # noqa: E402


class WorkdirModel:
  """Reward model + params restored from a `rmjax train` workdir (latest checkpoint)."""

  def __init__(self, workdir: str, step=None):
    from rmjax.main import task_module
    with open(os.path.join(workdir, "config.json")) as f:
      self.config = mlc.ConfigDict(json.load(f))
    with open(os.path.join(workdir, "model_config.json")) as f:
      self.cfg = LlamaConfig(**json.load(f))
    module = task_module(self.config.task)
    make_model = getattr(module, "make_model", bt.make_model)
    self.model = make_model(self.config, self.cfg)
    self.mesh = shd.make_mesh((-1, 1, 1))
    ids = jnp.zeros((2, 8), jnp.int32)
    boxed = jax.eval_shape(lambda: self.model.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids)))
    shardings = shd.tree_shardings(boxed["params"], self.mesh)
    abstract = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(boxed["params"]),
        shardings)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(shd.DEFAULT_RULES):
      self.params = ckpt.restore_params(abstract, step)
    self.step = step if step is not None else ckpt.latest_step()
    ckpt.close()
    self._eval = jax.jit(bt.pair_eval_fn(self.model))
    self.tokenizer = checkpoints.load_tokenizer(self.config.model.tokenizer or self.config.model.spec)

  def evaluate(self, examples, batch_size: int = 16, max_length=None) -> dict:
    """pair_report (accuracy, per subset, length baseline, ECE) + mean BT loss over `examples`."""
    from rmjax.data.batching import PairBatcher, tokenize_pairs
    from rmjax.data.tokenize import ChatEncoder
    encoder = ChatEncoder(self.tokenizer, max_length or self.config.data.max_length)
    tok, _ = tokenize_pairs(examples, encoder, on_overlong="truncate", progress=False)
    batch_size -= batch_size % shd.batch_divisor(self.mesh)
    batcher = PairBatcher(tok, max(batch_size, shd.batch_divisor(self.mesh)), shuffle=False,
                          drop_remainder=False, buckets=tuple(self.config.data.buckets))
    parts = []
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(shd.DEFAULT_RULES):
      for batch in batcher.eval_batches():
        parts.append(jax.device_get(self._eval(self.params, shd.shard_batch(batch, self.mesh))))
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return bt.summarize_pairs(examples)(out)


def subsample(examples, n: int, seed: int = 0):
  """n examples drawn without replacement (fixed seed), kept in their original order."""
  if not n or n >= len(examples):
    return list(examples)
  keep = np.sort(np.random.default_rng(seed).permutation(len(examples))[:n])
  return [examples[i] for i in keep]
