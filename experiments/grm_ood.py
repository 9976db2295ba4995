"""BT vs GRM in and out of distribution (ALGORITHMS.md 4.6 at small scale).

Trains a BT reward model and a GRM (same config, data, seed, head and steps; GRM adds alpha *
L_reg) on the hh-rlhf 90% split of ../shared/data, then evaluates both on the 10% held-out
hh-rlhf pairs (in distribution) and per subset on the OOD sets LLMBar, RM-Bench, Auto-J pairwise,
JudgeBench and PandaLM.

  python -m experiments.grm_ood --workdir runs/grm_ood --variant smollm2 --steps 150 \
      --batch_size 8 --max_length 256 --ood_limit 100 --eval_limit 300      # reduced CPU run
  python -m experiments.grm_ood --workdir /tmp/grm_ood_smoke --variant tiny --steps 5  # smoke

Writes <workdir>/<run>/ (a normal rmjax workdir; `rmjax eval --workdir` works on it too) and
<workdir>/results.json; prints one JSON object last. Re-running resumes finished runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

OOD_SETS = ("llmbar", "rm_bench", "autoj_pairwise_test", "judgebench", "pandalm_testset")


def make_config(variant: str, run: str, args):
  """configs/grm.py with the run's loss; 'bt' is the same config trained by the BT task."""
  from configs import grm as grm_config
  reg = run.split("-", 1)[1] if run.startswith("grm-") else "sft"
  c = grm_config.get_config(f"{variant},reg={reg},alpha={args.alpha}")
  if run == "bt":
    c.task = "bt"
    c.loss.alpha = 0.0
  c.train.steps = args.steps
  c.train.batch_size = args.batch_size
  c.train.eval_every = 0  # evaluated below, identically for every run
  c.train.checkpoint_every = args.steps
  c.train.log_every = max(1, args.steps // 20)
  c.train.progress = False
  c.optim.warmup_steps = max(1, int(0.03 * args.steps))
  if args.lr:
    c.optim.lr = args.lr
  c.data.max_length = args.max_length
  c.data.max_eval_examples = args.eval_limit
  c.seed = args.seed
  return c


def train_run(config, workdir):
  from rmjax import tasks
  t0 = time.time()
  final = tasks.get(config.task).train(config, workdir)
  return final, time.time() - t0


def evaluate_run(config, workdir, args):
  from experiments.grm_eval import WorkdirModel, subsample
  from rmjax.data import load_source
  from rmjax.data import specs
  model = WorkdirModel(workdir)
  _, held_out, _ = specs.train_eval_pairs(config)
  out = {"in_distribution": model.evaluate(held_out, args.eval_batch_size)}
  for name in args.sets:
    examples, _ = load_source(f"shared:{name}")
    out[name] = model.evaluate(subsample(examples, args.ood_limit, args.seed), args.eval_batch_size)
  return out


def summary_table(results):
  sets = ["in_distribution"] + [s for s in OOD_SETS if any(s in r["eval"] for r in results.values())]
  lines = ["| run | " + " | ".join(sets) + " | OOD mean |", "|" + "---|" * (len(sets) + 2)]
  for run, r in results.items():
    accs = [r["eval"][s]["accuracy"] for s in sets if s in r["eval"]]
    ood = accs[1:]
    lines.append(f"| {run} | " + " | ".join(f"{a:.3f}" for a in accs)
                 + f" | {sum(ood) / max(len(ood), 1):.3f} |")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--workdir", required=True)
  p.add_argument("--variant", default="smollm2", choices=("tiny", "smollm2", "llama3-8b"))
  p.add_argument("--runs", default="bt,grm-sft", help="bt and/or grm-<reg> (sft, sft_plain, "
                 "dpo_noref, dpo_ref), comma-separated")
  p.add_argument("--alpha", type=float, default=0.01)
  p.add_argument("--steps", type=int, default=150)
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--eval_batch_size", type=int, default=16)
  p.add_argument("--max_length", type=int, default=256)
  p.add_argument("--lr", type=float, default=0.0, help="0: the variant's default")
  p.add_argument("--eval_limit", type=int, default=300, help="held-out hh-rlhf pairs (0: all)")
  p.add_argument("--ood_limit", type=int, default=100, help="pairs per OOD set (0: all)")
  p.add_argument("--sets", default=",".join(OOD_SETS))
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  args.sets = [s for s in args.sets.split(",") if s]

  from rmjax.data import shared_data_root
  if shared_data_root() is None:
    print(json.dumps({"skipped": "shared data not found (../shared/data or $RMJAX_SHARED_DATA)"}))
    return 0
  results = {}
  for run in args.runs.split(","):
    config = make_config(args.variant, run, args)
    wd = os.path.join(args.workdir, run)
    final, secs = train_run(config, wd)
    results[run] = {"train": {k: v for k, v in final.items() if not isinstance(v, dict)},
                    "train_seconds": secs, "eval": evaluate_run(config, wd, args)}
    print(f"[{run}] " + json.dumps({k: v["accuracy"] for k, v in results[run]["eval"].items()}),
          flush=True)
  out = {"args": vars(args), "results": results, "table": summary_table(results)}
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, "results.json"), "w") as f:
    json.dump(out, f, indent=2, default=float)
  print(out["table"])
  print(json.dumps(out, default=float))
  return 0


if __name__ == "__main__":
  sys.exit(main())
