"""Load a trained reward model from its workdir and score (prompt, response) pairs in batches."""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from tqdm.auto import tqdm

from rmjax import sharding as shd
from rmjax.errors import ConfigError
from rmjax.models.llama import LlamaConfig
from rmjax.train.checkpoint import Checkpointer


def load_workdir_config(workdir: str) -> mlc.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ConfigError(f"{path} not found: --workdir must be a directory written by `rmjax train`")
  with open(path) as f:
    return mlc.ConfigDict(json.load(f))


class Scorer:
  """A reward model restored from `workdir` (latest or given checkpoint step)."""

  def __init__(self, workdir: str, step: Optional[int] = None, batch_size: int = 16,
               max_length: Optional[int] = None):
    from rmjax import checkpoints
    from rmjax.data.tokenize import ChatEncoder
    from rmjax.main import task_module
    self.config = load_workdir_config(workdir)
    with open(os.path.join(workdir, "model_config.json")) as f:
      self.cfg = LlamaConfig(**json.load(f))
    self.module = task_module(self.config.task)
    make_model = getattr(self.module, "make_model", None)
    if make_model is None:
      from rmjax.train.bt import make_model
    self.model = make_model(self.config, self.cfg)
    self.tokenizer = checkpoints.load_tokenizer(self.config.model.tokenizer or self.config.model.spec)
    self.encoder = ChatEncoder(self.tokenizer, max_length or self.config.data.max_length)
    self.mesh = shd.make_mesh((-1, 1, 1))
    self.batch_size = max(batch_size, shd.batch_divisor(self.mesh))
    self.batch_size -= self.batch_size % shd.batch_divisor(self.mesh)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    if ckpt.latest_step() is None:
      raise ConfigError(f"no checkpoint in {ckpt.directory}")
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(shd.DEFAULT_RULES):
      ids = jnp.zeros((2, 8), jnp.int32)
      boxed = jax.eval_shape(lambda: self.model.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids)))
      shardings = shd.tree_shardings(boxed["params"], self.mesh)
      abstract = shd.with_shardings(shd.strip_boxes(boxed["params"]), shardings)
      self.params = ckpt.restore_params(abstract, step)
      self._apply = jax.jit(lambda p, i, m: self.model.apply({"params": p}, i, m))
    self.step = step if step is not None else ckpt.latest_step()
    ckpt.close()

  def token_ids(self, prompt, response: str, **extra) -> list:
    """Model input for one (prompt, response); a task module may render it its own way
    (`score_ids(encoder, config, messages, response, **extra)`, e.g. SALMON's principles)."""
    from rmjax.data.tokenize import normalize_prompt
    messages = normalize_prompt(prompt)
    if hasattr(self.module, "score_ids"):
      return list(self.module.score_ids(self.encoder, self.config, messages, response, **extra))
    prompt_ids, response_ids, _ = self.encoder.encode_pair(messages, response)[:3]
    return list(prompt_ids) + list(response_ids)

  def record(self, res: dict, i: int) -> dict:
    """The score-output JSON fields of example i (DESIGN.md section 5)."""
    rec = {"reward": float(res["reward"][i])}
    if "members" in res:
      m = res["members"][i]
      rec.update(mean=float(m.mean()), std=float(m.std()), members=[float(x) for x in m])
    names = list(self.config.get("objectives", {}).get("names", []))
    for key in ("objectives", "gate"):
      if key in res:
        vals = res[key][i]
        keys = names if len(names) == len(vals) else [str(j) for j in range(len(vals))]
        rec[key] = {n: float(v) for n, v in zip(keys, vals)}
    return rec

  def score(self, prompts: Sequence, responses: Sequence[str], progress: bool = True,
            **extra) -> dict:
    """Per-example numpy outputs: 'reward' [N]; 'members' [N, K] for ensembles; 'objectives'
    and 'gate' [N, O] for multi-objective models."""
    rows = [self.token_ids(p, r, **extra) for p, r in zip(prompts, responses)]
    outs = []
    pad = getattr(self.tokenizer, "pad_token_id", None) or 0
    for start in tqdm(range(0, len(rows), self.batch_size), desc="score", disable=not progress):
      chunk = rows[start:start + self.batch_size]
      t = _bucket(max(len(x) for x in chunk))
      ids = np.full((self.batch_size, t), pad, np.int32)
      mask = np.zeros((self.batch_size, t), np.int32)
      for i, x in enumerate(chunk):
        ids[i, :len(x)], mask[i, :len(x)] = x, 1
      mask[len(chunk):, 0] = 1  # padding rows: one visible token keeps softmax finite
      with jax.set_mesh(self.mesh), nn.logical_axis_rules(shd.DEFAULT_RULES):
        b = shd.shard_batch({"ids": ids, "mask": mask}, self.mesh)
        out = jax.device_get(self._apply(self.params, b["ids"], b["mask"]))
      outs.append({k: v[:len(chunk)] for k, v in out.items() if k in SCORE_KEYS})
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]} if outs else {"reward": np.zeros(0)}


SCORE_KEYS = ("reward", "members", "objectives", "gate")


def _bucket(n: int) -> int:
  b = 32
  while b < n:
    b *= 2
  return b
