"""SmolLM2-135M Bradley-Terry RM on hh-rlhf (../shared/data), evaluated in and out of distribution.

Train: hh-rlhf harmless + helpful test files, 90/10 split by prompt hash (seed 0); the 10% is the
in-distribution eval. OOD: LLMBar and RM-Bench (same-style diagonal pairs), deterministic
subsamples of `--ood_limit` pairs. Every accuracy is printed beside the length-only baseline.

  python experiments/bt_hh.py --workdir runs/bt_hh --steps 120 --freeze_backbone   # reduced CPU run
  python experiments/bt_hh.py --workdir runs/bt_hh_full --steps 2000 --batch 32     # GPU
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from configs import bt as bt_config  # noqa: E402
from rmjax.data import sources  # noqa: E402
from rmjax.eval.metrics import pair_report  # noqa: E402
from rmjax.tasks import bt  # noqa: E402
from rmjax.tasks.runs import load_scorer  # noqa: E402
from rmjax.data.specs import train_eval_pairs  # noqa: E402
from rmjax.train.loop import train  # noqa: E402


def subsample(examples, n):
  if not n or len(examples) <= n:
    return examples
  step = len(examples) / n
  return [examples[int(i * step)] for i in range(n)]


def evaluate(scorer, examples):
  res_c, res_r = scorer.score_pairs([e.messages for e in examples], [e.chosen for e in examples],
                                    [e.rejected for e in examples])  # as `rmjax eval` scores them
  rc, rr = res_c["reward"], res_r["reward"]
  return pair_report(rc, rr, [e.subset for e in examples], [len(e.chosen) for e in examples],
                     [len(e.rejected) for e in examples])


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default="runs/bt_hh")
  p.add_argument("--steps", type=int, default=120)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--max_length", type=int, default=256)
  p.add_argument("--lr", type=float, default=None)
  p.add_argument("--freeze_backbone", action="store_true")
  p.add_argument("--eval_limit", type=int, default=256)
  p.add_argument("--ood_limit", type=int, default=200)
  args = p.parse_args()
  if sources.shared_data_root() is None:
    print("skipped: ../shared/data not found")
    return

  c = bt_config.get_config("smollm2")
  c.train.steps, c.train.batch_size = args.steps, args.batch
  c.train.eval_every = c.train.checkpoint_every = args.steps
  c.train.log_every = 5
  c.data.max_length = args.max_length
  c.data.max_eval_examples = args.eval_limit
  c.train.freeze_backbone = args.freeze_backbone
  c.optim.lr = args.lr or (1e-3 if args.freeze_backbone else 1e-5)
  final = train(c, args.workdir, bt.build(c))

  scorer = load_scorer(args.workdir, batch_size=16, max_length=args.max_length)
  _, held_out, _ = train_eval_pairs(c)
  results = {"in_distribution_hh_rlhf": evaluate(scorer, held_out)}
  for name, spec in (("llmbar", "shared:llmbar"), ("rm_bench", "shared:rm_bench?format=rm_bench_diag")):
    examples, _ = sources.load_source(spec)
    results[name] = evaluate(scorer, subsample(examples, args.ood_limit))
  results["train_final"] = {k: final[k] for k in ("loss", "accuracy") if k in final}
  results["settings"] = vars(args)
  os.makedirs(os.path.join(args.workdir, "eval"), exist_ok=True)
  with open(os.path.join(args.workdir, "eval", "bt_hh.json"), "w") as f:
    json.dump(results, f, indent=2)
  print("| set | n | accuracy | length-only baseline | acc. when chosen longer | when shorter |")
  print("|---|---|---|---|---|---|")
  for name in ("in_distribution_hh_rlhf", "llmbar", "rm_bench"):
    r = results[name]
    print(f"| {name} | {r['n']} | {r['accuracy']:.3f} | {r['length_baseline_accuracy']:.3f} | "
          f"{r['accuracy_when_chosen_longer']:.3f} | {r['accuracy_when_chosen_shorter']:.3f} |")
  print(json.dumps(results))


if __name__ == "__main__":
  main()
