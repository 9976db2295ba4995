"""Bradley-Terry reward-model task: backbone + scalar head, chosen and rejected in one forward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rmjax import losses
from rmjax.eval.metrics import pair_report
from rmjax.models.reward_model import RewardModel
from rmjax.train import builders
from rmjax.train.loop import Task


def make_model(config, cfg) -> RewardModel:
  m = config.model
  return RewardModel(cfg, head=m.head, head_hidden=m.head_hidden, head_dropout=m.head_dropout,
                     members=config.get("ensemble", {}).get("members", 1),
                     stop_backbone_grad=config.train.freeze_backbone)


def forward_pairs(model, params, batch, *, rng=None):
  """Chosen rows then rejected rows through one forward; returns (out_chosen, out_rejected)."""
  ids = jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"]], axis=0)
  mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]], axis=0)
  kw = {} if rng is None else {"rngs": {"dropout": rng}, "deterministic": False}
  out = model.apply({"params": params}, ids, mask, **kw)
  b = batch["chosen_ids"].shape[0]
  split = lambda x: (x[:b], x[b:])
  pairs = {k: split(v) for k, v in out.items()}
  return {k: v[0] for k, v in pairs.items()}, {k: v[1] for k, v in pairs.items()}


def bt_loss_fn(model, loss_cfg):
  def loss_fn(params, batch, rng):
    c, r = forward_pairs(model, params, batch, rng=rng)
    w = batch["weight"]
    margin = batch["margin"] if loss_cfg.use_margin else None
    loss = losses.bradley_terry(c["reward"], r["reward"], margin=margin,
                                label_smoothing=loss_cfg.label_smoothing, weight=w)
    if loss_cfg.centering_coef:
      loss = loss + loss_cfg.centering_coef * losses.reward_centering(c["reward"], r["reward"], weight=w)
    return loss, losses.pair_metrics(c["reward"], r["reward"], w)
  return loss_fn


def pair_eval_fn(model):
  def eval_fn(params, batch):
    c, r = forward_pairs(model, params, batch)
    return {"chosen": c["reward"], "rejected": r["reward"], "weight": batch["weight"]}
  return eval_fn


def summarize_pairs(examples):
  """Eval summary over the fixed, ordered eval examples (padding rows dropped)."""
  subsets = [e.subset for e in examples]
  len_c = [len(e.chosen) for e in examples]
  len_r = [len(e.rejected) for e in examples]

  def summarize(out):
    keep = out["weight"] > 0
    rc, rr = out["chosen"][keep], out["rejected"][keep]
    rep = pair_report(rc, rr, subsets, len_c, len_r)
    rep["loss"] = float(np.mean(np.logaddexp(0.0, -(rc - rr))))
    return rep
  return summarize


def pair_data(config, tok):
  """(train batcher, eval batches fn, eval examples, stats) for a pair task."""
  from rmjax.data.batching import PairBatcher, tokenize_pairs
  from rmjax.data.tokenize import ChatEncoder
  d = config.data
  train, evals, stats = builders.train_eval_pairs(config)
  encoder = ChatEncoder(tok, d.max_length)
  train_tok, tstats = tokenize_pairs(train, encoder, on_overlong=d.on_overlong)
  eval_tok, estats = tokenize_pairs(evals, encoder, on_overlong="truncate")
  stats = dict(stats, train_tokenize=tstats, eval_tokenize=estats)
  batcher = PairBatcher(train_tok, config.train.batch_size, buckets=tuple(d.buckets),
                        seed=config.seed)
  eval_batcher = PairBatcher(eval_tok, config.train.batch_size, buckets=tuple(d.buckets),
                             seed=config.seed, shuffle=False)
  return batcher, eval_batcher.eval_batches, evals, stats


def build(config) -> Task:
  cfg, backbone_params = builders.backbone(config)
  tok = builders.tokenizer(config)
  model = make_model(config, cfg)
  batcher, eval_batches, evals, stats = pair_data(config, tok)

  def init_params(rng):
    ids = jnp.zeros((2, 8), jnp.int32)
    return model.init(rng, ids, jnp.ones_like(ids))["params"]

  return Task(
      init_params=init_params,
      loss_fn=bt_loss_fn(model, config.loss),
      train_batches=batcher,
      eval_fn=pair_eval_fn(model) if evals else None,
      eval_batches=eval_batches if evals else None,
      summarize_eval=summarize_pairs(evals),
      load_pretrained=lambda p, s: builders.params_with_backbone(p, backbone_params, s),
      trainable=(lambda k: k != "backbone") if config.train.freeze_backbone else None,
      info=stats,
      model_config=cfg)
