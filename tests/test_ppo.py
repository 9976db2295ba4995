"""PPO math (rmjax.rl.ppo) against hand-computed values and a plain Python GAE loop."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from rmjax.errors import ConfigError
from rmjax.rl import ppo


def gae_loop(rewards, values, mask, gamma, lam):
  """Textbook GAE, one row at a time, terminal after the last real token."""
  b, n = rewards.shape
  adv = np.zeros((b, n))
  for i in range(b):
    length = int(mask[i].sum())
    last = 0.0
    for t in reversed(range(length)):
      next_v = values[i, t + 1] if t + 1 < length else 0.0
      delta = rewards[i, t] + gamma * next_v - values[i, t]
      last = delta + gamma * lam * last
      adv[i, t] = last
  return adv, (adv + values) * mask


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0)])
def test_gae_equals_python_loop(gamma, lam):
  rng = np.random.default_rng(0)
  r, v = rng.normal(size=(4, 7)), rng.normal(size=(4, 7))
  mask = (np.arange(7)[None] < np.array([7, 3, 1, 0])[:, None]).astype(np.float32)
  adv, ret = ppo.gae(jnp.asarray(r, jnp.float32), jnp.asarray(v, jnp.float32), mask, gamma, lam)
  ref_adv, ref_ret = gae_loop(r, v, mask, gamma, lam)
  np.testing.assert_allclose(adv, ref_adv, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ret, ref_ret, rtol=1e-5, atol=1e-5)


def test_kl_estimators_by_hand():
  lp, ref = jnp.array([[-1.0, -2.0]]), jnp.array([[-1.5, -1.0]])   # d = 0.5, -1
  np.testing.assert_allclose(ppo.kl_estimate(lp, ref, "k1"), [[0.5, -1.0]])
  np.testing.assert_allclose(ppo.kl_estimate(lp, ref, "k2"), [[0.125, 0.5]])
  np.testing.assert_allclose(ppo.kl_estimate(lp, ref, "k3"),
                             [[math.exp(-0.5) - 1 + 0.5, math.e - 1 - 1]], rtol=1e-6)
  np.testing.assert_allclose(ppo.kl_estimate(lp, ref, "k1", clamp_min=0.0), [[0.5, 0.0]])
  with pytest.raises(ConfigError, match="unknown KL estimator"):
    ppo.kl_estimate(lp, ref, "k4")


def test_token_rewards_score_at_last_token():
  mask = jnp.array([[1, 1, 1, 0], [1, 0, 0, 0]], jnp.float32)
  kl = jnp.full((2, 4), 0.5)
  r = ppo.token_rewards(jnp.array([2.0, -1.0]), kl, mask, jnp.array([0.1, 1.0]))
  np.testing.assert_allclose(r, [[-0.05, -0.05, 1.95, 0.0], [-1.5, 0, 0, 0]], rtol=1e-6)


def test_variance_weights():
  w = ppo.variance_weights(jnp.array([1.0, 3.0, 0.0, 0.0]), w_min=0.1, w_max=2.0)
  np.testing.assert_allclose(w, [1.0, 2.0, 0.1, 0.1])       # mean var = 1
  np.testing.assert_allclose(ppo.variance_weights(jnp.zeros(3)), [1.0, 1.0, 1.0])
  with pytest.raises(ConfigError):
    ppo.variance_weights(jnp.ones(2), w_min=2.0)


def test_policy_loss_by_hand():
  # ratios e^{0.5}=1.6487 (A=+1: clipped at 1.2), e^{-0.5}=0.6065 (A=-2: clipped at 0.8), 1 (A=3)
  lp = jnp.array([[0.5, -0.5, 0.0]])
  old = jnp.zeros((1, 3))
  adv = jnp.array([[1.0, -2.0, 3.0]])
  mask = jnp.ones((1, 3))
  loss, m = ppo.policy_loss(lp, old, adv, mask, 0.2)
  per = [max(-1 * math.exp(.5), -1 * 1.2), max(2 * math.exp(-.5), 2 * 0.8), -3.0]
  np.testing.assert_allclose(loss, np.mean(per), rtol=1e-6)
  np.testing.assert_allclose(m["clipfrac"], 2 / 3, rtol=1e-6)
  # dual clip: A = -1 with ratio e^2 = 7.39: clip loss 7.39, capped at 3 * 1 = 3
  loss, m = ppo.policy_loss(jnp.array([[2.0]]), jnp.zeros((1, 1)), jnp.array([[-1.0]]),
                            jnp.ones((1, 1)), 0.2, kind="dual_clip", dual_clip=3.0)
  np.testing.assert_allclose(loss, 3.0, rtol=1e-6)
  np.testing.assert_allclose(m["dual_clipfrac"], 1.0)
  with pytest.raises(ConfigError, match="unknown policy loss"):
    ppo.policy_loss(lp, old, adv, mask, kind="ppo2")


def test_value_loss_by_hand():
  v, old, ret = jnp.array([[1.0, 0.0]]), jnp.array([[0.5, 0.0]]), jnp.array([[0.0, 1.0]])
  loss, m = ppo.value_loss(v, old, ret, jnp.ones((1, 2)), clip=0.2)
  # token 0: unclipped (1-0)^2 = 1, clipped (0.7-0)^2 = 0.49 -> 1; token 1: 1 and 1 -> 1
  np.testing.assert_allclose(loss, 0.5 * (1 + 1) / 2, rtol=1e-6)
  np.testing.assert_allclose(m["vf_clipfrac"], 0.0)
  # v jumped from 0 to 1 = R: unclipped 0, clipped v = 0.2 -> (0.2 - 1)^2 = 0.64 wins
  loss, m = ppo.value_loss(jnp.array([[1.0]]), jnp.array([[0.0]]), jnp.array([[1.0]]),
                           jnp.ones((1, 1)), clip=0.2)
  np.testing.assert_allclose(loss, 0.5 * 0.64, rtol=1e-6)
  np.testing.assert_allclose(m["vf_clipfrac"], 1.0)


def test_whiten_entropy_adaptive_kl():
  x = jnp.array([[1.0, 2.0, 3.0, 100.0]])
  mask = jnp.array([[1, 1, 1, 0]], jnp.float32)
  w = ppo.whiten(x, mask)
  np.testing.assert_allclose(w[0, :3], np.array([-1, 0, 1]) / np.sqrt(2 / 3), rtol=1e-5)
  assert float(w[0, 3]) == 0.0
  ent = ppo.entropy(jnp.zeros((1, 2, 4)), jnp.ones((1, 2)))
  np.testing.assert_allclose(ent, math.log(4), rtol=1e-6)
  assert ppo.adaptive_kl(0.1, 12.0, 6.0, 100, 10) == pytest.approx(0.1 * (1 + 0.2 * 0.1))
  assert ppo.adaptive_kl(0.1, 6.0, 6.0, 100, 10) == pytest.approx(0.1)
  with pytest.raises(ConfigError):
    ppo.adaptive_kl(0.1, 1.0, 0.0, 100, 1)
