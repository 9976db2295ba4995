"""Evaluate a trained reward-model workdir on pair sets, in process (used by grm_ood.py).

Same numbers as `rmjax eval --workdir W --data SPEC`, but the pairs are tokenized exactly as in
training (prompt/response split, truncation to data.max_length) and batched with PairBatcher,
and the model is built once for several sets. Params are restored straight from the orbax
checkpoint onto a data-parallel mesh.
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rmjax import checkpoints, sharding as shd, tasks
from rmjax.checkpoints.orbax import Checkpointer
from rmjax.checkpoints.workdir import read_config, read_model_config
from rmjax.tasks.pairs import pair_eval_fn, summarize_pairs


class WorkdirModel:
  """Reward model + params restored from a `rmjax train` workdir (latest checkpoint)."""

  def __init__(self, workdir: str, step=None):
    self.config = read_config(workdir)
    self.cfg, extras = read_model_config(workdir)
    make_model = tasks.get(self.config.task).require("make_model")
    self.model = make_model(self.config, self.cfg, extras)
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
    self._eval = jax.jit(pair_eval_fn(self.model))
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
        parts.append(jax.device_get(self._eval(self.params, shd.shard_batch(batch, self.mesh, global_batch=True))))
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return summarize_pairs(examples)(out)


def subsample(examples, n: int, seed: int = 0):
  """n examples drawn without replacement (fixed seed), kept in their original order."""
  if not n or n >= len(examples):
    return list(examples)
  keep = np.sort(np.random.default_rng(seed).permutation(len(examples))[:n])
  return [examples[i] for i in keep]
