"""TRL with rmjax (a manual check, not collected by pytest: TRL lives in its own environment):

  1. `trl.RewardTrainer` loads an rmjax export (`rmjax convert --to hf:EXPORT`) and trains a step;
  2. `trl.GRPOTrainer` runs a step with `rmjax.client.RewardClient` as its reward function
     against a live `rmjax serve` (any small causal LM as the policy, e.g.
     `rmjax convert --from tiny --to hf:POLICY`).

  python -m venv /tmp/trlenv && /tmp/trlenv/bin/pip install torch==2.13.0 trl
  rmjax serve --workdir W --port 8123 &
  PYTHONPATH=. /tmp/trlenv/bin/python tests/trl_compat.py --server http://127.0.0.1:8123 \\
      --export EXPORT --policy POLICY

Prints one JSON object last (TRL version, the losses and the logged rewards); exit 1 on failure.
"""

import argparse
import json
import math
import sys
import tempfile

import torch
import trl
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rmjax.client import RewardClient

PAIRS = [("What is 2+2?", "4", "5"), ("Say hi.", "Hello!", "No."), ("Name a color.", "Blue.", "x"),
         ("Capital of France?", "Paris.", "Rome.")]


def reward_trainer_step(export: str, out: str) -> dict:
  tok = AutoTokenizer.from_pretrained(export)
  model = AutoModelForSequenceClassification.from_pretrained(export)
  data = Dataset.from_list([{"chosen": [{"role": "user", "content": p}, {"role": "assistant", "content": c}],
                             "rejected": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]}
                            for p, c, r in PAIRS * 2])
  args = trl.RewardConfig(output_dir=out, max_steps=1, per_device_train_batch_size=4, report_to=[],
                          logging_steps=1, save_strategy="no", use_cpu=True)
  trainer = trl.RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
  result = trainer.train()
  return {"loss": result.training_loss}


def grpo_step(policy: str, server: str, out: str) -> dict:
  client = RewardClient(server)
  data = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p, _, _ in PAIRS])
  args = trl.GRPOConfig(output_dir=out, max_steps=1, per_device_train_batch_size=4,
                        num_generations=2, max_completion_length=8, report_to=[], logging_steps=1,
                        save_strategy="no", use_cpu=True)
  model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
  trainer = trl.GRPOTrainer(model=model, reward_funcs=client, args=args, train_dataset=data,
                            processing_class=AutoTokenizer.from_pretrained(policy))
  trainer.train()
  logged = {k: v for rec in trainer.state.log_history for k, v in rec.items() if "reward" in k}
  return {"logged": logged, "loss": trainer.state.log_history[0].get("loss")}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--server", required=True)
  p.add_argument("--export", required=True)
  p.add_argument("--policy", required=True)
  args = p.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    rt = reward_trainer_step(args.export, f"{tmp}/rt")
    grpo = grpo_step(args.policy, args.server, f"{tmp}/grpo")
  key = "rewards/rmjax_reward/mean"
  ok = math.isfinite(rt["loss"]) and key in grpo["logged"] and math.isfinite(grpo["logged"][key])
  print(json.dumps({"ok": ok, "trl": trl.__version__, "reward_trainer": rt, "grpo": grpo}))
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
