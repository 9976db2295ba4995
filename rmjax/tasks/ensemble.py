"""Reward-model ensembles (ALGORITHMS.md section 2.1): `rmjax train --config configs/ensemble.py:tiny`.

Two constructions, chosen by `config.ensemble.mode`:
  heads        one shared backbone + K linear heads stacked on the `ensemble` axis (one einsum;
               `RewardModel(head='ensemble')`); joint loss = mean over members of each member's
               own BT loss, so the backbone sees all K gradients.
  independent  K full reward models (backbone + scalar head each), params stacked on a leading
               `ensemble` axis and run with `nn.vmap` (one program, no Python loop over members);
               only when K copies of the backbone fit in memory.
  lora         K LoRA members on ONE shared frozen backbone (needs `model.lora.rank` > 0): member
               k = base + its own adapters + its own scalar head (`LoraMembers`); the K forwards
               are one vmap with the base broadcast, so the backbone is held once.
Diversity comes from each member's own head init (member k's head is drawn from
fold_in(PRNGKey(ensemble.seed), k), so member k is the same whatever K is) and, optionally, a
bootstrap of the training data: per-member example weights [N, K] drawn once on the host
(`poisson`: Poisson(1) per example; `multinomial`: counts of N draws with replacement),
deterministic under `ensemble.seed` and looked up by the batch's example `index`.

The model outputs 'members' [B, K] and 'reward' = their mean, so `rmjax score` writes
mean/std/members and `rmjax eval` can add the uncertainty report. The frozen-backbone fast path
(cached features + K heads fitted on [N, D] arrays, `run_cached`) is chosen by
`ensemble.cached_embeddings = True`.
"""

from __future__ import annotations

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from rmjax import losses
from rmjax.errors import ConfigError
from rmjax.eval.uncertainty import uncertainty_report
from rmjax.models import lora
from rmjax.models.init import init_params
from rmjax.models.llama import LlamaConfig
from rmjax.models.reward_model import RewardModel
from rmjax.data.batching import tokenize_pairs
from rmjax.data.specs import train_eval_pairs
from rmjax.data.tokenize import ChatEncoder
from rmjax.tasks import common
from rmjax.tasks.pairs import (PairMethod, compile_pairs, forward_pairs, pair_features, pair_spec,
                               summarize_pairs)
from rmjax.train import head_fit
from rmjax.train.loop import train as loop_train
from rmjax.train.run import Run

BOOTSTRAP = ("none", "poisson", "multinomial")
MODES = ("heads", "independent", "lora")


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


def _per_member(path: str) -> bool:
  return lora.is_adapter(path) or path.startswith("reward_head/")


