"""SALMON RL-time pieces: principle sampler and reward shaping, against hand-computed values."""

import collections

import jax.numpy as jnp
import numpy as np
import pytest

from rmjax.data.principles import Principle
from rmjax.rl import salmon_rl as S

PS = [Principle("Honest", "h", weight=3), Principle("Ethical", "e", weight=1),
      Principle("Numerical Sensitive", "n", weight=1), Principle("Consistent Reasoning", "c", weight=1)]


def test_sampler_without_replacement_and_weighted():
  rng = np.random.default_rng(0)
  for _ in range(50):
    got = S.sample_principles(PS, 3, rng)
    assert len(got) == 3 and len({p.dimension for p in got}) == 3
  assert len(S.sample_principles(PS, 10, rng)) == 4
  first = collections.Counter(S.sample_principles(PS, 1, rng)[0].dimension for _ in range(3000))
  assert first["Honest"] / 3000 == pytest.approx(0.5, abs=0.04)  # 3 / (3 + 1 + 1 + 1)


def test_question_type_boost():
  w = S.principle_weights(PS, "reasoning")
  np.testing.assert_allclose(w, [3, 1, 129, 129])
  np.testing.assert_allclose(S.principle_weights(PS, "redteaming"), [3, 129, 1, 1])
  rng = np.random.default_rng(1)
  picks = [{p.dimension for p in S.sample_principles(PS, 2, rng, "reasoning")} for _ in range(200)]
  assert np.mean([s == {"Numerical Sensitive", "Consistent Reasoning"} for s in picks]) > 0.9
  with pytest.raises(ValueError, match="unknown question type"):
    S.principle_weights(PS, "poetry")
  texts = S.rl_principle_texts(PS, rng, k=2)
  assert texts[:3] == list(S.INTERVENTION_PRINCIPLES) and len(texts) == 5


def test_reward_shaping_hand_computed():
  assert S.truncate_at_stop("answer\n\n### User: more") == ("answer", True)
  assert S.truncate_at_stop("answer") == ("answer", False)
  r = S.shape_reward(jnp.array([1.0, 1.0, 1.0]), jnp.array([100, 1000, 100]),
                     jnp.array([True, True, False]), response_len=1000,
                     question_type=jnp.array([0, 0, 1]))
  # 1 + 5*min(0.1, .8); 1 + 5*0.8 (capped); 1 - 6 + 5*(0.1 * -0.4)
  np.testing.assert_allclose(r, [1.5, 5.0, 1 - 6 - 0.2], rtol=1e-6)


def test_kl_token_rewards():
  logp = jnp.array([[-1.0, -2.0, -1.0, 0.0]])
  ref = jnp.array([[-2.0, -1.0, -1.5, 0.0]])
  mask = jnp.array([[1, 1, 1, 0]])
  r, k1 = S.kl_token_rewards(jnp.array([2.0]), logp, ref, mask, kl_coef=0.01, scale=10.0)
  np.testing.assert_allclose(k1, [[1.0, 0.0, 0.5, 0.0]])
  # reward at index -1 of the padded window (a pad slot here), everything x10
  np.testing.assert_allclose(r, [[-0.1, 0.0, -0.05, 20.0]], rtol=1e-6)
