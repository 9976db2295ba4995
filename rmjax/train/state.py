"""Train state, optimizer, and the jitted train step with gradient accumulation.

The state is one pytree (`TrainState`: step, params, opt_state, rng); the data position travels
beside it in the checkpoint. The optimizer is built from the config: AdamW with warmup + cosine,
global-norm clipping, weight decay on matrices only, and frozen parameter groups that get no
updates and no optimizer state.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from rmjax.errors import ConfigError

SCHEDULES = ("cosine", "linear", "constant")  # optim.schedule (make_schedule)


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def make_schedule(optim, total_steps: int) -> optax.Schedule:
  """Learning-rate schedule: 'cosine' (linear warmup then cosine to lr * final_lr_frac),
  'linear' (warmup then linear decay) or 'constant' (warmup then flat)."""
  lr, warmup = optim.lr, int(optim.warmup_steps)
  end = lr * optim.final_lr_frac
  if optim.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1), end)
  if optim.schedule == "linear":
    return optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup, 1)),
                                 optax.linear_schedule(lr, end, max(total_steps - warmup, 1))],
                                [warmup])
  if optim.schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup, 1)),
                                 optax.constant_schedule(lr)], [warmup])
  raise ConfigError(f"optim.schedule must be one of {', '.join(SCHEDULES)}, got {optim.schedule!r}")


def _decay_mask(params):
  return jax.tree_util.tree_map(lambda x: getattr(x, "ndim", 0) >= 2, params)


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _is_float(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _float_grads(loss_fn):
  """value_and_grad over the float leaves only: integer leaves (QLoRA's quantized base
  weights) cannot be differentiated; their gradient is a float scalar 0 (they must be frozen,
  see `make_optimizer`, and `make_train_step` leaves them as they are)."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def fn(params, batch, rng):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    is_f = [_is_float(x) for x in leaves]
    if all(is_f):
      return grad_fn(params, batch, rng)
    def merged(floats, others):
      it = iter(floats)
      return treedef.unflatten([next(it) if f else x for f, x in zip(is_f, others)])

    out, g = jax.value_and_grad(lambda fl: loss_fn(merged(fl, leaves), batch, rng), has_aux=True)(
        [x for f, x in zip(is_f, leaves) if f])
    return out, merged(g, [jnp.zeros((), jnp.float32)] * len(leaves))
  return fn


def make_optimizer(optim, total_steps: int, trainable: Callable[[str], bool] | None = None):
  """(optax transform, schedule). `trainable(top_level_key)` freezes whole subtrees (e.g. the
  backbone for head-only training); a predicate marked `trainable.by_path = True` is asked per
  leaf with its '/'-joined path instead (LoRA: adapters and heads, `rmjax.models.lora`).
  Frozen leaves get zero updates and no Adam moments."""
  for key in ("lr", "weight_decay", "clip_norm", "eps"):
    v = float(optim[key])
    if not math.isfinite(v) or v < 0:
      raise ConfigError(f"optim.{key} must be a finite number >= 0, got {optim[key]}")
  schedule = make_schedule(optim, total_steps)
  tx = optax.chain(
      optax.clip_by_global_norm(optim.clip_norm) if optim.clip_norm else optax.identity(),
      optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                  weight_decay=optim.weight_decay, mask=_decay_mask))
  if trainable is not None:
    def labels(params):
      if getattr(trainable, "by_path", False):
        return jax.tree_util.tree_map_with_path(  # a boxed leaf is labelled whole
            lambda p, _: "train" if trainable(_path_str(p)) else "freeze", params,
            is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
      return {k: ("train" if trainable(k) else "freeze") for k in params}
    tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
  return tx, schedule


def make_train_step(loss_fn, tx, schedule, accum_steps: int = 1):
  """Pure step `(state, batch) -> (state, metrics)`.

  `loss_fn(params, batch, rng) -> (loss, metrics)`. With `accum_steps` > 1 the batch's leading
  axis is split into that many micro-batches whose gradients are averaged (same result as one
  big batch when the loss is a mean over equal-sized micro-batches).
  """
  grad_fn = _float_grads(loss_fn)

  def step(state: TrainState, batch):
    rng, sub = jax.random.split(state.rng)
    if accum_steps == 1:
      (loss, metrics), grads = grad_fn(state.params, batch, sub)
    else:
      def split(x):
        if x.shape[0] % accum_steps:
          raise ConfigError(f"batch of {x.shape[0]} does not split into {accum_steps} micro-batches")
        return x.reshape(accum_steps, x.shape[0] // accum_steps, *x.shape[1:])
      micro = jax.tree_util.tree_map(split, batch)
      rngs = jax.random.split(sub, accum_steps)

      def body(acc, xs):
        mb, r = xs
        (l, m), g = grad_fn(state.params, mb, r)
        return jax.tree_util.tree_map(jnp.add, acc, (l, m, g)), None

      zeros = jax.tree_util.tree_map(
          jnp.zeros_like, jax.eval_shape(lambda: grad_fn(state.params, jax.tree_util.tree_map(
              lambda x: x[0], micro), rngs[0])))
      zeros = (zeros[0][0], zeros[0][1], zeros[1])
      (loss, metrics, grads), _ = jax.lax.scan(body, zeros, (micro, rngs))
      loss, metrics, grads = jax.tree_util.tree_map(lambda x: x / accum_steps, (loss, metrics, grads))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = jax.tree_util.tree_map(  # integer (quantized, frozen) leaves stay as they are
        lambda p, u: optax.apply_updates(p, u) if _is_float(p) else p, state.params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), metrics

  return step


def abstract_state(init_params, tx, rng):
  """Boxed abstract TrainState (shapes + logical names), no allocation: for shardings."""
  def init():
    params = init_params(rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng)
  return jax.eval_shape(init)
