"""SALMON aggregation: normalisation, consistency rule, K / negation / flip / swap statistics."""

import numpy as np
import pytest

from rmjax.data import salmon_aggregate as agg
from rmjax.data.principles import Principle
from rmjax.errors import ConfigError

PRINCIPLES = [Principle(f"d{i}", f"def {i}", f"neg {i}") for i in range(8)]
DIMS = [p.dimension for p in PRINCIPLES]


def _table(n, seed=0):
  rng = np.random.default_rng(seed)
  return [{"id": str(i), "prompt": "p", "output_1": "x", "output_2": "y",
           "scores": {d: [float(a), float(b)] for d, (a, b) in zip(DIMS, rng.normal(size=(8, 2)) * 2)}}
          for i in range(n)]


def test_consistency_label():
  assert agg.consistency_label(1.0, 0.5) == 1
  assert agg.consistency_label(-1.0, -0.5) == 2
  assert agg.consistency_label(1.0, -0.5) == 0
  assert agg.consistency_label(0.0, 1.0) == 0


def test_normalized_scores_hand_computed():
  recs = [{"scores": {"a": [1.0, 3.0]}}, {"scores": {"a": [-2.0, 2.0]}}]
  s, v = agg.normalized_scores(recs, ["a"])
  pooled = np.array([1.0, 3.0, -2.0, 2.0])
  assert v[0] == pytest.approx(pooled.var())  # variance, not std
  assert s[0, 0] == pytest.approx(2.0 / pooled.var())  # mean(1, 3) / v
  assert s[1, 0] == 0.0  # orders disagree -> 0


def test_statistics_match_spec():
  examples, stats = agg.aggregate(_table(1000), PRINCIPLES, seed=3)  # 4 passes -> 4000 draws
  n = sum(stats["k_hist"].values())
  assert n == 4000
  pmf = agg.truncated_geometric_pmf(0.2, 8)
  freq = np.array([stats["k_hist"].get(k, 0) for k in range(1, 9)]) / n
  sd = np.sqrt(pmf * (1 - pmf) / n)
  assert np.all(np.abs(freq - pmf) < 4 * sd + 1e-3), (freq, pmf)
  assert max(stats["k_hist"]) <= 8
  assert stats["negation_rate"] == pytest.approx(0.5, abs=0.02)
  assert stats["flip_rate"] == pytest.approx(0.10, abs=0.015)
  assert stats["swap_rate"] == pytest.approx(0.5, abs=0.025)
  assert stats["examples"] == len(examples) == 4000 - stats["skipped_tie"]
  ex = examples[0]
  assert len(ex["dimensions"]) == ex["k"] == len(ex["negated"]) == len(ex["principles"])
  assert all(t == (f"neg {d[1:]}" if ng else f"def {d[1:]}")
             for d, ng, t in zip(ex["dimensions"], ex["negated"], ex["principles"]))


def test_deterministic_under_seed():
  a, _ = agg.aggregate(_table(50), PRINCIPLES, seed=7)
  b, _ = agg.aggregate(_table(50), PRINCIPLES, seed=7)
  c, _ = agg.aggregate(_table(50), PRINCIPLES, seed=8)
  assert a == b and a != c


def test_label_is_dominant_principle_without_noise():
  recs = _table(200, seed=1)
  s, _ = agg.normalized_scores(recs, DIMS)
  by_id = {r["id"]: i for i, r in enumerate(recs)}
  examples, _ = agg.aggregate(recs, PRINCIPLES, seed=0, flip_prob=0.0, swap_prob=0.0, passes=1)
  for ex in examples:
    row = s[by_id[ex["id"]]]
    signed = [(-1 if ng else 1) * row[DIMS.index(d)] for d, ng in zip(ex["dimensions"], ex["negated"])]
    j = int(np.argmax(np.abs(signed)))
    assert ex["dominant"] == ex["dimensions"][j]
    assert ex["preference"] == (1 if signed[j] > 0 else 2)
  # a swap exchanges the outputs and the label together
  sw, _ = agg.aggregate(recs, PRINCIPLES, seed=0, flip_prob=0.0, swap_prob=1.0, passes=1)
  assert all(x["output_1"] == y["output_2"] and x["preference"] == 3 - y["preference"]
             for x, y in zip(sw, examples))


def test_ai_language_model_rule():
  recs = [{"id": "0", "prompt": "p", "output_1": "As an AI language model, I cannot.",
           "output_2": "Sure.", "scores": {"d0": [5.0, 5.0]}}] * 400
  ex, stats = agg.aggregate(recs, PRINCIPLES[:1], seed=0, flip_prob=0.0, rule_flip_prob=0.0,
                            swap_prob=0.0, negate_prob=0.0, passes=1)
  assert stats["rule_rate"] == pytest.approx(0.5, abs=0.08)
  assert all(e["preference"] == (2 if e["rule"] else 1) for e in ex)


def test_incomplete_records_dropped_and_bad_config():
  recs = _table(10)
  del recs[0]["scores"]["d3"]
  _, stats = agg.aggregate(recs, PRINCIPLES, seed=0)
  assert stats["complete"] == 9
  with pytest.raises(ConfigError, match="not in the principle collection"):
    agg.aggregate(recs, PRINCIPLES, dimensions=["nope"])
  with pytest.raises(ConfigError, match="negative_definition"):
    agg.aggregate(recs, [Principle("d0", "x")])


def test_synthetic_judge_rule():
  rng = np.random.default_rng(0)
  s = agg.synthetic_judge_scores("Say something kind about cats.", "good cats.",
                                 "bad rain and so on.", rng, noise=0.0)
  assert s == {"Concise": [1.5, 1.5], "Kind": [2.0, 2.0], "On topic": [2.0, 2.0]}
  recs = agg.length_records(20, seed=0)
  for r in recs:
    n1, n2 = len(r["output_1"].split()), len(r["output_2"].split())
    assert np.sign(np.mean(r["scores"]["Concise"])) == np.sign(n2 - n1)
