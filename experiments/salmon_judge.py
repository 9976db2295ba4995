"""SALMON judge order-consistency with SmolLM2-135M-Instruct (reduced CPU run).

  python experiments/salmon_judge.py --workdir /tmp/salmon_judge --n_alpaca 12 --n_mt 12

Runs `rmjax.tasks.salmon_collect.collect` with the smollm2 config: prompts = the first n AlpacaEval
instructions + the first n MT-Bench first turns (../shared/data), two samples each (T=0.7, seeds
42/43), every pair judged under each of the 11 principles of SALMON's
principle_collection_rm.json in both orders. Prints one JSON object: per-principle
order-consistency rate (both orders agree in sign), label split, mean |s|, timings.
Resumable: rerun with the same --workdir to continue.
"""

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", default="/tmp/salmon_judge")
  ap.add_argument("--n_alpaca", type=int, default=12)
  ap.add_argument("--n_mt", type=int, default=12)
  ap.add_argument("--max_new_tokens", type=int, default=96)
  ap.add_argument("--principles", default="shared:principle_collection_rm")
  args = ap.parse_args()

  from configs import salmon as salmon_config
  from rmjax.data import salmon_aggregate as agg
  from rmjax.tasks import salmon_collect
  c = salmon_config.get_config("smollm2")
  c.collect.prompts = "shared:alpaca_eval_prompts+shared:mt_bench"
  c.collect.limit = 0
  c.collect.principles = args.principles
  c.collect.max_new_tokens = args.max_new_tokens
  c.collect.judge_max_length = 1024
  # per-source limits: load both sources, then keep n of each
  prompts = (salmon_collect.load_prompts("shared:alpaca_eval_prompts", limit=args.n_alpaca) +
             salmon_collect.load_prompts("shared:mt_bench", limit=args.n_mt))
  os.makedirs(args.workdir, exist_ok=True)
  spec = os.path.join(args.workdir, "prompts.jsonl")
  with open(spec, "w") as f:
    for _, m in prompts:
      f.write(json.dumps({"prompt": m}) + "\n")
  c.collect.prompts = f"json:{spec}"
  t0 = time.time()
  stats = salmon_collect.collect(c, args.workdir)
  elapsed = time.time() - t0

  from rmjax.data.pairs import iter_records
  recs = [o for _, o in iter_records(stats["preferences"])]
  dims = list(recs[0]["scores"]) if recs else []
  per = {}
  for d in dims:
    labels = [agg.consistency_label(*r["scores"][d]) for r in recs]
    s = np.asarray([r["scores"][d] for r in recs])
    per[d] = {"consistency": float(np.mean([x != 0 for x in labels])),
              "prefer_1": float(np.mean([x == 1 for x in labels])),
              "prefer_2": float(np.mean([x == 2 for x in labels])),
              "mean_abs_s12": float(np.abs(s[:, 0]).mean()),
              "mean_abs_s21": float(np.abs(s[:, 1]).mean()),
              # position bias: s12 - s21 > 0 means the judge favours whatever is shown as (a)
              "mean_position_bias": float(((s[:, 0] - s[:, 1]) / 2).mean())}
  overall = float(np.mean([v["consistency"] for v in per.values()])) if per else 0.0
  print(json.dumps({"model": "smollm2-135m (SmolLM2-135M-Instruct Q4_1 GGUF)", "device": "cpu",
                    "prompts": stats["prompts"], "pairs": stats["pairs"],
                    "dropped_short": stats["dropped"], "judged": stats["judged"],
                    "principles": args.principles, "max_new_tokens": args.max_new_tokens,
                    "overall_consistency": overall, "per_principle": per,
                    "seconds": elapsed}, indent=1))


if __name__ == "__main__":
  main()
