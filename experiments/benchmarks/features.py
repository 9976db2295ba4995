"""Feature-cache extraction throughput vs the padded all-logits forward, same model, same run.

Three arms on SmolLM2-135M (float32, CPU), one after the other in one process:
  forward_8x256   the forward benchmark's setting (`experiments.benchmarks.forward`): 8 x 256
                  random ids, every position's logits (the LM head included), no padding;
  score_logits    real rows (the ID eval splits of `experiments.real_sets`, both responses, the
                  text `rmjax score` reads, 256-token cap) through `batched_forward` with the LM
                  head, power-of-two buckets, batch 16 (how scoring pads);
  feature_cache   the same rows through `rmjax.inference.feature_cache.FeatureCache.extract`
                  (hidden states only, length-sorted rows padded to a multiple of 32, shards on
                  disk).
Useful tokens/s = real (unpadded) tokens / wall seconds; every arm is run once untimed first so
compiles are excluded. Prints one JSON object last.

  python -m experiments.benchmarks.features --rows 256
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments import real_sets  # noqa: E402
from experiments.benchmarks import _common  # noqa: E402
from rmjax.inference import embed as emb  # noqa: E402
from rmjax.inference.feature_cache import FeatureCache  # noqa: E402
from rmjax.models.llama import Llama  # noqa: E402


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rows", type=int, default=256)
  p.add_argument("--spec", default="smollm2-135m")
  p.add_argument("--max_length", type=int, default=256)
  a = p.parse_args(argv)
  root = tempfile.mkdtemp(prefix="features_bench_")
  cache = FeatureCache(os.path.join(root, "warm"), a.spec, a.max_length)
  cfg, params, enc, _, _ = cache.model()
  sets = real_sets.load_sets()
  items = [(e.messages, r) for ex in sets["eval"].values() for e in ex for r in (e.chosen, e.rejected)]
  items = [items[i] for i in np.random.default_rng(0).permutation(len(items))[:a.rows]]
  rows, cut = cache.encode(items)
  useful = int(sum(map(len, rows)))
  result = {"benchmark": "features", "env": _common.environment(),
            "config": {"spec": a.spec, "rows": len(rows), "useful_tokens": useful,
                       "max_length": a.max_length, "truncated_rows": int(cut.sum())}}

  # forward benchmark's setting: 8 x 256, all logits
  fwd = jax.jit(lambda p_, i, m: Llama(cfg).apply({"params": p_}, i, attention_mask=m))
  ids = np.random.default_rng(0).integers(3, cfg.vocab_size, (8, 256)).astype(np.int32)
  mask = np.ones_like(ids)
  t = _common.time_fn(lambda: fwd(params, ids, mask), warmup=1, iters=3)
  result["forward_8x256"] = {"tokens_per_s": round(8 * 256 / t["median_s"], 1),
                             "step_s": round(t["median_s"], 3)}

  # scoring-style padded forward with the LM head over the real rows
  @functools.partial(jax.jit)
  def logits_fn(p_, i, m):
    return {"last_logit": Llama(cfg).apply({"params": p_}, i, m)[:, -1, :1]}
  run = lambda: emb.batched_forward(logits_fn, params, rows, batch_size=16, pad_id=enc.pad_id,
                                    max_length=a.max_length)
  run()
  t0 = time.perf_counter()
  run()
  dt = time.perf_counter() - t0
  padded = sum(min(emb.bucket_length(max(len(r) for r in chunk)), a.max_length) * 16
               for chunk in _chunks(sorted(rows, key=len), 16))
  result["score_logits"] = {"useful_tokens_per_s": round(useful / dt, 1), "seconds": round(dt, 1),
                            "computed_tokens": padded}

  # feature cache (warm-up into one dir, timed into a fresh one)
  cache.extract(rows, progress=False)
  timed = FeatureCache(os.path.join(root, "timed"), a.spec, a.max_length, model=cache.model())
  info = timed.extract(rows, progress=False)
  result["feature_cache"] = {"useful_tokens_per_s": info["useful_tokens_per_s"],
                             "seconds": info["seconds"],
                             "computed_tokens": sum(-(-max(len(r) for r in c) // 32) * 32 * 16
                                                    for c in _chunks(sorted(rows, key=len), 16))}
  fc = result["feature_cache"]["useful_tokens_per_s"]
  result["ratio_feature_cache_over_forward_8x256"] = round(fc / result["forward_8x256"]["tokens_per_s"], 3)
  result["ratio_feature_cache_over_score_logits"] = round(fc / result["score_logits"]["useful_tokens_per_s"], 3)
  result["peak_rss_mib"] = round(_common.peak_rss_mib(), 1)
  shutil.rmtree(root, ignore_errors=True)
  _common.emit(result)
  return result


def _chunks(xs, n):
  return [xs[i:i + n] for i in range(0, len(xs), n)]


if __name__ == "__main__":
  main()
