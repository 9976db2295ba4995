"""Load a trained reward model from its workdir and score (prompt, response) pairs in batches.

The method's `TaskSpec` (from `rmjax.tasks.get(config.task)`; `rmjax.tasks.load_scorer` does
the lookup) says how to build the scoring model (`make_model`) and, for principle-conditioned
models, how to render an input (`score_ids`). Batches go through the one padded, bucketed,
sharded forward (`rmjax.inference.embed.batched_forward`).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rmjax import checkpoints
from rmjax import sharding as shd
from rmjax.checkpoints.orbax import Checkpointer
from rmjax.checkpoints.workdir import read_config, read_model_config
from rmjax.data.tokenize import ChatEncoder, normalize_prompt
from rmjax.errors import ConfigError
from rmjax.inference.embed import batched_forward

SCORE_KEYS = ("reward", "members", "objectives", "gate")


class Scorer:
  """A reward model restored from `workdir` (latest or given checkpoint step)."""

  def __init__(self, workdir: str, spec, step: Optional[int] = None, batch_size: int = 16,
               max_length: Optional[int] = None):
    self.config = read_config(workdir)
    self.cfg, self.extras = read_model_config(workdir)
    self.spec = spec
    self.model = spec.require("make_model")(self.config, self.cfg, self.extras)
    self.tokenizer = checkpoints.load_tokenizer(self.config.model.tokenizer or self.config.model.spec)
    self.encoder = ChatEncoder(self.tokenizer, max_length or self.config.data.max_length)
    self.mesh = shd.make_mesh((-1, 1, 1))
    self.batch_size = batch_size
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    if ckpt.latest_step() is None:
      raise ConfigError(f"no checkpoint in {ckpt.directory}")
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(shd.DEFAULT_RULES):
      ids = jnp.zeros((2, 8), jnp.int32)
      boxed = jax.eval_shape(lambda: self.model.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids)))
      shardings = shd.tree_shardings(boxed["params"], self.mesh)
      abstract = shd.with_shardings(shd.strip_boxes(boxed["params"]), shardings)
      self.params = ckpt.restore_params(abstract, step)
    self._apply = jax.jit(lambda p, i, m: {k: v for k, v in self.model.apply({"params": p}, i, m).items()
                                           if k in SCORE_KEYS})
    self.step = step if step is not None else ckpt.latest_step()
    ckpt.close()

  def token_ids(self, prompt, response: str, principles=None) -> list:
    """Model input for one (prompt, response): the chat-rendered conversation, or the task's
    own rendering (`TaskSpec.score_ids`, e.g. SALMON's principles)."""
    messages = normalize_prompt(prompt)
    if self.spec.score_ids is not None:
      return list(self.spec.score_ids(self.encoder, self.config, messages, response, principles))
    if principles is not None:
      raise ConfigError(f"principles need a principle-conditioned model; task "
                        f"{self.config.task!r} takes none")
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
            principles=None) -> dict:
    """Per-example numpy outputs: 'reward' [N]; 'members' [N, K] for ensembles; 'objectives'
    and 'gate' [N, O] for multi-objective models."""
    rows = [self.token_ids(p, r, principles) for p, r in zip(prompts, responses)]
    if not rows:
      return {"reward": np.zeros(0, np.float32)}
    pad = getattr(self.tokenizer, "pad_token_id", None) or 0
    return batched_forward(self._apply, self.params, rows, batch_size=self.batch_size,
                           pad_id=pad, mesh=self.mesh, progress=progress, desc="score")
