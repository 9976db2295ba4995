"""Bradley-Terry reward model: backbone + scalar (or MLP) head, chosen and rejected in one
forward; `rmjax train --config configs/bt.py:tiny`. Also the reference for new pair methods:
a loss plus `pair_spec(name, PairMethod(loss=...))`."""

from __future__ import annotations

from rmjax import losses
from rmjax.tasks.pairs import PairMethod, bt_pair_loss, forward_pairs, pair_spec, reward_model

make_model = reward_model  # backbone + head (LoRA-wrapped under model.lora)


def bt_loss_fn(model, loss_cfg):
  def loss_fn(params, batch, rng):
    c, r = forward_pairs(model, params, batch, rng=rng)
    return (bt_pair_loss(c["reward"], r["reward"], batch, loss_cfg),
            losses.pair_metrics(c["reward"], r["reward"], batch["weight"]))
  return loss_fn


def bt_loss(config, model, cfg):
  return bt_loss_fn(model, config.loss)


SPEC = pair_spec("bt", PairMethod(loss=bt_loss))
build = SPEC.build
