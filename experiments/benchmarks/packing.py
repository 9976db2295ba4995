"""Useful tokens/s of a BT train step on the real hh-rlhf length distribution: rmjax packed vs
rmjax padded vs transformers + PyTorch padded per batch (as TRL's collator pads), same pairs.

The pairs are configs/bt.py:smollm2's hh-rlhf training pairs (../shared/data; the built-in
synthetic pairs when it is absent) tokenized with the SmolLM2 chat template at `--max_length`;
the model is the SmolLM2-135M architecture with random weights (`smollm2-135m-config`). The same
`--batches` batches of `--pairs` pairs go through each arm:
  padded   rmjax `PairBatcher` batches: chosen and rejected padded to the length bucket
  packed_plain   the same batches through `rmjax.data.packing.pack_batch` (rows of up to
           `--pack_factor` x max_length, default 3 as `data.pack_length`; shapes from the fixed
           ladder as `data.pack_ladder`, `--exact` for each batch's fewest-token shape; row
           lengths rounded to `--length_multiple`), chosen and rejected as two whole sequences
  packed   the same, prompt-shared (`data.share_prompt`, the default): each pair's prompt once,
           both responses after it (same rewards and loss as padded: tests/test_packing.py)
  torch    LlamaForSequenceClassification + AdamW, the 2 x pairs sequences padded to the longest
Every shape is compiled before the clock starts (rmjax compiles once per shape; a real run sees
a handful). The torch arm runs in its own child process on the same batches, in PyTorch's default
environment (`train_step.torch_environ`). Useful tokens = real tokens of the pairs. The timed
batches are a sample: `epoch` gives each arm's computed tokens over ALL batches of one epoch
(numpy only), so the sample's share of padding can be checked against the whole distribution's,
and the distinct packed shapes (= compiled train steps) of the epoch, of its first 10 batches,
with the ladder and with exact shapes. `--warm_steps N` also times the first N and the next N
steps of a fresh packed train step (compiles included, as a run's first steps pay them), with
the ladder and with exact shapes (`warm`: seconds, new shapes, first / next ratio).
Prints one JSON object last (`packed_vs_torch` = packed useful tokens/s / torch's).

  python -m experiments.benchmarks.packing [--batches 4] [--pairs 8] [--max_length 256] \
      [--warm_steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import bt as bt_config  # noqa: E402
from experiments.benchmarks import _common  # noqa: E402
from experiments.benchmarks.train_step import rmjax_step_fn, torch_environ, torch_model  # noqa: E402
from rmjax import checkpoints  # noqa: E402
from rmjax.checkpoints.presets import load_pretrained  # noqa: E402
from rmjax.data.batching import PairBatcher, tokenize_pairs  # noqa: E402
from rmjax.data.packing import DEFAULT_PACK_FACTOR, pack_batch  # noqa: E402
from rmjax.data.sources import shared_data_root  # noqa: E402
from rmjax.data.specs import load_pairs  # noqa: E402
from rmjax.data.tokenize import ChatEncoder  # noqa: E402


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batches", type=int, default=4)
  p.add_argument("--pairs", type=int, default=8)
  p.add_argument("--max_length", type=int, default=256)
  p.add_argument("--length_multiple", type=int, default=128,
                 help="packed row lengths: rounded to multiples of this (0 = always the longest)")
  p.add_argument("--pack_factor", type=int, default=DEFAULT_PACK_FACTOR,
                 help="longest packed row = this x max_length (data.pack_length = 0: 3)")
  p.add_argument("--exact", action="store_true",
                 help="the timed packed arms get each batch's exact fewest-token shape "
                      "(data.pack_ladder=False) instead of the fixed shape ladder")
  p.add_argument("--warm_steps", type=int, default=0,
                 help="also time the first N and next N steps of a fresh packed step, compiles "
                      "included, ladder vs exact (0 = skip)")
  p.add_argument("--preset", default="smollm2-135m-config", help="model architecture (random)")
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--torch-only", action="store_true", help="(internal) the torch arm alone")
  return p.parse_args(argv)


def torch_arm(cfg, params, padded, useful) -> dict:
  """The torch arm: each batch's 2 x pairs sequences padded to the batch's longest (TRL)."""
  run, _ = torch_model(cfg, params)
  batches = []
  for b in padded:
    rows = [r[:m.sum()] for r, m in zip(np.concatenate([b["chosen_ids"], b["rejected_ids"]]),
                                        np.concatenate([b["chosen_mask"], b["rejected_mask"]]))]
    t = max(len(r) for r in rows)
    ids = np.zeros((len(rows), t), np.int64)
    mask = np.zeros((len(rows), t), np.int64)
    for i, r in enumerate(rows):
      ids[i, :len(r)], mask[i, :len(r)] = r, 1
    batches.append((ids, mask))
  run(*batches[0])
  t0 = time.perf_counter()
  for ids, mask in batches:
    run(ids, mask)
  secs = time.perf_counter() - t0
  computed = sum(int(np.prod(ids.shape)) for ids, _ in batches)
  return {"useful_tokens_per_s": round(useful / secs, 1), "pass_s": round(secs, 3),
          "computed_tokens": computed, "useful_fraction": round(useful / computed, 3),
          "peak_rss_mib": round(_common.peak_rss_mib(), 1)}


def _computed(batch) -> int:
  """Tokens a batch computes: 2 x pairs x bucket padded, rows x row length packed."""
  if "chosen_ids" in batch:
    return 2 * int(np.prod(batch["chosen_ids"].shape))
  return int(np.prod(batch["input_ids"].shape))


def _pack(b, data, args, share: bool, ladder: bool):
  return pack_batch(b, data, args.pack_factor * args.max_length, share_prompt=share,
                    length_multiple=args.length_multiple, ladder=ladder)


def epoch_tokens(data, args) -> dict:
  """Useful and computed tokens of every arm over one epoch of `--pairs`-pair batches, and the
  distinct packed shapes (compiled train steps) of the epoch and of its first 10 batches."""
  batcher = PairBatcher(data, args.pairs, buckets=(64, 128, 256, 512), seed=0)
  arms = ("packed_plain", "packed", "packed_exact")
  out = dict.fromkeys(("useful", "padded", "torch", *arms), 0)
  shapes = {k: [] for k in ("padded", *arms)}
  for _ in range(batcher.steps_per_epoch):
    b = next(batcher)
    lengths = np.concatenate([b["chosen_mask"].sum(1), b["rejected_mask"].sum(1)])
    out["useful"] += int(lengths.sum())
    out["padded"] += _computed(b)
    shapes["padded"].append(b["chosen_ids"].shape)
    out["torch"] += len(lengths) * int(lengths.max())
    for name, share, ladder in (("packed_plain", False, not args.exact), ("packed", True, not args.exact),
                                ("packed_exact", True, False)):
      packed = _pack(b, data, args, share, ladder)
      out[name] += _computed(packed)
      shapes[name].append(packed["input_ids"].shape)
  return {**out, "batches": batcher.steps_per_epoch,
          **{f"useful_fraction_{k}": round(out["useful"] / out[k], 3)
             for k in ("padded", "torch", *arms)},
          "shapes": {k: len(set(v)) for k, v in shapes.items()},
          "shapes_first_10": {k: len(set(v[:10])) for k, v in shapes.items()}}


def warm_steps(cfg, params, data, args) -> dict:
  """Seconds of the first N and the next N steps of a fresh packed (prompt-shared) train step,
  compiles included, with the shape ladder and with exact shapes: what a run's start costs."""
  batcher = PairBatcher(data, args.pairs, buckets=(64, 128, 256, 512), seed=0)
  padded = [next(batcher) for _ in range(2 * args.warm_steps)]
  out = {}
  for name, ladder in (("ladder", True), ("exact", False)):
    batches = [_pack(b, data, args, True, ladder) for b in padded]
    step, seen, times, new = rmjax_step_fn(cfg, params), set(), [], []
    for b in batches:
      t = time.perf_counter()
      jax.block_until_ready(step(b))
      times.append(time.perf_counter() - t)
      new.append(b["input_ids"].shape not in seen)
      seen.add(b["input_ids"].shape)
    n = args.warm_steps
    first, rest = sum(times[:n]), sum(times[n:])
    out[name] = {"first_s": round(first, 3), "next_s": round(rest, 3),
                 "first_vs_next": round(first / max(rest, 1e-9), 3),
                 "new_shapes_first": int(sum(new[:n])), "new_shapes_next": int(sum(new[n:]))}
  return out


