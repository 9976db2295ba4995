"""rmjax.eval.stats on hand-computed examples, and the bootstrap's coverage on synthetic data."""

import numpy as np
import pytest

from rmjax.eval import stats


def test_pair_accuracy_counts_ties_half():
  acc, ties = stats.pair_accuracy([1.0, -2.0, 0.0, 0.0])
  assert acc == pytest.approx((1 + 0 + 0.5 + 0.5) / 4) and ties == 2
  assert stats.pair_correct([3, 0, -1]).tolist() == [1.0, 0.5, 0.0]
  assert np.isnan(stats.pair_accuracy([])[0])


def test_length_baseline_and_length_matched():
  # longer chosen, shorter chosen, equal: 1 + 0 + 0.5
  assert stats.length_baseline([10, 2, 5], [5, 4, 5]) == pytest.approx(0.5)
  mask = stats.length_matched([100, 100, 0, 0, 90], [100, 130, 0, 5, 100], tol=0.2)
  assert mask.tolist() == [True, False, True, False, True]


def test_disagreement_hand_example():
  # 3 members x 4 pairs. Member pairs (0,1), (0,2), (1,2) per item:
  #   item 0: +,+,+  -> 0, 0, 0          = 0
  #   item 1: +,-,+  -> 1, 0, 1          = 2/3
  #   item 2: +,0,-  -> .5, 1, .5        = 2/3
  #   item 3: 0,0,+  -> 0, .5, .5        = 1/3
  m = np.array([[1.0, 2.0, 3.0, 0.0],
                [0.5, -1.0, 0.0, 0.0],
                [2.0, 1.0, -3.0, 4.0]])
  per_item = stats.item_disagreement(m)
  np.testing.assert_allclose(per_item, [0, 2 / 3, 2 / 3, 1 / 3])
  d = stats.disagreement(m, n_boot=200)
  assert d["value"] == pytest.approx(5 / 12) and d["lo"] <= d["value"] <= d["hi"]
  # pairwise: (0,1) items 1, 2(.5), 3(0) -> 1.5/4; (0,2) items 2, 3(.5) -> 1.5/4; (1,2) 1, .5, .5
  np.testing.assert_allclose(d["matrix"], [[0, 1.5 / 4, 1.5 / 4], [1.5 / 4, 0, 2 / 4],
                                           [1.5 / 4, 2 / 4, 0]])
  # across groups A = {0}, B = {1, 2}: mean of the (0,1) and (0,2) rates
  across = stats.disagreement_across(m[:1], m[1:], n_boot=100)
  assert across["value"] == pytest.approx(1.5 / 4)


def test_fleiss_kappa_hand_example():
  # 3 raters x 4 items; ones per item n1 = 3, 2, 0, 2 (zeros n0 = 0, 1, 3, 1).
  # P_i = (n1^2 + n0^2 - 3) / 6 = 1, 1/3, 1, 1/3 -> P_bar = 2/3
  # p1 = 7/12, p0 = 5/12 -> P_e = (49 + 25) / 144 = 37/72
  # kappa = (2/3 - 37/72) / (1 - 37/72) = (11/72) / (35/72) = 11/35
  d = np.array([[1, 1, 0, 1],
                [1, 0, 0, 1],
                [1, 1, 0, 0]])
  k = stats.fleiss_kappa(d, n_boot=200)
  assert k["value"] == pytest.approx(11 / 35)
  assert -1 <= k["lo"] <= k["hi"] <= 1
  assert np.isnan(stats.fleiss_kappa(np.ones((3, 5), int), n_boot=10)["value"])  # one category
  assert stats.fleiss_kappa(np.array([[1, 0, 1, 0], [1, 0, 1, 0]]), n_boot=10)["value"] == 1.0


def test_spearman_and_standardized_spread():
  s = np.array([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0], [4.0, 3.0, 2.0, 1.0]])
  np.testing.assert_allclose(stats.spearman_matrix(s), [[1, 1, -1], [1, 1, -1], [-1, -1, 1]])
  # members 0 and 1 differ only by scale: identical once standardised -> spread 0
  spread = stats.standardized_spread(s[:2], np.array([True, True, True, True]))
  np.testing.assert_allclose(spread, 0, atol=1e-12)
  # standardised on the first two items only: member 1 = 10 x member 0, so still identical
  np.testing.assert_allclose(stats.standardized_spread(s[:2], np.array([1, 1, 0, 0], bool)), 0,
                             atol=1e-12)
  z = stats.standardized_spread(s[[0, 2]], np.ones(4, bool))  # z = -/+1.34, -/+.45, ...
  np.testing.assert_allclose(z, np.abs(s[0] - 2.5) / np.std(s[0]))


def test_paired_diff_ci():
  rng = np.random.default_rng(1)
  a = (rng.random(400) < 0.8).astype(float)
  b = a.copy()
  b[:20] = 1 - b[:20]  # differs from a on 20 items only
  d = stats.paired_diff_ci(a, b, n_boot=500)
  assert d["value"] == pytest.approx(a.mean() - b.mean())
  assert d["hi"] - d["lo"] < 0.06  # jointly resampled: far narrower than two marginal CIs
  with pytest.raises(ValueError):
    stats.paired_diff_ci(a, b[:10])


def test_bootstrap_ci_of_a_function_matches_the_mean_path():
  v = np.arange(50, dtype=float)
  by_fn = stats.bootstrap_ci(lambda idx: v[idx].mean(), n=50, n_boot=300, seed=3)
  by_values = stats.bootstrap_ci(v, n_boot=300, seed=4)
  assert by_fn["value"] == by_values["value"] == pytest.approx(24.5)
  assert abs(by_fn["lo"] - by_values["lo"]) < 3 and abs(by_fn["hi"] - by_values["hi"]) < 3
  assert np.isnan(stats.bootstrap_ci([])["value"])


def test_bootstrap_coverage_bernoulli():
  """200 replications of n=200 Bernoulli(0.7): the 95% percentile interval covers 0.7 in about
  95% of them (0.90-0.99 allows for the 200-replication noise and the percentile method)."""
  rng = np.random.default_rng(0)
  hits = 0
  for rep in range(200):
    x = (rng.random(200) < 0.7).astype(float)
    ci = stats.bootstrap_ci(x, n_boot=500, seed=rep)
    hits += ci["lo"] <= 0.7 <= ci["hi"]
  assert 0.90 <= hits / 200 <= 0.99


def test_eval_pair_report_counts_ties_half():
  from rmjax.eval.metrics import pair_report  # noqa: PLC0415 -- only this test needs it
  rep = pair_report([1.0, 0.0, 0.0, -1.0], [0.0, 0.0, 1.0, -1.0], [None] * 4, [3, 2, 2, 1], [1, 2, 3, 1])
  assert rep["accuracy"] == pytest.approx((1 + 0.5 + 0 + 0.5) / 4) and rep["n_ties"] == 2
  assert rep["length_baseline_accuracy"] == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
