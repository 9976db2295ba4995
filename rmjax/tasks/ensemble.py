"""Reward-model ensembles (ALGORITHMS.md section 2.1): `rmjax train --config configs/ensemble.py:tiny`.

Two constructions, chosen by `config.ensemble.mode`:
  heads        one shared backbone + K linear heads stacked on the `ensemble` axis (one einsum;
               `RewardModel(head='ensemble')`); joint loss = mean over members of each member's
               own BT loss, so the backbone sees all K gradients.
  independent  K full reward models (backbone + scalar head each), params stacked on a leading
               `ensemble` axis and run with `nn.vmap` (one program, no Python loop over members);
               only when K copies of the backbone fit in memory.
Diversity comes from each member's own head init (member k's head is drawn from
fold_in(PRNGKey(ensemble.seed), k), so member k is the same whatever K is) and, optionally, a
bootstrap of the training data: per-member example weights [N, K] drawn once on the host
(`poisson`: Poisson(1) per example; `multinomial`: counts of N draws with replacement),
deterministic under `ensemble.seed` and looked up by the batch's example `index`.

The model outputs 'members' [B, K] and 'reward' = their mean, so `rmjax score` writes
mean/std/members and `rmjax eval` can add the uncertainty report. The frozen-backbone fast path
(cached embeddings + optax on [N, D] arrays) is `rmjax.train.embedding_cache`; set
`ensemble.cached_embeddings = True` to use it through `run`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rmjax import losses
from rmjax.errors import ConfigError
from rmjax.eval.uncertainty import uncertainty_report
from rmjax.models.llama import LlamaConfig
from rmjax.models.reward_model import RewardModel
from rmjax.train import builders
from rmjax.train.bt import forward_pairs, pair_data, summarize_pairs
from rmjax.train.loop import Task, train

BOOTSTRAP = ("none", "poisson", "multinomial")
MODES = ("heads", "independent")


class IndependentEnsemble(nn.Module):
  """K full reward models vmapped over params stacked on a leading `ensemble` axis.

  Params: {'ensemble': {'backbone': [K, ...], 'reward_head': [K, ...]}}. Outputs like
  RewardModel's ensemble head: 'members' [B, K], 'reward' [B] (mean), 'pooled' [B, K, D].
  """
  cfg: LlamaConfig
  members: int
  stop_backbone_grad: bool = False

  @nn.compact
  def __call__(self, input_ids, attention_mask, deterministic: bool = True) -> dict:
    stacked = nn.vmap(RewardModel, variable_axes={"params": 0},
                      split_rngs={"params": True, "dropout": True}, in_axes=(None, None),
                      out_axes=0, axis_size=self.members,
                      metadata_params={nn.PARTITION_NAME: "ensemble"})
    out = stacked(self.cfg, head="scalar", stop_backbone_grad=self.stop_backbone_grad,
                  name="ensemble")(input_ids, attention_mask)
    members = out["reward"].T                                  # [K, B] -> [B, K]
    return {"members": members, "reward": members.mean(axis=-1),
            "pooled": jnp.moveaxis(out["pooled"], 0, 1)}


def _ens(config):
  e = config.get("ensemble", None)
  if e is None:
    raise ConfigError("the ensemble task needs a config.ensemble section (see configs/ensemble.py)")
  if e.members < 1:
    raise ConfigError(f"ensemble.members must be >= 1, got {e.members}")
  if e.mode not in MODES:
    raise ConfigError(f"ensemble.mode must be one of {', '.join(MODES)}, got {e.mode!r}")
  if e.bootstrap not in BOOTSTRAP:
    raise ConfigError(f"ensemble.bootstrap must be one of {', '.join(BOOTSTRAP)}, got {e.bootstrap!r}")
  return e


def make_model(config, cfg):
  """The ensemble reward model for `config` (used by training and by `rmjax score/eval`)."""
  e = _ens(config)
  if e.mode == "independent":
    return IndependentEnsemble(cfg, e.members, stop_backbone_grad=config.train.freeze_backbone)
  return RewardModel(cfg, head="ensemble", members=e.members,
                     stop_backbone_grad=config.train.freeze_backbone)


def bootstrap_weights(n: int, members: int, kind: str = "poisson", seed: int = 0) -> np.ndarray:
  """Per-member example weights [n, K] (float32), member k drawn from rng([seed, k]) only.

  none: all ones. poisson: Poisson(1) counts (the online bootstrap). multinomial: counts of n
  draws with replacement from n examples (the classic bootstrap; each column sums to n).
  """
  if kind not in BOOTSTRAP:
    raise ConfigError(f"bootstrap must be one of {', '.join(BOOTSTRAP)}, got {kind!r}")
  if kind == "none":
    return np.ones((n, members), np.float32)
  cols = []
  for k in range(members):
    rng = np.random.default_rng([seed, k, 7])
    if kind == "poisson":
      cols.append(rng.poisson(1.0, n))
    else:
      cols.append(np.bincount(rng.integers(0, n, n), minlength=n))
  return np.stack(cols, axis=1).astype(np.float32)


def member_head_init(params, seed: int, mode: str = "heads"):
  """Re-draw each member's head from its own key fold_in(PRNGKey(seed), k) (unboxed params).

  heads: kernel [K, D] ~ N(0, 1/D), bias 0. independent: each member's scalar head kernel
  [K, D, 1] likewise. The backbone is left as is.
  """
  base = jax.random.PRNGKey(seed)
  if mode == "heads":
    head = params["reward_head"]
    k, d = head["kernel"].shape
    rows = jnp.stack([jax.random.normal(jax.random.fold_in(base, i), (d,)) for i in range(k)])
    return dict(params, reward_head=dict(head, kernel=(rows / d ** 0.5).astype(head["kernel"].dtype)))
  ens = params["ensemble"]
  dense = ens["reward_head"]["Dense_0"]
  k, d = dense["kernel"].shape[:2]
  rows = jnp.stack([jax.random.normal(jax.random.fold_in(base, i), (d, 1)) for i in range(k)])
  new_dense = dict(dense, kernel=(rows / d ** 0.5).astype(dense["kernel"].dtype))
  return dict(params, ensemble=dict(ens, reward_head=dict(ens["reward_head"], Dense_0=new_dense)))


def member_bt_losses(m_c, m_r, weight, boot=None, *, margin=None, label_smoothing=0.0,
                     centering_coef=0.0):
  """Each member's own weighted BT loss: m_c, m_r [B, K]; weight [B]; boot [B, K] or None.

  Returns [K]: member k's loss is the (weight * boot_k)-weighted mean over the batch.
  """
  d = m_c - m_r                                              # [B, K]
  if margin is not None:
    d = d - margin[:, None]
  per = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(d) - label_smoothing * jax.nn.log_sigmoid(-d)
  if centering_coef:
    per = per + centering_coef * (m_c + m_r) ** 2
  w = weight[:, None] * (1.0 if boot is None else boot)     # [B, K]
  return jnp.sum(per * w, axis=0) / jnp.maximum(jnp.sum(w, axis=0), 1e-9)


def ensemble_loss_fn(model, loss_cfg, boot_table=None):
  """loss_fn(params, batch, rng): mean over members of member_bt_losses; metrics on the mean
  reward plus member spread and member losses."""
  table = None if boot_table is None else jnp.asarray(boot_table)

  def loss_fn(params, batch, rng):
    c, r = forward_pairs(model, params, batch)
    boot = None if table is None else table[batch["index"]]  # [B, K]
    per_member = member_bt_losses(
        c["members"], r["members"], batch["weight"], boot,
        margin=batch["margin"] if loss_cfg.use_margin else None,
        label_smoothing=loss_cfg.label_smoothing, centering_coef=loss_cfg.centering_coef)
    metrics = losses.pair_metrics(c["reward"], r["reward"], batch["weight"])
    w = batch["weight"]
    d = c["members"] - r["members"]
    metrics["member_margin_std"] = jnp.sum(jnp.std(d, axis=-1) * w) / jnp.maximum(jnp.sum(w), 1e-9)
    metrics["member_accuracy"] = jnp.sum(jnp.mean((d > 0).astype(jnp.float32), -1) * w) / jnp.maximum(
        jnp.sum(w), 1e-9)
    for k in range(per_member.shape[0]):
      metrics[f"member_loss_{k}"] = per_member[k]
    return jnp.mean(per_member), metrics
  return loss_fn


def ensemble_eval_fn(model):
  def eval_fn(params, batch):
    c, r = forward_pairs(model, params, batch)
    return {"chosen": c["reward"], "rejected": r["reward"], "chosen_members": c["members"],
            "rejected_members": r["members"], "weight": batch["weight"]}
  return eval_fn


def summarize_ensemble(examples):
  """Pair report of the mean reward plus the uncertainty report (flattened to scalars)."""
  base = summarize_pairs(examples)

  def summarize(out):
    rep = base(out)
    keep = out["weight"] > 0
    mc, mr = out["chosen_members"][keep], out["rejected_members"][keep]
    if mc.shape[1] >= 2:
      u = uncertainty_report(mc, mr)
      for k, v in u.items():
        if isinstance(v, (int, float)) and k not in ("n", "accuracy", "ece"):
          rep[f"unc_{k}"] = v
    return rep
  return summarize


def _load_backbone(mode, backbone_params, members):
  def load(params, shardings):
    if mode == "heads":
      return builders.params_with_backbone(params, backbone_params, shardings)
    placed = jax.tree_util.tree_map(
        lambda x, ref, s: jax.device_put(np.broadcast_to(np.asarray(x, ref.dtype), ref.shape), s),
        backbone_params, params["ensemble"]["backbone"], shardings["ensemble"]["backbone"])
    return dict(params, ensemble=dict(params["ensemble"], backbone=placed))
  return load


def build(config) -> Task:
  e = _ens(config)
  cfg, backbone_params = builders.backbone(config)
  tok = builders.tokenizer(config)
  model = make_model(config, cfg)
  batcher, eval_batches, evals, stats = pair_data(config, tok)
  boot = None
  if e.bootstrap != "none":
    boot = bootstrap_weights(len(batcher.data), e.members, e.bootstrap, e.seed)
  stats = dict(stats, ensemble={"members": e.members, "mode": e.mode, "bootstrap": e.bootstrap})

  def init_params(rng):
    ids = jnp.zeros((2, 8), jnp.int32)
    boxed = model.init(rng, ids, jnp.ones_like(ids))["params"]
    fresh = member_head_init(nn.unbox(boxed), e.seed, e.mode)
    return jax.tree_util.tree_map(
        lambda b, v: b.replace_boxed(v) if isinstance(b, nn.LogicallyPartitioned) else v,
        boxed, fresh, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))

  trainable = None
  if config.train.freeze_backbone:
    if e.mode == "independent":
      raise ConfigError("train.freeze_backbone with ensemble.mode='independent' trains K heads on "
                        "K identical frozen backbones: use mode='heads' (or cached_embeddings)")
    trainable = lambda k: k != "backbone"
  return Task(
      init_params=init_params,
      loss_fn=ensemble_loss_fn(model, config.loss, boot),
      train_batches=batcher,
      eval_fn=ensemble_eval_fn(model) if evals else None,
      eval_batches=eval_batches if evals else None,
      summarize_eval=summarize_ensemble(evals),
      load_pretrained=_load_backbone(e.mode, backbone_params, e.members),
      trainable=trainable,
      info=stats,
      model_config=cfg)


def run(config, workdir: str):
  """`rmjax train` entry: the generic loop, or the cached-embedding fast path when
  `ensemble.cached_embeddings` is set (frozen backbone, K heads trained with optax on [N, D])."""
  e = _ens(config)
  if e.get("cached_embeddings", False):
    from rmjax.train import embedding_cache
    return embedding_cache.run(config, workdir)
  return train(config, workdir, build(config))
