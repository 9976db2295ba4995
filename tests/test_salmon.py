"""SALMON task: collection mechanics (tiny random judge), principle steering of a trained tiny RM,
scoring under a principle file, the notebook."""

import json
import pathlib

import jax
import numpy as np
import pytest

from configs import salmon as salmon_config
from rmjax import sharding as shd
from rmjax.data import salmon_aggregate as agg
from rmjax.data.tokenize import ByteTokenizer
from rmjax.errors import ConfigError
from rmjax.inference import judge
from rmjax.tasks import common as builders, salmon, salmon_collect
from rmjax.tasks.runs import load_scorer
from rmjax.train import loop

REPO = pathlib.Path(__file__).resolve().parents[1]

# tiny models built again and again in this module: their compiles are shared (conftest)
pytestmark = pytest.mark.usefixtures("jax_compile_cache")


def _collect_config(**kw):
  c = salmon_config.get_config("tiny")
  c.collect.update(prompts="synthetic:12", max_new_tokens=8, progress=False, **kw)
  return c


def _lines(path):
  with open(path) as f:
    return [json.loads(x) for x in f]


def test_collect_shapes_consistency_rule_and_resume(tmp_path):
  c = _collect_config()
  stats = salmon_collect.collect(c, str(tmp_path))
  prefs = _lines(stats["preferences"])
  dims = [p.dimension for p in agg.SYNTHETIC_PRINCIPLES]
  assert stats["judged"] == len(prefs) == stats["pairs"] - stats["dropped"] > 0
  assert len({r["id"] for r in prefs}) == len(prefs)
  for r in prefs:
    assert list(r["scores"]) == dims and all(len(v) == 2 for v in r["scores"].values())
    assert r["labels"] == {d: agg.consistency_label(*v) for d, v in r["scores"].items()}
  assert set(stats["consistency"]) == set(dims)

  # stored scores are l(a) - l(b) (output_1 first) and l(b) - l(a) with the order swapped
  from rmjax import checkpoints
  cfg, params = checkpoints.load_pretrained(c.model.spec, seed=c.seed)
  tok = ByteTokenizer()
  r, pr = prefs[0], agg.SYNTHETIC_PRINCIPLES[1]
  ids = judge.judge_token_ids(tok, ("a", "b"))
  d = judge.judge_scores(params, cfg, tok, [(r["prompt"], r["output_1"], r["output_2"], pr),
                                             (r["prompt"], r["output_2"], r["output_1"], pr)],
                          ids, batch_size=2, max_length=512)
  np.testing.assert_allclose(r["scores"][pr.dimension], [d[0], -d[1]], rtol=1e-4, atol=1e-5)

  # resume: a rerun adds nothing; a cut (and torn) file is completed to the same set of pairs
  salmon_collect.collect(c, str(tmp_path))
  assert len(_lines(stats["preferences"])) == len(prefs)
  with open(stats["preferences"], "w") as f:
    f.write("".join(json.dumps(x) + "\n" for x in prefs[:2]) + '{"id": "torn')
  with open(stats["preferences"], "w") as f:  # torn lines are what a kill leaves; keep whole ones
    f.write("".join(json.dumps(x) + "\n" for x in prefs[:2]))
  salmon_collect.collect(c, str(tmp_path))
  again = _lines(stats["preferences"])
  assert sorted(x["id"] for x in again) == sorted(x["id"] for x in prefs)


def test_judge_tokens_must_be_single_tokens(tmp_path):
  tok = ByteTokenizer()
  assert judge.judge_token_ids(tok, ("a", "b")) == [ord("a") + 4, ord("b") + 4]
  with pytest.raises(ConfigError, match="judge token 'yes' is not a single token"):
    judge.judge_token_ids(tok, ("yes", "no"))
  with pytest.raises(ConfigError, match="same id"):
    judge.judge_token_ids(tok, ("a", "a"))
  with pytest.raises(ConfigError, match="not a single token"):
    salmon_collect.collect(_collect_config(judge_tokens=("A)", "B)")), str(tmp_path))


def test_collect_bad_shard():
  c = _collect_config(shard_index=2, num_shards=2)
  with pytest.raises(ConfigError, match="shard_index"):
    salmon_collect.collect(c, "/tmp/unused")


def _steering_config():
  c = salmon_config.get_config("tiny")
  c.salmon.update(preferences="length:800", eval_preferences="length:32", dimensions=("Concise",))
  # 30 steps: eval accuracy 1.0, short/long preferred 0.98 / 0.96 of held-out pairs (60 steps:
  # 0.95, 1.0 / 0.96), well above the thresholds below
  c.train.update(steps=30, batch_size=16, eval_every=30, checkpoint_every=30, progress=False,
                 tensorboard=False, async_checkpoint=False)
  c.optim.lr = 3e-3
  c.data.buckets = (64, 96, 128, 160, 192, 256)
  return c


def test_principle_steering_concise_vs_negation(tmp_path):
  """Trained on aggregated data of a known rule (Concise favours the shorter response, negated
  half the time), the RM prefers the shorter of two otherwise equal held-out responses under
  'Be brief.' and the longer under its negation."""
  c = _steering_config()
  mesh = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  wd = str(tmp_path / "rm")
  final, state = loop.train(c, wd, salmon.build(c), mesh=mesh, return_state=True)
  assert final["eval_accuracy"] > 0.8
  cfg, _ = builders.backbone(c)
  score = salmon.reward_fn(salmon.make_model(c, cfg), state.params, ByteTokenizer(), c)
  held = agg.length_records(48, seed=12345)  # unseen seed
  prompts = [r["prompt"] for r in held]
  short = [min(r["output_1"], r["output_2"], key=len) for r in held]
  long = [max(r["output_1"], r["output_2"], key=len) for r in held]
  concise = agg.SYNTHETIC_PRINCIPLES[0]
  pos = [[concise.definition]] * len(held)
  neg = [[concise.negative_definition]] * len(held)
  assert np.mean(score(prompts, short, pos) > score(prompts, long, pos)) >= 0.85
  assert np.mean(score(prompts, long, neg) > score(prompts, short, neg)) >= 0.85

  # the same through the Scorer (`rmjax score --principles FILE`)
  pfile = tmp_path / "neg.json"
  pfile.write_text(json.dumps([{"dimension": "Verbose", "definition": concise.negative_definition}]))
  scorer = load_scorer(wd, batch_size=8)
  got = scorer.score(prompts[:8], short[:8], progress=False, principles=str(pfile))["reward"]
  np.testing.assert_allclose(got, score(prompts[:8], short[:8], neg[:8]), rtol=1e-4, atol=1e-4)
  # default principles (first `score_principles` of the collection, none negated)
  ids = salmon.score_ids(scorer.encoder, scorer.config, [{"role": "user", "content": "q"}], "r")
  assert ByteTokenizer().decode(ids).count("\n- ") == len(agg.SYNTHETIC_PRINCIPLES)
