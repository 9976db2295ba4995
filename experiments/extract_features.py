"""Extract the shared feature cache of experiments E-a and E-c once (resumable: rerun to continue).

  python -m experiments.extract_features --cache runs/features          # full size (~1 h, 2 cores)
  python -m experiments.extract_features --cache /tmp/f --limit 16       # smoke

Every pair of `experiments.real_sets` (train, ID eval and OOD probes, both responses) and E-c's
rated rows (XSTest completions, USR responses) go through `rmjax.inference.feature_cache` at
256 tokens. Progress goes to CACHE/extract.log; one JSON object is printed last (rows, tokens,
truncated rows per set, useful tokens/s of the new rows).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from experiments import real_sets  # noqa: E402
from rmjax.inference.feature_cache import FeatureCache  # noqa: E402


def all_items(limit: int = 0) -> dict:
  """{group name: [(prompt messages, response)]} for every row the experiments read."""
  sets = real_sets.load_sets()
  groups = {}
  for part in ("train", "eval", "ood"):
    for name, ex in sets[part].items():
      ex = ex[:limit] if limit else ex
      groups[f"{part}/{name}"] = ([(e.messages, e.chosen) for e in ex] +
                                  [(e.messages, e.rejected) for e in ex])
  for name, rows in real_sets.rated_rows().items():
    rows = rows[:limit] if limit else rows
    groups[f"rated/{name}"] = [(e.messages if hasattr(e, "messages") else
                                [{"role": r, "content": c} for r, c in e.prompt], e.response)
                               for e in rows]
  return groups


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--cache", default="runs/features")
  p.add_argument("--max_length", type=int, default=256)
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--limit", type=int, default=0, help="pairs/rows per set (0 = all)")
  a = p.parse_args(argv)
  os.makedirs(a.cache, exist_ok=True)
  log_path = os.path.join(a.cache, "extract.log")

  def log(msg):
    with open(log_path, "a") as f:
      f.write(f"{time.strftime('%H:%M:%S')} {msg}\n")

  cache = FeatureCache(a.cache, max_length=a.max_length, batch_size=a.batch_size)
  groups = all_items(a.limit)
  rows, per_group = [], {}
  for name, items in groups.items():
    r, cut = cache.encode(items)
    rows += r
    per_group[name] = {"rows": len(r), "tokens": int(sum(map(len, r))),
                       "truncated": int(cut.sum())}
  log(f"start: {len(rows)} rows, {sum(map(len, rows))} tokens before de-duplication")
  info = cache.extract(rows, log=log)
  log(f"done: {json.dumps(info)}")
  info["groups"] = per_group
  print(json.dumps(info))
  return 0


if __name__ == "__main__":
  sys.exit(main())
