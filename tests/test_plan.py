"""`rmjax train` and `rmjax compile` share one plan (`rmjax.train.loop.plan`): for bt, grm (dpo_ref:
the frozen reference copy beside the reward model) and ensemble (K heads; bootstrap weights in
the batch) the Task `build` makes from real data and weights, planned as `train` plans it, and
the step the task's `compile_steps` declares (no data, no weights) hold the same abstract
TrainState (tree, shapes, dtypes, shardings) and the same step: a train batch's keys and dtypes
are the compile batch's, and both lower to the same program."""

import jax
import numpy as np
import pytest

from configs import bt as bt_config
from configs import ensemble as ensemble_config
from configs import grm as grm_config
from rmjax import sharding as shd
from rmjax import tasks
from rmjax.aot import batch_structs
from rmjax.train import loop

CONFIGS = {"bt": lambda: bt_config.get_config("tiny"),
           "grm": lambda: grm_config.get_config("tiny,reg=dpo_ref,alpha=0.5"),
           "ensemble": lambda: ensemble_config.get_config("tiny")}


def _small(config):
  config.train.update(batch_size=8, steps=2)
  # one bucket at max_length: every train batch has the compiled batch's shape
  config.data.update(source="synthetic:48", eval_source="synthetic:8", max_length=32,
                     buckets=(32,))
  return config


def _leaves(tree):
  return [(jax.tree_util.keystr(p), x.shape, x.dtype, x.sharding)
          for p, x in jax.tree_util.tree_leaves_with_path(tree)]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_train_and_compile_build_the_same_state_and_step(name):
  config = _small(CONFIGS[name]())
  mesh = shd.make_mesh(tuple(config.mesh.shape))
  spec = tasks.get(name)
  task = spec.build(config)
  train_plan = loop.plan(config, task, mesh)  # what `rmjax train` runs
  [step] = spec.compile_steps(config, mesh)   # what `rmjax compile` compiles
  assert step.name == f"{name}.train_step" and step.donate_argnums == (0,)

  state, batch = step.args
  assert jax.tree_util.tree_structure(state) == jax.tree_util.tree_structure(train_plan.state)
  assert _leaves(state) == _leaves(train_plan.state)
  assert jax.tree_util.tree_leaves(step.in_shardings[0]) == jax.tree_util.tree_leaves(
      train_plan.shardings)
  if name == "grm":
    assert "reference" in state.params
  if name == "ensemble":
    assert batch["boot"].shape == (8, config.ensemble.members)

  host = next(task.train_batches)
  assert {k: (v.shape, np.dtype(v.dtype)) for k, v in host.items()} == {
      k: (v.shape, np.dtype(v.dtype)) for k, v in batch.items()}

  def lowered(fn, args, in_shardings, out_shardings):
    with jax.set_mesh(mesh):
      return jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings,
                     donate_argnums=(0,)).lower(*args).as_text()
  train_batch = batch_structs({k: (v.shape, v.dtype) for k, v in host.items()},
                              train_plan.batch_sharding)
  assert lowered(train_plan.step_fn, (train_plan.state, train_batch), train_plan.in_shardings,
                 train_plan.out_shardings) == lowered(step.fn, step.args, step.in_shardings,
                                                      step.out_shardings)
