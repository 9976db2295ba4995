"""Load a trained reward model from its workdir and score (prompt, response) pairs in batches.

The method's `TaskSpec` (from `rmjax.tasks.get(config.task)`; `rmjax.tasks.runs.load_scorer`
does the lookup) says how to build the scoring model (`make_model`) and, for principle-conditioned
models, how to render an input (`score_ids`). Batches go through the one padded, bucketed,
sharded forward (`rmjax.inference.embed.batched_forward`).

`Scorer.from_hf(DIR)` scores an HF reward model directly, no workdir: a
`LlamaForSequenceClassification` (num_labels 1 -> reward; K -> members + their mean, with an rmjax
export's `member_bias`) or an ArmoRM (`LlamaForRewardModelWithGating`) directory with its
tokenizer, through the same forward (`rmjax.checkpoints.hf_rm.load_reward_model`).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from rmjax import checkpoints
from rmjax import sharding as shd
from rmjax.checkpoints import hf_rm
from rmjax.checkpoints.orbax import Checkpointer
from rmjax.checkpoints.workdir import read_config, read_model_config
from rmjax.data.encode_batch import encode_many
from rmjax.data.objectives import ARMORM_NAMES
from rmjax.data.tokenize import ChatEncoder, normalize_prompt
from rmjax.errors import CheckpointError, ConfigError
from rmjax.inference.embed import batched_forward, prompt_end_pattern

SCORE_KEYS = ("reward", "members", "objectives", "gate")


def _place(params, abstract, where: str):
  """Host params onto the shardings of `abstract` (same tree, shapes checked, dtype cast)."""
  def one(x, a):
    if tuple(np.shape(x)) != tuple(a.shape):
      raise CheckpointError(f"{where}: a weight of shape {tuple(np.shape(x))} where the model "
                            f"expects {tuple(a.shape)}")
    return jax.device_put(np.asarray(x, a.dtype), a.sharding)
  try:
    return jax.tree_util.tree_map(one, params, abstract)
  except ValueError as e:
    raise CheckpointError(f"{where}: weights do not fit the model: {str(e).splitlines()[0]}") from None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


class Scorer:
  """A reward model restored from `workdir` (latest or given checkpoint step), or from an HF
  directory (`Scorer.from_hf`)."""

  def __init__(self, workdir: str, spec, step: Optional[int] = None, batch_size: int = 16,
               max_length: Optional[int] = None, config=None):
    """`config`: the workdir's config.json when the caller has read it already."""
    config = read_config(workdir) if config is None else config
    cfg, extras = read_model_config(workdir)
    model = spec.require("make_model")(config, cfg, extras)
    tokenizer = checkpoints.load_tokenizer(config.model.tokenizer or config.model.spec)
    self._setup(config, cfg, spec, model, tokenizer, batch_size, max_length)
    self.extras = extras
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    if ckpt.latest_step() is None:
      raise ConfigError(f"no checkpoint in {ckpt.directory}")
    abstract = self._abstract_params()
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(shd.DEFAULT_RULES):
      self.params = ckpt.restore_params(abstract, step)
    self.step = step if step is not None else ckpt.latest_step()
    ckpt.close()

  @classmethod
  def from_hf(cls, path: str, batch_size: int = 16, max_length: Optional[int] = None) -> "Scorer":
    """An HF reward-model directory (sequence classifier or ArmoRM) with its tokenizer."""
    path = os.path.expanduser(path)
    model, params, info = hf_rm.load_reward_model(path)
    if not any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES):
      raise CheckpointError(f"{path}: no tokenizer files ({', '.join(TOKENIZER_FILES)}); an HF "
                            f"reward model is scored with its own tokenizer")
    tokenizer = checkpoints.load_tokenizer(f"hf:{path}")
    rm = info["rmjax"]
    names = list(rm.get("objectives") or [])
    if info["kind"] == "armorm":
      if not model.prompt_pattern:  # a released ArmoRM: the chat template's prompt end
        model = model.clone(prompt_pattern=prompt_end_pattern(tokenizer))
      o = model.objectives
      names = names if len(names) == o else list(ARMORM_NAMES) if o == len(ARMORM_NAMES) else [
          str(j) for j in range(o)]
    length = max_length or rm.get("max_length") or min(model.cfg.max_position_embeddings, 4096)
    config = mlc.ConfigDict({"task": f"hf:{info['kind']}", "model": {"spec": f"hf:{path}"},
                             "data": {"max_length": int(length)}, "objectives": {"names": names}})
    self = cls.__new__(cls)
    self._setup(config, model.cfg, None, model, tokenizer, batch_size, None)
    bias = float(rm.get("reward_bias") or 0.0)  # an ensemble exported as its mean head
    if bias:
      forward = self._apply

      def shifted(p, i, m):
        out = forward(p, i, m)
        return dict(out, reward=out["reward"] + bias)
      self._apply = shifted
    self.extras = {"prompt_pattern": list(model.prompt_pattern)} if info["kind"] == "armorm" else {}
    self.params = _place(params, self._abstract_params(), path)
    self.step = None
    return self

  def _setup(self, config, cfg, spec, model, tokenizer, batch_size, max_length) -> None:
    self.config, self.cfg, self.spec, self.model = config, cfg, spec, model
    self.tokenizer = tokenizer
    self.encoder = ChatEncoder(tokenizer, max_length or config.data.max_length)
    self.mesh = shd.make_mesh((-1, 1, 1))
    self.batch_size = batch_size
    self._apply = jax.jit(lambda p, i, m: {k: v for k, v in self.model.apply({"params": p}, i, m).items()
                                           if k in SCORE_KEYS})

  def _abstract_params(self):
    """Param shapes of the model, carrying the mesh shardings their logical names give."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(shd.DEFAULT_RULES):
      ids = jnp.zeros((2, 8), jnp.int32)
      boxed = jax.eval_shape(lambda: self.model.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids)))
      shardings = shd.tree_shardings(boxed["params"], self.mesh)
      return shd.with_shardings(shd.strip_boxes(boxed["params"]), shardings)

  def token_ids(self, prompt, response: str, principles=None) -> list:
    """Model input for one (prompt, response): the chat-rendered conversation, or the task's
    own rendering (`TaskSpec.score_ids`, e.g. SALMON's principles)."""
    messages = normalize_prompt(prompt)
    if getattr(self.spec, "score_ids", None) is not None:
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

  def rows(self, prompts: Sequence, responses: Sequence[str], principles=None):
    """(token rows, truncated): the model inputs of (prompt, response) items scored alone, as
    `score` runs them (`rmjax.data.tokenize.truncate` with one response: the row the response
    has in a training pair whose other response is not longer); `truncated` is a bool array for
    chat-rendered inputs, None for task-rendered ones. Pairs: `pair_rows`."""
    if getattr(self.spec, "score_ids", None) is not None or principles is not None:
      # the task renders its own inputs: truncation is its business
      return [self.token_ids(p, r, principles) for p, r in zip(prompts, responses)], None
    # the chat-rendered conversations, tokenized in batches (rmjax.data.encode_batch)
    items = [(normalize_prompt(p), [r]) for p, r in zip(prompts, responses)]
    rows, cut = [], []
    for prompt_ids, response_ids in encode_many(self.encoder, items):
      prompt_ids, (response_ids,), was_cut = self.encoder.cut(prompt_ids, response_ids)
      rows.append(list(prompt_ids) + list(response_ids))
      cut.append(was_cut)
    return rows, np.asarray(cut, bool)

  def pair_rows(self, prompts: Sequence, chosen: Sequence[str], rejected: Sequence[str],
                principles=None):
    """(chosen rows, rejected rows, truncated): the model inputs of preference pairs under the
    training rule (`rmjax.data.tokenize.truncate`): each pair's prompt is cut once for both
    responses, so `rmjax eval` reads exactly the ids its pairs had in a training batch, and a
    pair's longer side gets the row `rows` gives it alone. `truncated` is a bool array (the pair
    was cut) for chat-rendered inputs, None for task-rendered ones (rendered per response)."""
    if getattr(self.spec, "score_ids", None) is not None or principles is not None:
      return (self.rows(prompts, chosen, principles)[0],
              self.rows(prompts, rejected, principles)[0], None)
    items = [(normalize_prompt(p), [c, r]) for p, c, r in zip(prompts, chosen, rejected)]
    rows_c, rows_r, cut = [], [], []
    for prompt_ids, responses in encode_many(self.encoder, items):
      prompt_ids, (c, r), was_cut = self.encoder.cut(prompt_ids, responses)
      rows_c.append(list(prompt_ids) + list(c))
      rows_r.append(list(prompt_ids) + list(r))
      cut.append(was_cut)
    return rows_c, rows_r, np.asarray(cut, bool)

  def text_rows(self, texts: Sequence[str]):
    """(token rows, truncated) of already formatted texts (a chat-rendered conversation, as
    OpenRLHF sends them): tokenized as the chat encoder tokenizes a conversation (no special
    tokens added), the first max_length tokens kept."""
    rows, cut, limit = [], [], self.encoder.max_length
    for text in texts:
      ids = list(self.tokenizer.encode(text, add_special_tokens=False))
      cut.append(len(ids) > limit)
      rows.append(ids[:limit])
    self.encoder.n_truncated += sum(cut)
    return rows, np.asarray(cut, bool)

  def score_rows(self, rows: Sequence[Sequence[int]], progress: bool = False,
                 batch_size: Optional[int] = None) -> dict:
    """Per-row numpy outputs ('reward' [N], 'members', 'objectives', 'gate') of token rows, in
    forwards of `batch_size` rows (default: the scorer's)."""
    if not rows:
      return {"reward": np.zeros(0, np.float32)}
    pad = getattr(self.tokenizer, "pad_token_id", None) or 0
    return batched_forward(self._apply, self.params, rows, batch_size=batch_size or self.batch_size,
                           pad_id=pad, mesh=self.mesh, progress=progress, desc="score")

  def score(self, prompts: Sequence, responses: Sequence[str], progress: bool = True,
            principles=None) -> dict:
    """Per-example numpy outputs: 'reward' [N]; 'members' [N, K] for ensembles; 'objectives'
    and 'gate' [N, O] for multi-objective models; 'truncated' [N] (bool: the input was cut to
    max_length) for chat-rendered inputs."""
    rows, cut = self.rows(prompts, responses, principles)
    extra = {} if cut is None else {"truncated": cut}
    return dict(self.score_rows(rows, progress), **extra)

  def score_pairs(self, prompts: Sequence, chosen: Sequence[str], rejected: Sequence[str],
                  progress: bool = True, principles=None) -> tuple:
    """(chosen outputs, rejected outputs) of preference pairs, as `score` gives them, with the
    inputs `pair_rows` makes (one prompt cut per pair, as in training); 'truncated' [N] (both
    sides: the pair was cut) for chat-rendered inputs."""
    rows_c, rows_r, cut = self.pair_rows(prompts, chosen, rejected, principles)
    out = self.score_rows(rows_c + rows_r, progress)
    n = len(rows_c)
    extra = {} if cut is None else {"truncated": cut}
    return ({k: v[:n] for k, v in out.items()} | extra, {k: v[n:] for k, v in out.items()} | extra)
