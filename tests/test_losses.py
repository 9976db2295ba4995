"""Losses and pair metrics against hand-computed values."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from rmjax import losses


def test_bradley_terry_hand_computed():
  rc, rr = jnp.array([2.0, 0.5]), jnp.array([1.0, 1.5])
  # -log sigmoid(1) = 0.3132617, -log sigmoid(-1) = 1.3132617
  assert float(losses.bradley_terry(rc, rr)) == pytest.approx((0.3132617 + 1.3132617) / 2, abs=1e-6)


def test_bradley_terry_margin_smoothing_weight():
  rc, rr = jnp.array([2.0, 0.5, 9.0]), jnp.array([1.0, 1.5, 0.0])
  w = jnp.array([1.0, 1.0, 0.0])  # third row is padding
  m = jnp.array([0.5, 0.0, 0.0])
  sp = lambda z: math.log1p(math.exp(-z))  # -log sigmoid(z)
  eps = 0.1
  expect = [(1 - eps) * sp(0.5) + eps * sp(-0.5), (1 - eps) * sp(-1.0) + eps * sp(1.0)]
  got = losses.bradley_terry(rc, rr, margin=m, label_smoothing=eps, weight=w)
  assert float(got) == pytest.approx(np.mean(expect), abs=1e-6)


def test_reward_centering_and_metrics():
  rc, rr = jnp.array([2.0, 0.5, 1.0]), jnp.array([1.0, 1.5, 1.0])
  assert float(losses.reward_centering(rc, rr)) == pytest.approx((9 + 4 + 4) / 3, abs=1e-6)
  m = losses.pair_metrics(rc, rr)
  assert float(m["accuracy"]) == pytest.approx(1 / 3)  # the tie counts as wrong
  assert float(m["margin"]) == pytest.approx(0.0, abs=1e-7)
  assert float(m["chosen_mean"]) == pytest.approx(3.5 / 3)
  assert float(m["chosen_std"]) == pytest.approx(np.std([2.0, 0.5, 1.0]), abs=1e-6)
  assert float(m["rejected_std"]) == pytest.approx(np.std([1.0, 1.5, 1.0]), abs=1e-6)
