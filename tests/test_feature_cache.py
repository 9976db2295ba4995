"""The experiments' feature cache (rmjax.inference.feature_cache) and the member heads trained on it."""

import json

import numpy as np
import pytest

from rmjax.data.pairs import make_pair
from rmjax.errors import ConfigError
from rmjax.inference import embed as emb
from rmjax.inference.feature_cache import FeatureCache, main
from rmjax.train import head_fit


def _pairs(n=6):
  return [make_pair(f"question {i}? " + "why " * i, f"a good answer {i}" + " yes" * (3 * i),
                    f"bad {i}") for i in range(n)]


def test_features_equal_the_scorer_forward_and_resume(tmp_path):
  pairs = _pairs()
  cache = FeatureCache(str(tmp_path / "c"), "tiny", max_length=48, chunk=4)
  got = cache.pairs(pairs[:3])                           # a first, partial extraction
  full = cache.pairs(pairs)
  np.testing.assert_array_equal(full["chosen"]["last"][:3], got["chosen"]["last"])
  cfg, params, enc, pattern, _ = cache.model()
  rows, cut = cache.encode([(p.messages, p.chosen) for p in pairs])
  ref = emb.armo_features(cfg, params, rows, pattern, batch_size=4, pad_id=enc.pad_id)
  np.testing.assert_allclose(full["chosen"]["last"], ref["h_response"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(full["chosen"]["prompt_end"], ref["h_prompt"], rtol=1e-5, atol=1e-5)
  assert full["truncated"].any() and cut.any()             # the long answers were cut to 48 tokens
  assert full["tokens_chosen"].max() <= 48
  again = FeatureCache(str(tmp_path / "c"), "tiny", max_length=48)   # a rerun extracts nothing
  info = again.extract(rows + cache.encode([(p.messages, p.rejected) for p in pairs])[0])
  assert info["new_rows"] == 0
  with pytest.raises(ConfigError, match="other settings"):
    FeatureCache(str(tmp_path / "c"), "tiny", max_length=64).pairs(pairs[:1])


def test_cli_extracts_a_source_and_reports_json(tmp_path, capsys):
  data = tmp_path / "pairs.jsonl"
  data.write_text("".join(json.dumps({"prompt": p.prompt[0][1], "chosen": p.chosen,
                                      "rejected": p.rejected}) + "\n" for p in _pairs(4)))
  info = main(["--cache", str(tmp_path / "c"), "--data", f"json:{data}", "--spec", "tiny",
               "--max_length", "32"])
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out["total_rows"] == 8 and out["new_rows"] == info["new_rows"] > 0
  assert out["truncated_rows"] > 0


def test_member_heads_are_seeded_and_learn():
  rng = np.random.default_rng(0)
  w = rng.normal(size=16)
  c, r = rng.normal(size=(200, 16)), rng.normal(size=(200, 16))
  swap = c @ w < r @ w
  c[swap], r[swap] = r[swap].copy(), c[swap].copy()
  for hidden in (0, 32):
    heads, hist = head_fit.train_member_heads(c, r, [0, 0, 1], hidden=hidden, steps=300, lr=1e-2,
                                              val=(c[:20], r[:20]))
    s = head_fit.member_scores(heads, np.concatenate([c, r]))
    np.testing.assert_array_equal(s[0], s[1])              # same seed, same member
    assert not np.allclose(s[0], s[2])                     # another seed, another member
    assert ((s[:, :200] - s[:, 200:]) > 0).mean() > 0.9
    assert hist["val"].shape == (300, 3) and hist["val"][-1].mean() < hist["val"][0].mean()
  boot = np.ones((2, 200), np.float32)
  boot[1, :100] = 0                                        # member 1 never sees the first half
  heads, _ = head_fit.train_member_heads(c, r, [3, 3], hidden=0, steps=50, boot=boot)
  s = head_fit.member_scores(heads, c)
  assert not np.allclose(s[0], s[1])