def _pass(step, batches):
  t = time.perf_counter()
  out = None
  for b in batches:
    out = step(b)
  jax.block_until_ready(out)
  return time.perf_counter() - t


def main(argv=None):
  args = parse_args(argv)
  config = bt_config.get_config("smollm2")
  source = config.data.source if shared_data_root() else "synthetic:2000"
  tok = checkpoints.load_tokenizer(config.model.tokenizer)
  pairs, _ = load_pairs(source)
  data, _ = tokenize_pairs(pairs, ChatEncoder(tok, args.max_length))
  cfg, params = load_pretrained(args.preset)
  params = jax.device_get(params)
  data.chosen = [c % cfg.vocab_size for c in data.chosen]  # a smaller test vocabulary: same lengths
  data.rejected = [r % cfg.vocab_size for r in data.rejected]
  batcher = PairBatcher(data, args.pairs, buckets=(64, 128, 256, 512), seed=0)
  padded = [next(batcher) for _ in range(args.batches)]
  plain, packed = ([_pack(b, data, args, share, not args.exact) for b in padded]
                   for share in (False, True))
  useful = int(sum(b["chosen_mask"].sum() + b["rejected_mask"].sum() for b in padded))
  if args.torch_only:
    print(json.dumps(torch_arm(cfg, params, padded, useful)))
    return None
  arms = {}
  for name, batches in (("padded", padded), ("packed_plain", plain), ("packed", packed)):
    step = rmjax_step_fn(cfg, params)
    for b in batches:  # compile every shape first
      jax.block_until_ready(step(b))
    secs = _pass(step, batches)
    computed = sum(_computed(b) for b in batches)
    arms[name] = {"useful_tokens_per_s": round(useful / secs, 1), "pass_s": round(secs, 3),
                  "computed_tokens": computed, "useful_fraction": round(useful / computed, 3),
                  "shapes": sorted({tuple(b["chosen_ids" if "chosen_ids" in b else "input_ids"].shape)
                                    for b in batches}),
                  "attention": cfg.attention}
  if not args.no_torch:
    child = subprocess.run([sys.executable, "-m", "experiments.benchmarks.packing", "--torch-only",
                            *(argv if argv is not None else sys.argv[1:])], capture_output=True,
                           text=True, check=False, env=torch_environ())
    if child.returncode:
      raise RuntimeError(f"torch arm failed: {child.stderr[-2000:]}")
    arms["torch"] = json.loads(child.stdout.strip().splitlines()[-1])
  result = {"benchmark": "packing", "preset": args.preset, "source": source, "pairs_per_batch": args.pairs,
            "batches": args.batches, "max_length": args.max_length,
            "length_multiple": args.length_multiple, "pack_length": args.pack_factor * args.max_length,
            "pack_ladder": not args.exact, "useful_tokens": useful,
            "epoch": epoch_tokens(data, args),
            "env": _common.environment(), **arms,
            "packed_vs_padded": round(arms["packed"]["useful_tokens_per_s"]
                                      / arms["padded"]["useful_tokens_per_s"], 3),
            "packed_plain_vs_padded": round(arms["packed_plain"]["useful_tokens_per_s"]
                                            / arms["padded"]["useful_tokens_per_s"], 3)}
  if "torch" in arms:
    result["packed_vs_torch"] = round(arms["packed"]["useful_tokens_per_s"]
                                      / arms["torch"]["useful_tokens_per_s"], 3)
    result["padded_vs_torch"] = round(arms["padded"]["useful_tokens_per_s"]
                                      / arms["torch"]["useful_tokens_per_s"], 3)
  if args.warm_steps:
    result["warm"] = warm_steps(cfg, params, data, args)
  _common.emit(result)
  return result


if __name__ == "__main__":
  main()
