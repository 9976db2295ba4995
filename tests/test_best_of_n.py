"""Best-of-n estimators against brute force and a known answer; KL_bon; curves and errors."""

import json
import math

import numpy as np
import pytest

from rmjax.rl import best_of_n as bon


def test_kl_bon():
  np.testing.assert_allclose(bon.kl_bon([1, 2, 4]), [0.0, math.log(2) - 0.5, math.log(4) - 0.75])


def test_known_answer():
  # pool of 4, proxy = gold = 0,1,2,3: E[max of a random 2-subset] = (1*1 + 2*2 + 3*3)/6 = 14/6
  p = np.array([[0.0, 1.0, 2.0, 3.0]])
  assert bon.bon_unbiased(p, p, 2) == pytest.approx(14 / 6)
  assert bon.bon_unbiased(p, p, 1) == pytest.approx(1.5)
  assert bon.bon_unbiased(p, p, 4) == pytest.approx(3.0)
  # proxy reversed w.r.t. gold: best-of-n by proxy picks the gold minimum of the subset
  assert bon.bon_unbiased(-p, p, 2) == pytest.approx((2 * 1 + 1 * 2 + 0 * 3) / 6 + 0.0)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_unbiased_equals_bruteforce(n):
  rng = np.random.default_rng(n)
  proxy = rng.integers(0, 3, (4, 7)).astype(float)          # ties on purpose
  gold = rng.normal(size=(4, 7))
  assert bon.bon_unbiased(proxy, gold, n) == pytest.approx(bon.bon_bruteforce(proxy, gold, n), abs=1e-12)
  assert bon.order_stat_weights(7, n).sum() == pytest.approx(1.0)


def test_nested_estimator_is_unbiased_on_average():
  rng = np.random.default_rng(0)
  proxy, gold = rng.normal(size=(2, 6)), rng.normal(size=(2, 6))
  est = np.mean([bon.bon_nested(proxy, gold, 3, seed=s) for s in range(3000)])
  assert est == pytest.approx(bon.bon_unbiased(proxy, gold, 3), abs=0.03)
  assert bon.bon_nested(proxy, gold, 6, seed=None) == pytest.approx(bon.bon_unbiased(proxy, gold, 6))


def test_curves_and_files(tmp_path):
  rng = np.random.default_rng(1)
  gold = rng.normal(size=(20, 16))
  proxies = {"good": gold + 0.1 * rng.normal(size=gold.shape), "noise": rng.normal(size=gold.shape)}
  c = bon.bon_curves(proxies, gold)
  assert c["ns"] == [1, 2, 4, 8, 16]
  assert c["curves"]["good"]["gold"][-1] > c["curves"]["noise"]["gold"][-1]
  assert np.all(np.diff(c["curves"]["good"]["proxy"]) > 0)   # proxy rises with n
  paths = bon.save_curves(c, str(tmp_path))
  assert json.load(open(paths["json"]))["ns"] == c["ns"]
  assert (tmp_path / "best_of_n.png").stat().st_size > 1000
  fit = bon.fit_bon([1, 2, 3], [1 * (2 - 1), 2 * (2 - 2), 3 * (2 - 3)])   # alpha 2, beta 1
  assert fit["alpha"] == pytest.approx(2) and fit["d_peak"] == pytest.approx(1)


@pytest.mark.parametrize("call,msg", [
    (lambda: bon.bon_unbiased(np.ones((2, 3)), np.ones((2, 4)), 2), "must both be"),
    (lambda: bon.bon_unbiased(np.ones((2, 3)), np.ones((2, 3)), 4), "1 <= n <= pool"),
    (lambda: bon.bon_unbiased(np.ones((2, 3)), np.ones((2, 3)), 0), "1 <= n <= pool"),
    (lambda: bon.bon_nested(np.full((1, 3), np.nan), np.ones((1, 3)), 2), "NaN"),
    (lambda: bon.kl_bon(0), "n >= 1"),
])
def test_bad_input(call, msg):
  with pytest.raises(ValueError, match=msg) as e:
    call()
  assert "\n" not in str(e.value)
