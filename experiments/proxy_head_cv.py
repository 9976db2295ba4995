"""How long to train the proxy ensemble's heads in `experiments/ppo_overopt.py --policy smollm2`:
k-fold cross-validation on the proxy's own (noisy) label pairs, never on its clean eval pairs.

The proxy is K linear heads on frozen SmolLM2 last-token features (`ensemble.cached_embeddings`,
`rmjax.train.head_fit.train_heads`); with ~360 pairs in 576 dimensions its default 400 steps at lr
3e-3 fit the noise (train loss 0.04, clean eval accuracy 0.53). This reads the label pairs a
ppo_overopt workdir sampled (`<workdir>/proxy/proxy_data/train.jsonl`), their features from the
feature cache the proxy filled (computed if missing), and prints per (lr, steps) the mean held-out
accuracy and BT loss of the members' mean over `--folds` folds, then the choice: the highest
held-out accuracy, ties to the lower loss (the rule E-b's PPO illustration used).

  python -m experiments.proxy_head_cv --workdir runs/ppo_smol [--folds 5]
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

LRS, STEPS = (1e-4, 3e-4, 1e-3, 3e-3), (10, 25, 50, 100, 200, 400)


def label_features(workdir: str) -> tuple:
  """(chosen, rejected) features [N, D] of the proxy's label pairs, as the proxy trained on them."""
  from configs import ppo as ppo_config
  from rmjax.data.batching import tokenize_pairs
  from rmjax.data.specs import train_eval_pairs
  from rmjax.data.tokenize import ChatEncoder
  from rmjax.tasks import common, overopt
  from rmjax.tasks.pairs import pair_features
  data = os.path.join(workdir, "proxy", "proxy_data")
  c = ppo_config.get_config("smollm2,reward=proxy")
  pc = overopt._proxy_config(c.proxy, os.path.join(data, "train.jsonl"),  # noqa: SLF001
                             os.path.join(data, "eval.jsonl"))
  pc.train.progress = False
  cfg, backbone = common.backbone(pc)
  train_ex, _, _ = train_eval_pairs(pc)
  tokd, _ = tokenize_pairs(train_ex, ChatEncoder(common.tokenizer(pc), pc.data.max_length),
                           on_overlong="truncate")
  f = pair_features(pc, cfg, backbone, tokd, "train")
  return f["chosen"], f["rejected"]


def cv_grid(c, r, folds: int = 5, members: int = 5, seed: int = 0) -> list:
  """[{lr, steps, accuracy, loss}] of the members' mean on held-out folds (ties count 0.5)."""
  from rmjax.train.head_fit import head_scores, train_heads
  fold = np.random.default_rng(seed).permutation(len(c)) % folds
  rows = []
  for lr in LRS:
    for steps in STEPS:
      acc, loss = [], []
      for k in range(folds):
        tr, va = fold != k, fold == k
        h, _ = train_heads(c[tr], r[tr], members, steps=steps, lr=lr, seed=seed)
        m = (np.asarray(head_scores(h, c[va])) - np.asarray(head_scores(h, r[va]))).mean(1)
        acc.append(np.mean((m > 0) + 0.5 * (m == 0)))
        loss.append(np.mean(np.logaddexp(0, -m)))
      rows.append({"lr": lr, "steps": steps, "accuracy": round(float(np.mean(acc)), 4),
                   "loss": round(float(np.mean(loss)), 4)})
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="an experiments/ppo_overopt.py workdir")
  p.add_argument("--folds", type=int, default=5)
  a = p.parse_args(argv)
  pairs = os.path.join(a.workdir, "proxy", "proxy_data", "train.jsonl")
  if not os.path.exists(pairs):
    p.error(f"{pairs}: no proxy label pairs (run experiments/ppo_overopt.py --policy smollm2 "
            f"--workdir {a.workdir} first)")
  c, r = label_features(a.workdir)
  rows = cv_grid(c, r, a.folds)
  for row in rows:
    print(row)
  best = max(rows, key=lambda x: (x["accuracy"], -x["loss"]))
  print(json.dumps({"pairs": len(c), "folds": a.folds, "grid": rows, "chosen": best}))
  return best


if __name__ == "__main__":
  main()