class LoraMembers:
  """K LoRA reward models sharing one frozen backbone (`ensemble.mode='lora'`).

  Params: the backbone once; its adapter leaves and the 'reward_head' carry a leading `ensemble`
  axis [K, ...] (member k drawn from fold_in(PRNGKey(seed), k)). `apply` vmaps the LoRA
  `RewardModel` over that axis with the base broadcast; outputs like the other modes. Each
  member still runs the base matmuls (its adapters change every layer's input). Provides the
  two Linen calls the loop and the scorer make, `init` and `apply`.
  """

  def __init__(self, member: RewardModel, members: int, seed: int = 0):
    self.member, self.members, self.seed = member, members, seed

  def init(self, rng, input_ids, attention_mask) -> dict:
    del rng  # member k's adapters and head come from ensemble.seed alone (independent of K)
    keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(self.seed), k)
                      for k in range(self.members)])
    one = lambda key: self.member.init(key, input_ids, attention_mask)["params"]  # noqa: E731
    stacked = jax.vmap(lambda key: nn.unbox(one(key)))(keys)
    is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)  # noqa: E731

    def pick(path, box, value):
      if not _per_member(lora.path_str(path)):
        return box
      return box.replace(value=value, names=("ensemble", *box.names)) if is_box(box) else value
    return {"params": jax.tree_util.tree_map_with_path(pick, one(keys[0]), stacked,
                                                       is_leaf=is_box)}

  def apply(self, variables, input_ids, attention_mask, deterministic: bool = True,
            rngs=None) -> dict:
    flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(variables["params"]).items()}
    shared = {k: v for k, v in flat.items() if not _per_member(k)}
    unflat = lambda d: traverse_util.unflatten_dict(  # noqa: E731
        {tuple(k.split("/")): v for k, v in d.items()})

    def one(own):
      return self.member.apply({"params": unflat({**shared, **own})}, input_ids, attention_mask,
                               deterministic=deterministic, rngs=rngs)
    out = jax.vmap(one)({k: v for k, v in flat.items() if _per_member(k)})
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
  if e.mode == "lora":
    if lora.settings(config.model.get("lora")) is None:
      raise ConfigError("ensemble.mode='lora' needs model.lora.rank > 0")
    return LoraMembers(lora.from_config(config, RewardModel(cfg)), e.members, e.seed)
  if e.mode == "independent":
    if lora.settings(config.model.get("lora")) is not None:
      raise ConfigError("model.lora with ensemble.mode='independent' would freeze K copies of the "
                        "backbone: use mode='lora' (K adapter sets on one backbone) or 'heads'")
    return IndependentEnsemble(cfg, e.members, stop_backbone_grad=config.train.freeze_backbone)
  return lora.from_config(config, RewardModel(cfg, head="ensemble", members=e.members,
                                              stop_backbone_grad=config.train.freeze_backbone))


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


