"""The one training loop every task plugs into.

A task contributes a `Task`: how to initialise params, the loss, the data iterator and how to
evaluate. The loop owns everything else: mesh, shardings, optimizer, jit with explicit in/out
shardings and donation, checkpoints with the data position, NaN guard, metrics and progress.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Iterable, Optional

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from rmjax import sharding as shd
from rmjax.errors import TrainingDiverged
from rmjax.train.checkpoint import Checkpointer
from rmjax.train.metrics_writer import MetricWriter
from rmjax.train.state import TrainState, abstract_state, make_optimizer, make_train_step


@dataclasses.dataclass
class Task:
  """What a task contributes to the loop.

  init_params(rng) -> params boxed with logical names (Linen `init(...)['params']`).
  loss_fn(params, batch, rng) -> (scalar loss, dict of scalar metrics).
  train_batches: iterator of numpy batch dicts with `state()` / `restore(state)`.
  eval_fn(params, batch) -> dict of per-row arrays; summarize_eval(concatenated dict) -> metrics.
  load_pretrained(params, param_shardings) -> params: swaps in pretrained weights after init.
  trainable(top_level_param_key) -> bool: freezes whole subtrees (no updates, no Adam state).
  """
  init_params: Callable[[jax.Array], Any]
  loss_fn: Callable[[Any, dict, jax.Array], tuple]
  train_batches: Any
  eval_fn: Optional[Callable[[Any, dict], dict]] = None
  eval_batches: Optional[Callable[[], Iterable[dict]]] = None
  summarize_eval: Optional[Callable[[dict], dict]] = None
  load_pretrained: Optional[Callable[[Any, Any], Any]] = None
  trainable: Optional[Callable[[str], bool]] = None
  info: dict = dataclasses.field(default_factory=dict)
  model_config: Any = None  # LlamaConfig, written to workdir/model_config.json for score/eval


def _is_main():
  return jax.process_index() == 0


def run_eval(params, task: Task, mesh, eval_jit) -> dict:
  """Run `task.eval_fn` over every eval batch and summarise the concatenated outputs."""
  parts = []
  for batch in task.eval_batches():
    parts.append(jax.device_get(eval_jit(params, shd.shard_batch(batch, mesh))))
  cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  return task.summarize_eval(cat)


def train(config, workdir: str, task: Task, mesh=None, return_state: bool = False):
  """Train `task` under `config` in `workdir`, resuming from its latest checkpoint if any.

  Returns the final metrics (last train metrics and, if the task has an eval, eval metrics),
  and the final TrainState too when `return_state`.
  Raises TrainingDiverged on a non-finite loss; checkpoints already written stay intact.
  """
  tc = config.train
  mesh = mesh or shd.make_mesh(tuple(config.mesh.shape))
  rules = shd.DEFAULT_RULES
  os.makedirs(workdir, exist_ok=True)
  if _is_main():
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    if task.model_config is not None:
      with open(os.path.join(workdir, "model_config.json"), "w") as f:
        json.dump(task.model_config.to_dict(), f, indent=2)
    if task.info:
      with open(os.path.join(workdir, "data_stats.json"), "w") as f:
        json.dump(task.info, f, indent=2)

  tx, schedule = make_optimizer(config.optim, tc.steps, task.trainable)
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  boxed = abstract_state(task.init_params, tx, init_rng)
  state_shardings = shd.tree_shardings(boxed, mesh, rules)
  abstract = shd.with_shardings(shd.strip_boxes(boxed), state_shardings)
  replicated = NamedSharding(mesh, P())
  batch_spec = NamedSharding(mesh, P(shd.BATCH))

  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=tc.keep_checkpoints,
                      best_metric=tc.best_metric or None, best_mode=tc.best_mode,
                      async_save=tc.async_checkpoint)
  writer = MetricWriter(workdir, tensorboard=tc.tensorboard)
  step_fn = make_train_step(task.loss_fn, tx, schedule, accum_steps=config.optim.accum_steps)

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    start = ckpt.latest_step()
    if start is not None:
      state, data = ckpt.restore(abstract)
      task.train_batches.restore(data["batcher"])
      print(f"resumed from step {start} ({ckpt.directory})", flush=True)
    else:
      start = 0

      def init(rng):
        params = nn.unbox(task.init_params(rng))
        return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                          opt_state=tx.init(params), rng=train_rng)
      state = jax.jit(init, out_shardings=state_shardings)(init_rng)
      if task.load_pretrained is not None:
        params = task.load_pretrained(state.params, state_shardings.params)
        opt_state = jax.jit(tx.init, out_shardings=state_shardings.opt_state)(params)
        state = state.replace(params=params, opt_state=opt_state)

    train_step = jax.jit(step_fn, in_shardings=(state_shardings, batch_spec),
                         out_shardings=(state_shardings, replicated), donate_argnums=(0,))
    eval_jit = None
    if task.eval_fn is not None:
      eval_jit = jax.jit(task.eval_fn, in_shardings=(state_shardings.params, batch_spec),
                         out_shardings=replicated)

    delay = float(os.environ.get("RMJAX_DEBUG_STEP_DELAY", "0"))  # test hook: slow steps down
    final: dict = {}
    tokens = 0
    t0 = time.perf_counter()
    pbar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, desc="train",
                disable=not _is_main() or not tc.progress, dynamic_ncols=True)
    for step in pbar:
      batch = next(task.train_batches)
      data_state = task.train_batches.state()
      if "chosen_ids" in batch:
        tokens += int(batch["chosen_mask"].sum() + batch["rejected_mask"].sum())
      state, metrics = train_step(state, shd.shard_batch(batch, mesh))
      metrics = jax.device_get(metrics)
      done = step + 1
      if not (math.isfinite(float(metrics["loss"])) and math.isfinite(float(metrics["grad_norm"]))):
        ckpt.wait()
        last = ckpt.latest_step()
        raise TrainingDiverged(
            f"non-finite loss ({float(metrics['loss'])}) at step {done}: training stopped; last good "
            f"checkpoint is step {last} in {ckpt.directory}" if last is not None else
            f"non-finite loss ({float(metrics['loss'])}) at step {done}: training stopped; "
            f"no checkpoint was written yet")
      is_last = done == tc.steps
      row = {}
      if done % tc.log_every == 0 or is_last:
        elapsed = time.perf_counter() - t0
        row.update(metrics, steps_per_s=(done - start) / elapsed, tokens_per_s=tokens / elapsed)
        pbar.set_postfix(loss=f"{float(metrics['loss']):.4f}")
      eval_metrics = None
      if eval_jit is not None and tc.eval_every and (done % tc.eval_every == 0 or is_last):
        eval_metrics = run_eval(state.params, task, mesh, eval_jit)
        row.update({f"eval_{k}": v for k, v in eval_metrics.items()})
      if row:  # one JSON object per logged step: train and eval metrics together
        final.update(writer.write(done, row))
      if done % tc.checkpoint_every == 0 or is_last:
        save_metrics = ({f"eval_{k}": float(v) for k, v in eval_metrics.items()
                         if isinstance(v, (int, float, np.number))} if eval_metrics else None)
        ckpt.save(done, state, {"batcher": data_state, "step": done}, metrics=save_metrics)
      if delay:
        time.sleep(delay)
    pbar.close()
  ckpt.close()
  writer.close()
  return (final, state) if return_state else final
