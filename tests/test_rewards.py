"""Aggregators against the hand-computed worked example (ALGORITHMS.md 2.2) and their errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmjax.errors import ConfigError
from rmjax.rl import rewards
from rmjax.rl.registry import AGGREGATES

R = np.array([1.0, 1.2, 2.6])


def test_worked_example():
  # mu = 1.6; deviations -0.6, -0.4, 1.0; population variance (0.36+0.16+1)/3 = 0.50667
  assert np.var(R) == pytest.approx(0.506667, abs=1e-5)
  assert rewards.aggregate(R, "mean") == pytest.approx(1.6)
  assert rewards.aggregate(R, "uwo", lam=0.5) == pytest.approx(1.346667, abs=1e-5)
  assert rewards.aggregate(R, "wco") == pytest.approx(1.0)
  assert rewards.aggregate(R, "lcb", beta=1.0) == pytest.approx(0.888, abs=5e-4)
  assert rewards.aggregate(R, "lcb", beta=1.0, std="sample") == pytest.approx(0.728, abs=5e-4)


def test_batched_and_jax_agree():
  x = np.stack([R, R[::-1] + 1.0])                         # [2, 3]
  for m in AGGREGATES.names():
    np_out = rewards.aggregate(x, m)
    jx_out = jax.jit(lambda a: rewards.aggregate(a, m))(jnp.asarray(x, jnp.float32))
    assert np_out.shape == (2,)
    np.testing.assert_allclose(np.asarray(jx_out), np_out, rtol=1e-5)
    np.testing.assert_allclose(np_out[1], rewards.aggregate(R + 1.0, m), rtol=1e-9)


def test_standardizer():
  ref = np.array([[0.0, 10.0], [2.0, 30.0], [4.0, 50.0]])   # member means 2, 30; stds 1.633, 16.33
  f = rewards.standardizer(ref)
  out = f(ref)
  np.testing.assert_allclose(out.mean(0), 0, atol=1e-12)
  np.testing.assert_allclose(out.std(0), 1, atol=1e-12)
  np.testing.assert_allclose(out[:, 0], out[:, 1])         # same ranks -> identical after std
  assert rewards.aggregate(ref, "uwo", standardize=f)[1] == pytest.approx(0.0)
  allm = rewards.aggregate_all(ref, reference=ref)
  assert set(allm) == {"single", "mean", "wco", "uwo", "lcb"}


@pytest.mark.parametrize("call,err,msg", [
    (lambda: rewards.aggregate(R, "median"), ConfigError, "unknown aggregation method"),
    (lambda: rewards.aggregate(R[:1], "uwo"), ConfigError, "at least 2"),
    (lambda: rewards.aggregate(R[:1], "lcb"), ConfigError, "at least 2"),
    (lambda: rewards.aggregate(R, "lcb", std="robust"), ConfigError, "unknown std kind"),
    (lambda: rewards.aggregate(np.array([1.0, np.nan]), "mean"), ValueError, "non-finite"),
    (lambda: rewards.aggregate(1.0, "mean"), ConfigError, "members axis"),
    (lambda: rewards.standardizer(np.ones((1, 3))), ValueError, "N >= 2"),
    (lambda: rewards.standardizer(np.ones((4, 3)))(np.ones((2, 2))), ValueError, "fitted on 3"),
])
def test_bad_input(call, err, msg):
  with pytest.raises(err, match=msg) as e:
    call()
  assert "\n" not in str(e.value)
