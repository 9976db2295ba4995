"""LoRA vs full fine-tuning of a BT reward model, measured on real `rmjax train` runs.

Each arm is the CLI's own training run (`configs/bt.py:smollm2`: the SmolLM2-135M architecture,
here with random weights `model.spec=smollm2-135m-config` and the SmolLM2 tokenizer; hh-rlhf
pairs from ../shared/data, else the synthetic set), one length bucket (`--seq`) so every step has
the same shape, `--pairs` pairs per step, no eval, run in its own process:
  full   every weight trained (AdamW state for all 135M)
  lora   `model.lora.rank=--rank` on q/k/v/o (adapters + head trained)
Step time is the median of the logged per-window `steps_per_s` after the first window (which
holds the compile); peak RSS is the child process's own (`os.wait4`). The same logged figures
are what any `rmjax train` run prints, so this also checks that the loop's logged throughput
matches the benchmark of the step (`experiments/benchmarks/train_step.py`) at that shape.
Prints one JSON object last.

  python -m experiments.benchmarks.lora [--steps 5] [--pairs 4] [--seq 256] [--rank 16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from experiments.benchmarks import _common
from rmjax.data.sources import shared_data_root


def run_arm(workdir: str, args, rank: int) -> dict:
  source = [] if shared_data_root() else ["--config.data.source=synthetic:400",
                                          "--config.data.eval_source="]
  argv = [sys.executable, "-m", "rmjax", "train", "--config=configs/bt.py:smollm2",
          f"--workdir={workdir}", "--config.model.spec=smollm2-135m-config",
          f"--config.train.steps={args.steps}", f"--config.train.batch_size={args.pairs}",
          "--config.train.log_every=1", "--config.train.eval_every=0",
          f"--config.train.checkpoint_every={args.steps}", "--config.train.progress=False",
          "--config.train.tensorboard=False", "--config.train.async_checkpoint=False",
          f"--config.data.max_length={args.seq}", f"--config.data.buckets=({args.seq},)",
          f"--config.model.lora.rank={rank}", f"--config.model.lora.alpha={2 * max(rank, 1)}",
          *source]
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  _, status, usage = os.wait4(proc.pid, 0)
  if status:
    raise SystemExit(f"arm rank={rank} failed: {proc.stderr.read()[-2000:]}")
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if '"steps_per_s"' in line]
  steady = rows[1:] or rows
  step_s = statistics.median(1.0 / r["steps_per_s"] for r in steady)
  return {"step_s": round(step_s, 3),
          "computed_tokens_per_s": round(statistics.median(r["computed_tokens_per_s"] for r in steady), 1),
          "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in steady), 1),
          "first_window_s": round(1.0 / rows[0]["steps_per_s"], 1),
          "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "final_loss": rows[-1]["loss"]}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--pairs", type=int, default=4)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--rank", type=int, default=16)
  args = p.parse_args(argv)
  with tempfile.TemporaryDirectory() as d:
    arms = {"full": run_arm(os.path.join(d, "full"), args, 0),
            "lora": run_arm(os.path.join(d, "lora"), args, args.rank)}
  result = {"benchmark": "lora", "rank": args.rank, "pairs": args.pairs, "seq": args.seq,
            "steps": args.steps, "env": _common.environment(), **arms,
            "lora_step_speedup": round(arms["full"]["step_s"] / arms["lora"]["step_s"], 3),
            "lora_rss_ratio": round(arms["lora"]["peak_rss_mib"] / arms["full"]["peak_rss_mib"], 3)}
  _common.emit(result)
  return result


if __name__ == "__main__":
  main()
