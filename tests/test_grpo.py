"""GRPO and RLOO: the group estimators by hand, K-armed bandits (each converges to the best arm;
RLOO with the KL in the reward reaches `bandit.vanilla_policy`, the KL-regularised optimum),
the registries' one-line errors, the tiny LM's reward rising with exact resume, GRPO on the
tiny proxy ensemble's LCB reward with the variance-weighted KL, and a plug-in estimator from
outside rmjax (tests/rl_plugin_reinforce.py) trained through the CLI."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from _cli import REPO, run_cli
from configs import grpo as grpo_config
from rmjax import sharding as shd
from rmjax.errors import ConfigError
from rmjax.rl import bandit, ppo as ppo_math  # noqa: F401 -- registers gae, grpo, rloo, losses
from rmjax.rl.registry import ADVANTAGES, KL_ESTIMATORS, POLICY_LOSSES, REWARDS
from rmjax.tasks import ppo, ppo_setup

pytestmark = pytest.mark.usefixtures("jax_compile_cache")
R_STAR = np.array([0.1, 0.5, 1.0, 0.3, 0.7])     # best arm: 2


def test_group_estimators_by_hand():
  # two prompts x G = 3; rewards at the last real token (the sequence reward is their sum)
  mask = jnp.array([[1, 1], [1, 0], [1, 1], [1, 1], [1, 1], [1, 0]], jnp.float32)
  r = jnp.array([[0, 1.0], [2.0, 0], [0, 3.0], [0, 5.0], [0, 5.0], [5.0, 0]])
  adv, ret = ADVANTAGES.get("rloo")(r, None, mask, gamma=1.0, lam=1.0, group_size=3)
  assert ret is None
  np.testing.assert_allclose(adv[:, 0], [1 - 2.5, 2 - 2.0, 3 - 1.5, 0, 0, 0], atol=1e-6)
  np.testing.assert_allclose(adv * (1 - mask), 0.0)            # nothing after the response
  adv, _ = ADVANTAGES.get("grpo")(r, None, mask, gamma=1.0, lam=1.0, group_size=3)
  np.testing.assert_allclose(adv[:3, 0], [-1, 0, 1], atol=1e-5)  # mean 2, sample std 1
  np.testing.assert_allclose(adv[3:, 0], 0.0)                    # equal rewards: no signal
  assert ADVANTAGES.traits("grpo") == {"needs_value": False, "grouped": True}
  assert ADVANTAGES.traits("gae")["needs_value"]


def _bandit(estimator, steps=200, lr=0.1, beta=0.0, group=4, prompts=8, noise=0.5, seed=0):
  """A softmax policy over the arms trained by `estimator` + the registered clipped loss: each
  iteration samples G arms for each of `prompts` (contextless) prompts, reward r* + noise minus
  beta * k1 KL to the uniform reference. Returns the final policy."""
  k, b = len(R_STAR), prompts * group
  r_star, logp0 = jnp.asarray(R_STAR, jnp.float32), jnp.full(len(R_STAR), -np.log(k))
  tx = optax.adam(lr)
  adv_fn, loss_fn, k1 = ADVANTAGES.get(estimator), POLICY_LOSSES.get("clip"), KL_ESTIMATORS.get("k1")
  mask = jnp.ones((b, 1))

  def step(carry, key):
    theta, opt = carry
    ka, kn = jax.random.split(key)
    arms = jax.random.categorical(ka, theta, shape=(b,))
    old = jax.nn.log_softmax(theta)[arms][:, None]
    r = r_star[arms][:, None] + noise * jax.random.normal(kn, (b, 1)) - beta * k1(old - logp0[arms][:, None])
    adv, _ = adv_fn(r, None, mask, gamma=1.0, lam=1.0, group_size=group)
    grad = jax.grad(lambda t: loss_fn(jax.nn.log_softmax(t)[arms][:, None], old, adv, mask,
                                      clip=0.2, dual_clip=3.0)[0])(theta)
    up, opt = tx.update(grad, opt)
    return (optax.apply_updates(theta, up), opt), None

  theta = jnp.zeros(k)
  (theta, _), _ = jax.lax.scan(step, (theta, tx.init(theta)),
                               jax.random.split(jax.random.PRNGKey(seed), steps))
  return np.asarray(jax.nn.softmax(theta))


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_bandit_converges_to_the_best_arm(estimator):
  pi = _bandit(estimator)
  assert pi.argmax() == 2 and pi[2] > 0.95, pi


def test_rloo_with_kl_in_the_reward_reaches_the_kl_regularised_optimum():
  # E[A grad log pi] with A the leave-one-out advantage of r - beta log(pi / pi0) is the
  # gradient of <pi, r> - beta KL(pi || pi0), whose optimum is pi0 exp(r / beta) (bandit.py)
  pi = _bandit("rloo", steps=1000, lr=0.02, beta=0.5)
  target = bandit.vanilla_policy(R_STAR, np.full(5, 0.2), 0.5)
  assert 0.5 * np.abs(pi - target).sum() < 0.05, (pi, target)


@pytest.mark.parametrize("field,value,match", [
    ("advantage", "ppo9", "grpo.advantage: unknown advantage estimator 'ppo9'"),
    ("advantage", "no_such_module:x", "grpo.advantage: cannot import 'no_such_module'"),
    ("group_size", 1, "grpo.group_size must be an integer >= 2"),
    ("group_size", 3, "must divide into groups of grpo.group_size=3"),
    ("kl_in", "both", "grpo.kl_in must be one of reward, loss"),
    ("kl_estimator", "k9", "grpo.kl_estimator: unknown KL estimator")])
def test_bad_config_one_line_errors(field, value, match):
  c = grpo_config.get_config("tiny,smoke,reward=gold")
  setattr(c.grpo, field, value)
  with pytest.raises(ConfigError, match=match):
    ppo_setup.check(c)
  c = grpo_config.get_config("tiny,smoke,reward=gold,uncertainty=reward")
  with pytest.raises(ConfigError, match="needs an ensemble reward"):
    ppo_setup.check(c)
  assert REWARDS.traits("proxy")["members"] and not REWARDS.traits("gold")["members"]


def test_every_variant_validates():
  from configs.common import VARIANTS  # noqa: PLC0415
  from rmjax.train.validate import config_errors  # noqa: PLC0415
  for variant in VARIANTS:
    for adv in ("grpo", "rloo"):
      c = grpo_config.get_config(f"{variant},advantage={adv}")
      assert config_errors(c) == [], (variant, adv)
      ppo_setup.check(c)


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_tiny_grpo_raises_gold_reward_and_resumes_exactly(tmp_path):
  c = grpo_config.get_config("tiny,smoke,reward=gold")
  c.train.steps, c.train.checkpoint_every = 12, 6
  mesh = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  _, full = ppo.run(c, str(tmp_path / "a"), return_state=True, mesh=mesh)
  rows = _rows(tmp_path / "a")
  first = np.mean([r["reward_mean"] for r in rows[:3]])
  last = np.mean([r["reward_mean"] for r in rows[-3:]])
  assert last > first + 1.0, (first, last)
  assert full.value == {} and "vf_loss" not in rows[-1] and rows[-1]["kl_loss"] > 0
  c.train.steps = 6
  ppo.run(c, str(tmp_path / "b"), mesh=mesh)
  c.train.steps = 12
  _, resumed = ppo.run(c, str(tmp_path / "b"), return_state=True, mesh=mesh)
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(full)),
                  jax.tree_util.tree_leaves(jax.device_get(resumed))):
    np.testing.assert_array_equal(a, b)
  assert [r["reward_mean"] for r in rows] == [r["reward_mean"] for r in _rows(tmp_path / "b")]


def test_grpo_on_the_tiny_ensembles_lcb_with_variance_weighted_kl(tmp_path):
  c = grpo_config.get_config("tiny,smoke,uncertainty=both,agg=lcb")
  c.train.steps, c.train.eval_every = 2, 0
  ppo.run(c, str(tmp_path), mesh=shd.make_mesh((1, 1, 1), devices=jax.devices()[:1]))
  rows = _rows(tmp_path)
  assert len(rows) == 2
  for r in rows:
    assert r["score_mean"] < r["reward_mean"]            # LCB = mean - std < the mean
    assert r["ensemble_std"] > 0 and r["kl_weight_max"] > 1.0 and np.isfinite(r["loss"])


def test_plugin_estimator_from_outside_rmjax_trains_through_the_cli(tmp_path):
  wd = tmp_path / "wd"
  code, out, err = run_cli(["train", f"--config={REPO}/configs/grpo.py:tiny,smoke,reward=gold",
                            f"--workdir={wd}", "--config.grpo.advantage=rl_plugin_reinforce:reinforce",
                            "--config.grpo.group_size=1", "--config.train.steps=3",
                            "--config.train.eval_every=0"])
  assert code == 0, out + err
  rows = _rows(wd)
  assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
  with open(wd / "config.json") as f:
    assert json.load(f)["grpo"]["advantage"] == "rl_plugin_reinforce:reinforce"
  assert ADVANTAGES.traits("reinforce") == {"needs_value": False, "grouped": False}
