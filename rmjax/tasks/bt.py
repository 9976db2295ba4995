"""Bradley-Terry reward model: backbone + scalar (or MLP) head, chosen and rejected in one
forward; `rmjax train --config configs/bt.py:tiny`. Also the reference for new pair methods:
a loss plus `pairs.pair_task` plus a `TaskSpec`."""

from __future__ import annotations

from rmjax import losses
from rmjax.models import lora
from rmjax.models.reward_model import RewardModel
from rmjax.tasks import common
from rmjax.tasks.pairs import forward_pairs, pair_data, pair_task
from rmjax.tasks.spec import TaskSpec
from rmjax.train.loop import Task


def make_model(config, cfg, extras=None) -> RewardModel:
  m = config.model
  return lora.from_config(config, RewardModel(
      cfg, head=m.head, head_hidden=m.head_hidden, head_dropout=m.head_dropout,
      members=config.get("ensemble", {}).get("members", 1),
      stop_backbone_grad=config.train.freeze_backbone))


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


def build(config) -> Task:
  data = pair_data(config, common.tokenizer(config))  # every record read before a model loads
  backbone = common.backbone(config)
  model = make_model(config, backbone[0])
  loss_fn = bt_loss_fn(lora.train_model(model, config.model.get("lora")), config.loss)
  return lora.apply_to_task(pair_task(config, model, loss_fn, backbone=backbone, data=data),
                            config)


SPEC = TaskSpec(name="bt", make_model=make_model, build=build)
