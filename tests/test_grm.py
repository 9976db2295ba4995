"""GRM task: alpha = 0 is the BT task, frozen reference, scoring a GRM workdir, bad configs."""

import json
import os
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import grm as grm_config
from rmjax.errors import ConfigError
from experiments.grm_eval import WorkdirModel
from rmjax.tasks.runs import load_scorer
from rmjax.tasks import bt, grm
from rmjax.train.loop import train
from rmjax.train.state import make_optimizer, make_train_step, TrainState
from _util import fast_config

REPO = pathlib.Path(__file__).resolve().parents[1]

# tiny models built again and again in this module: their compiles are shared (conftest)
pytestmark = pytest.mark.usefixtures("jax_compile_cache")


def tiny_config(steps=3, arg="tiny", **loss):
  c = fast_config(grm_config.get_config(arg), steps=steps)
  for k, v in loss.items():
    setattr(c.loss, k, v)
  return c


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_config_defaults_follow_the_paper():
  c = grm_config.get_config("smollm2")
  assert (c.task, c.loss.alpha, c.loss.beta, c.loss.reg) == ("grm", 0.01, 0.1, "sft")
  assert (c.model.head, c.model.head_hidden, c.model.head_dropout) == ("mlp", 1024, 0.1)
  assert c.data.source.startswith("shared:hh_rlhf") and c.data.eval_source == ""
  c = grm_config.get_config("tiny,reg=dpo_ref,alpha=0.5,head=scalar")
  assert (c.loss.reg, c.loss.alpha, c.model.head, c.model.head_dropout) == ("dpo_ref", 0.5, "scalar", 0.0)


def test_alpha_zero_is_the_bt_trajectory(tmp_path):
  """Same config, seed and data: GRM with alpha = 0 follows BT step for step (losses and params)."""
  config = tiny_config(alpha=0.0)
  train(config, str(tmp_path / "bt"), bt.build(config))
  train(config, str(tmp_path / "grm"), grm.build(config))
  m_bt, m_grm = _metrics(str(tmp_path / "bt")), _metrics(str(tmp_path / "grm"))
  np.testing.assert_allclose([m["loss"] for m in m_grm], [m["loss"] for m in m_bt], rtol=1e-6)
  np.testing.assert_allclose([m["loss"] for m in m_grm], [m["bt_loss"] for m in m_grm], rtol=1e-6)
  assert all(m["reg_loss"] > 0 for m in m_grm)  # the regulariser is computed and logged
  p_bt, p_grm = WorkdirModel(str(tmp_path / "bt")).params, WorkdirModel(str(tmp_path / "grm")).params
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                         jax.device_get(p_grm), jax.device_get(p_bt))


def _unboxed_params(task, rng=jax.random.PRNGKey(0)):
  params = nn.unbox(jax.jit(task.init_params)(rng))  # one compile, not op-by-op init
  shardings = jax.tree_util.tree_map(lambda x: x.sharding, params)
  return task.load_pretrained(params, shardings)


def test_reference_is_frozen_without_optimizer_state():
  config = tiny_config(reg="dpo_ref", alpha=0.5)
  task = grm.build(config)
  params = _unboxed_params(task)
  assert set(params) == {"backbone", "reward_head", "reference"}
  jax.tree_util.tree_map(np.testing.assert_array_equal, params["reference"], params["backbone"])
  batch = jax.tree_util.tree_map(jnp.asarray, next(task.train_batches))

  (loss, metrics), grads = jax.jit(jax.value_and_grad(task.loss_fn, has_aux=True))(
      params, batch, jax.random.PRNGKey(1))
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree_util.tree_leaves(grads["reference"]))
  assert any(float(jnp.abs(g).max()) > 0.0 for g in jax.tree_util.tree_leaves(grads["backbone"]))
  # loss = (1 - alpha) * BT + alpha * L_reg
  assert float(loss) == pytest.approx(
      0.5 * float(metrics["bt_loss"]) + 0.5 * float(metrics["reg_loss"]), rel=1e-5)
  # before any step the policy is the reference: the DPO logit is 0, L_reg = log 2
  assert float(metrics["reg_loss"]) == pytest.approx(np.log(2.0), abs=1e-4)
  np.testing.assert_allclose(metrics["ref_chosen_logps"], metrics["chosen_logps"], rtol=1e-5)

  tx, schedule = make_optimizer(config.optim, config.train.steps, task.trainable)
  opt_state = tx.init(params)
  n = lambda tree: sum(x.size for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "size"))
  trainable = n(params["backbone"]) + n(params["reward_head"])
  assert n(opt_state) < 2 * trainable + 100  # Adam mu + nu for trainable leaves only
  # committed to the device like the step's outputs, so the second step reuses the first's
  # executable (uncommitted inputs would compile the step twice)
  state = jax.device_put(TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                    opt_state=opt_state, rng=jax.random.PRNGKey(2)),
                         jax.devices()[0])
  step = jax.jit(make_train_step(task.loss_fn, tx, schedule))
  for _ in range(2):  # the warmup schedule gives lr 0 at step 0
    state, _ = step(state, batch)
  jax.tree_util.tree_map(np.testing.assert_array_equal, state.params["reference"], params["reference"])
  moved = jax.tree_util.tree_map(lambda a, b: bool(np.any(a != b)), state.params["backbone"],
                                 params["backbone"])
  assert any(jax.tree_util.tree_leaves(moved))


@pytest.fixture(scope="module")
def dpo_ref_workdir(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("grm_dpo_ref"))
  config = tiny_config(steps=2, reg="dpo_ref", alpha=0.1)
  final = train(config, wd, grm.build(config))
  return wd, final


def test_grm_workdir_restores_and_evaluates(dpo_ref_workdir):
  wd, final = dpo_ref_workdir
  assert {"bt_loss", "reg_loss", "chosen_logps", "rejected_logps", "ref_chosen_logps"} <= set(final)
  model = WorkdirModel(wd)  # the reward model alone: the frozen reference is not restored
  assert set(model.params) == {"backbone", "reward_head"} and not model.model.keep_lm_logits
  from rmjax.data import synthetic
  rep = model.evaluate(synthetic.make_pairs(8, seed=5), batch_size=8)
  assert rep["n"] == 8 and 0.0 <= rep["accuracy"] <= 1.0 and np.isfinite(rep["loss"])


def test_rmjax_scorer_on_grm_workdir(dpo_ref_workdir):
  scorer = load_scorer(dpo_ref_workdir[0], batch_size=8)
  assert "reference" not in scorer.params and not scorer.model.keep_lm_logits
  res = scorer.score(["Say something kind about cats."] * 2, ["good cats.", "bad rain."],
                     progress=False)
  assert res["reward"].shape == (2,) and np.all(np.isfinite(res["reward"]))


@pytest.mark.parametrize("override,match", [
    ({"reg": "kl"}, "loss.reg must be one of sft, sft_plain, dpo_noref, dpo_ref, got 'kl'"),
    ({"alpha": 1.5}, r"loss.alpha must be in \[0, 1\], got 1.5"),
    ({"beta": 0.0}, "loss.beta must be > 0"),
])
def test_bad_loss_config_is_a_one_line_error(override, match):
  config = tiny_config(**override)
  with pytest.raises(ConfigError, match=match) as e:
    grm.build(config)
  assert "\n" not in str(e.value)