def ensemble_loss_fn(model, loss_cfg):
  """loss_fn(params, batch, rng): mean over members of member_bt_losses (each example weighted
  by the batch's bootstrap weights `boot` [B, K] when it carries them); metrics on the mean
  reward plus member spread and member losses."""

  def loss_fn(params, batch, rng):
    c, r = forward_pairs(model, params, batch)
    boot = batch.get("boot")  # [B, K], `bootstrap_arrays` looked up by example index
    per_member = losses.member_bradley_terry(
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


def _load_backbone(mode, backbone_params):
  def load(params, shardings):
    if mode in ("heads", "lora"):
      return common.params_with_backbone(params, backbone_params, shardings)
    placed = jax.tree_util.tree_map(
        lambda x, ref, s: jax.device_put(np.broadcast_to(np.asarray(x, ref.dtype), ref.shape), s),
        backbone_params, params["ensemble"]["backbone"], shardings["ensemble"]["backbone"])
    return dict(params, ensemble=dict(params["ensemble"], backbone=placed))
  return load


def _check(config) -> None:
  e = _ens(config)
  if config.train.freeze_backbone and e.mode == "independent":
    raise ConfigError("train.freeze_backbone with ensemble.mode='independent' trains K heads on "
                      "K identical frozen backbones: use mode='heads' (or cached_embeddings)")


def bootstrap_arrays(config, n: int) -> dict:
  """The per-example bootstrap weights [n, K] the batches carry as `boot` (none: nothing)."""
  e = _ens(config)
  return {} if e.bootstrap == "none" else {"boot": bootstrap_weights(n, e.members, e.bootstrap,
                                                                     e.seed)}


def member_init(config, model):
  """init_params(rng): each member's head from its own key (`member_head_init`; LoRA members
  are drawn in `LoraMembers.init`)."""
  mode, seed = _ens(config).mode, _ens(config).seed

  def init(rng):
    boxed = init_params(model, rng)
    if mode == "lora":
      return boxed
    fresh = member_head_init(nn.unbox(boxed), seed, mode)
    return jax.tree_util.tree_map(
        lambda b, v: b.replace_boxed(v) if isinstance(b, nn.LogicallyPartitioned) else v,
        boxed, fresh, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  return init


METHOD = PairMethod(
    loss=lambda config, model, cfg: ensemble_loss_fn(model, config.loss),
    model=lambda config, cfg: make_model(config, cfg), check=_check,
    example_arrays=bootstrap_arrays, init=member_init,
    load=lambda config, backbone: _load_backbone(_ens(config).mode, backbone),
    eval=ensemble_eval_fn, summary=summarize_ensemble,
    info=lambda config: {"ensemble": {k: _ens(config)[k] for k in ("members", "mode", "bootstrap")}},
    passes=lambda config: _ens(config).members if _ens(config).mode == "independent" else 1)


def run_cached(config, workdir: str) -> dict:
  """The frozen-backbone fast path (`ensemble.cached_embeddings`): pooled features from the
  embed cache, K heads fitted in one `lax.scan` (`head_fit.train_heads`: standardised inputs,
  own AdamW settings `ensemble.head_*`), then backbone + heads saved as one checkpoint in the
  layout `make_model` builds, so `rmjax score/eval --workdir` work as for the full task."""
  e = _ens(config)
  cfg, backbone = common.backbone(config)
  tok = common.tokenizer(config)
  train_ex, eval_ex, stats = train_eval_pairs(config)
  enc = ChatEncoder(tok, config.data.max_length)
  run = Run(config, workdir, model_config=cfg, info=stats)
  t0 = time.perf_counter()
  feats = {}
  for split, ex in (("train", train_ex), ("eval", eval_ex)):
    if ex:
      tokd, _ = tokenize_pairs(ex, enc, on_overlong="truncate")
      feats[split] = pair_features(config, cfg, backbone, tokd, split)
  t_embed = time.perf_counter() - t0
  boot = None
  if e.bootstrap != "none":
    boot = bootstrap_weights(len(train_ex), e.members, e.bootstrap, e.seed)
  t0 = time.perf_counter()
  head, hist = head_fit.train_heads(
      feats["train"]["chosen"], feats["train"]["rejected"], e.members, steps=e.head_steps,
      lr=e.head_lr, batch_size=e.head_batch_size, seed=e.seed, boot=boot,
      weight_decay=e.head_weight_decay, label_smoothing=config.loss.label_smoothing)
  final = {"step": e.head_steps, "loss": float(hist[-1]), "embed_s": t_embed,
           "head_train_s": time.perf_counter() - t0}
  for i in range(0, len(hist), max(config.train.log_every, 1)):
    run.log(i + 1, {"loss": float(hist[i])})
  if "eval" in feats:
    mc = np.asarray(head_fit.head_scores(head, feats["eval"]["chosen"]))
    mr = np.asarray(head_fit.head_scores(head, feats["eval"]["rejected"]))
    rep = summarize_ensemble(eval_ex)({"chosen": mc.mean(1), "rejected": mr.mean(1),
                                       "chosen_members": mc, "rejected_members": mr,
                                       "weight": np.ones(len(mc))})
    final.update({k: v for k, v in run.log(e.head_steps, rep, prefix="eval_").items()
                  if k != "step"})
  params = {"backbone": backbone, "reward_head": {"kernel": np.asarray(head["kernel"]),
                                                  "bias": np.asarray(head["bias"])}}
  run.save_final(e.head_steps, params)
  run.close()
  return final


def train_ensemble(config, workdir: str) -> dict:
  """`rmjax train`: the supervised loop, or the cached fast path (`ensemble.cached_embeddings`)."""
  if _ens(config).get("cached_embeddings", False):
    if lora.settings(config.model.get("lora")) is not None:
      raise ConfigError("ensemble.cached_embeddings fits heads on a frozen backbone's features: "
                        "it does not train LoRA adapters (unset one of them)")
    return run_cached(config, workdir)
  return loop_train(config, workdir, build(config))


def compile_steps(config, mesh) -> list:
  if _ens(config).get("cached_embeddings", False):
    raise ConfigError("ensemble.cached_embeddings fits the heads on host feature arrays (no "
                      "train step on the mesh): compile --config.ensemble.cached_embeddings=False")
  return compile_pairs(config, METHOD, mesh, "ensemble")


SPEC = pair_spec("ensemble", METHOD, run=train_ensemble, compile_steps=compile_steps)
build = SPEC.build
