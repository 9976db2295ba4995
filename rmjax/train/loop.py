"""The supervised loop every pair / regression task plugs into.

A task contributes a `Task`: how to initialise params, the loss, the data iterator and how to
evaluate. The loop owns mesh, shardings, optimizer and jit with explicit in/out shardings and
donation; `rmjax.train.run.Run` owns the workdir (files, checkpoints with the data position,
NaN guard, metrics, progress).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Optional

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from rmjax import sharding as shd
from rmjax.aot.steps import Step, batch_structs
from rmjax.train.run import Run
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
  model_extras: dict = dataclasses.field(default_factory=dict)  # e.g. ArmoRM's prompt pattern
  global_batches: bool = False  # batches are whole global batches in every process (not blocks)


def batch_finite(batch: dict) -> bool:
  """Whether every float in a host batch is finite (the NaN guard tells bad data from bad
  parameters by it)."""
  return all(np.isfinite(v).all() for v in batch.values()
             if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating))


def batch_sources(batches, batch: dict, limit: int = 4) -> str:
  """'path:line, ...' of the records in a host batch (weight > 0 rows), when the batch carries
  example indices into data with sources (pair batches); '' otherwise."""
  data = getattr(batches, "data", None) or getattr(getattr(batches, "batcher", None), "data", None)
  if batch is None or "index" not in batch or not hasattr(data, "sources"):
    return ""
  idx = np.asarray(batch["index"])
  if "weight" in batch:
    idx = idx[np.asarray(batch["weight"]) > 0]
  names = [str(data.sources[i]) for i in idx if data.sources[i]]
  more = f" and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def run_eval(params, task: Task, mesh, eval_jit) -> dict:
  """Run `task.eval_fn` over every eval batch and summarise the concatenated outputs."""
  parts = []
  for batch in task.eval_batches():
    b = shd.shard_batch(batch, mesh, global_batch=task.global_batches)
    parts.append(jax.device_get(eval_jit(params, b)))
  cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  return task.summarize_eval(cat)


@dataclasses.dataclass(frozen=True)
class Plan:
  """The supervised train step as `train` jits it and `rmjax compile` compiles it (one plan for
  both, as MaxText's train_compile shares its train step): the pure step function, the
  optimizer, the abstract TrainState (ShapeDtypeStructs carrying their shardings) and the
  shardings of state, batch and metrics."""
  step_fn: Callable
  tx: Any
  state: Any
  shardings: Any
  batch_sharding: NamedSharding
  replicated: NamedSharding
  init_rng: jax.Array
  train_rng: jax.Array

  @property
  def in_shardings(self) -> tuple:
    return (self.shardings, self.batch_sharding)

  @property
  def out_shardings(self) -> tuple:
    return (self.shardings, self.replicated)

  def jit(self):
    """The step as `train` runs it: explicit shardings, the state donated."""
    return jax.jit(self.step_fn, in_shardings=self.in_shardings,
                   out_shardings=self.out_shardings, donate_argnums=(0,))

  def compile_step(self, name: str, batch: dict, model_flops=None) -> Step:
    """This plan as an `rmjax compile` step over the global batch {key: (shape, dtype)}."""
    return Step(name, self.step_fn, (self.state, batch_structs(batch, self.batch_sharding)),
                self.in_shardings, self.out_shardings, (0,), model_flops)


def plan(config, task: Task, mesh, *, check_sharding: bool = True) -> Plan:
  """The plan of `task` under `config` on `mesh`: optimizer (frozen groups masked), abstract
  state from `task.init_params`, shardings from the logical rules. `check_sharding=False`
  skips the insufficient-sharding check (`rmjax compile` reports what does not fit instead)."""
  tx, schedule = make_optimizer(config.optim, config.train.steps, task.trainable)
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  boxed = abstract_state(task.init_params, tx, init_rng)
  shardings = shd.tree_shardings(boxed, mesh, shd.DEFAULT_RULES,
                                 check_min_bytes=None if check_sharding else 1 << 62)
  step = make_train_step(task.loss_fn, tx, schedule, accum_steps=config.optim.accum_steps)
  return Plan(step_fn=step, tx=tx, state=shd.with_shardings(shd.strip_boxes(boxed), shardings),
              shardings=shardings, batch_sharding=NamedSharding(mesh, P(shd.BATCH)),
              replicated=NamedSharding(mesh, P()), init_rng=init_rng, train_rng=train_rng)


def train(config, workdir, task: Task, mesh=None, return_state: bool = False, hooks: tuple = ()):
  """Train `task` under `config` in `workdir` (a path, or the `Run` of a stage of a multi-stage
  method, `Run.stage`), resuming from its latest checkpoint if any; `hooks`: extra
  `rmjax.train.run.Hook`s beside throughput, eval, log and checkpoint.

  Returns the final metrics (last train metrics and, if the task has an eval, eval metrics),
  and the final TrainState too when `return_state`.
  Raises TrainingDiverged on a non-finite loss; checkpoints already written stay intact.
  """
  mesh = mesh or shd.make_mesh(tuple(config.mesh.shape))
  rules = shd.DEFAULT_RULES
  p = plan(config, task, mesh)
  state_shardings, tx = p.shardings, p.tx
  run = workdir if isinstance(workdir, Run) else Run(
      config, workdir, model_config=task.model_config, info=task.info,
      model_extras=task.model_extras)

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state, start = run.restore(p.state, task.train_batches)
    if state is None:
      def init(rng):
        params = nn.unbox(task.init_params(rng))
        return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                          opt_state=tx.init(params), rng=p.train_rng)
      state = jax.jit(init, out_shardings=state_shardings)(p.init_rng)
      if task.load_pretrained is not None:
        params = task.load_pretrained(state.params, state_shardings.params)
        opt_state = jax.jit(tx.init, out_shardings=state_shardings.opt_state)(params)
        state = state.replace(params=params, opt_state=opt_state)
    run.write_files()  # only once the restore or the fresh init succeeded

    train_step = p.jit()
    eval_fn = None
    if task.eval_fn is not None:
      eval_jit = jax.jit(task.eval_fn, in_shardings=(state_shardings.params, p.batch_sharding),
                         out_shardings=p.replicated)
      eval_fn = lambda st: run_eval(st.params, task, mesh, eval_jit)  # noqa: E731

    tokens = [0, 0]  # real tokens, computed tokens (padding included)
    last = {}  # the last host batch, named by the NaN guard

    def one_step(state, step):
      batch = last["batch"] = next(task.train_batches)
      if "chosen_ids" in batch:
        tokens[0] += int(batch["chosen_mask"].sum() + batch["rejected_mask"].sum())
        tokens[1] += int(batch["chosen_ids"].size + batch["rejected_ids"].size)
      elif "segment_ids" in batch:  # packed rows
        tokens[0] += int((batch["segment_ids"] > 0).sum())
        tokens[1] += int(batch["segment_ids"].size)
      state, metrics = train_step(state, shd.shard_batch(batch, mesh,
                                                         global_batch=task.global_batches))
      return state, dict(jax.device_get(metrics), batch_finite=batch_finite(batch))

    final, state = run.loop(state, start, one_step, data_iter=task.train_batches,
                            eval_fn=eval_fn, tokens_fn=lambda: tuple(tokens),
                            batch_note=lambda: batch_sources(task.train_batches,
                                                             last.get("batch")), hooks=hooks)
  run.close()
  return (final, state) if return_state else final
