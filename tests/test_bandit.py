"""Section-2.6 bandit check: variance-aware optima move less mass to high-variance arms and end
worse than the reference less often than the vanilla KL-regularised optimum."""

import numpy as np
import pytest

from rmjax.errors import ConfigError
from rmjax.rl import bandit

VAR = np.array([0.01] * 3 + [1.0] * 3)       # arms 0-2 well estimated, 3-5 noisy
PI0 = np.full(6, 1 / 6)


def test_optima_are_distributions_and_vanilla_is_softmax():
  r = np.array([0.3, -0.1, 0.0, 0.2, 0.5, -0.4])
  for m in bandit.METHODS:
    p = bandit.solve(m, r, PI0, VAR)
    assert p.min() >= 0 and p.sum() == pytest.approx(1.0)
  np.testing.assert_allclose(bandit.vanilla_policy(r, PI0, 0.1), np.exp(r / 0.1) / np.exp(r / 0.1).sum())
  # equal variances: the weighted-KL optimum IS the vanilla one
  np.testing.assert_allclose(bandit.solve("weighted_kl", r, PI0, np.ones(6)),
                             bandit.vanilla_policy(r, PI0, 0.1), atol=1e-8)
  with pytest.raises(ConfigError, match="unknown bandit method"):
    bandit.solve("greedy", r, PI0, VAR)


def test_equal_means_less_mass_to_high_variance_arms():
  # deterministic: one low- and one high-variance arm look equally good
  r = np.array([1.0, 0, 0, 1.0, 0, 0])
  van = bandit.solve("vanilla", r, PI0, VAR)
  assert van[0] == pytest.approx(van[3])
  for m in ("weighted_kl", "sigma_norm"):
    p = bandit.solve(m, r, PI0, VAR)
    assert p[3] < van[3] and p[3] < p[0]
  # under noise with equal true means
  out = bandit.simulate(np.zeros(6), VAR, PI0, trials=400, seed=0)
  for m in ("weighted_kl", "sigma_norm"):
    assert out[m]["mass_high"] < out["vanilla"]["mass_high"]
    assert out[m]["moved_high"] < out["vanilla"]["moved_high"]


def test_lower_risk_of_ending_worse_than_reference():
  r_star = np.array([0.1] * 3 + [0.0] * 3)    # the noisy arms are slightly worse in truth
  out = bandit.simulate(r_star, VAR, PI0, trials=400, seed=1)
  for m in ("weighted_kl", "sigma_norm"):
    assert out[m]["risk"] < out["vanilla"]["risk"] - 0.05, out
    assert out[m]["value"] > out["vanilla"]["value"]
