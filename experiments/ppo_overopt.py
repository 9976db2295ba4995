"""Over-optimisation under PPO (ALGORITHMS.md 2.5/2.7, 5.2): gold and proxy reward vs KL for
vanilla PPO on the mean of a proxy ensemble and for uncertainty-penalised variants.

One proxy ensemble (configs/overopt.py tiny: 5 members, 25% label noise, trained on gold-labelled
pairs of the synthetic base policy) is shared by all runs; each PPO run starts from the same tiny
word-level policy. Writes <workdir>/ppo_overopt.{json,png}; prints the JSON summary.

  python experiments/ppo_overopt.py --workdir /tmp/ppo_overopt --steps 40 [--kl 0.01]
"""

import argparse
import json
import os

import numpy as np

VARIANTS = {  # name -> configs/ppo.py args
    "vanilla_mean": "uncertainty=none",
    "uwo": "uncertainty=reward,agg=uwo",
    "wco": "uncertainty=reward,agg=wco",
    "variance_kl": "uncertainty=variance_kl",
}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--steps", type=int, default=40)
  ap.add_argument("--kl", type=float, default=0.01)
  ap.add_argument("--variants", default=",".join(VARIANTS))
  ap.add_argument("--seed", type=int, default=0)
  a = ap.parse_args()
  from configs import ppo as ppo_config
  from rmjax.train import ppo
  curves = {}
  for name in a.variants.split(","):
    c = ppo_config.get_config(f"tiny,reward=proxy,kl={a.kl},{VARIANTS[name]}")
    c.seed = a.seed
    c.reward.proxy_dir = os.path.join(a.workdir, "proxy")
    c.train.steps, c.train.eval_every, c.train.checkpoint_every = a.steps, 0, a.steps
    c.train.progress = c.train.tensorboard = False
    wd = os.path.join(a.workdir, name)
    ppo.run(c, wd)
    rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
    curves[name] = {k: [r[k] for r in rows] for k in ("step", "kl", "reward_mean", "gold_mean",
                                                       "ensemble_std")}
  summary = {}
  for name, cv in curves.items():
    g = np.array(cv["gold_mean"])
    summary[name] = {"gold_start": float(np.mean(g[:3])), "gold_peak": float(g.max()),
                     "gold_final": float(np.mean(g[-3:])), "proxy_final": float(np.mean(cv["reward_mean"][-3:])),
                     "kl_final": float(np.mean(cv["kl"][-3:])),
                     "ensemble_std_growth": float(np.mean(cv["ensemble_std"][-3:]) /
                                                  max(np.mean(cv["ensemble_std"][:3]), 1e-9))}
  with open(os.path.join(a.workdir, "ppo_overopt.json"), "w") as f:
    json.dump({"curves": curves, "summary": summary, "args": vars(a)}, f)
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for name, cv in curves.items():
    d = np.sqrt(np.maximum(cv["kl"], 0))
    axes[0].plot(d, cv["gold_mean"], ".-", label=name)
    axes[1].plot(d, cv["reward_mean"], ".-", label=name)
  for ax, t in zip(axes, ("gold reward", "proxy reward (optimised)")):
    ax.set_xlabel("sqrt(KL(pi || pi_ref)) [nats^0.5]")
    ax.set_title(t)
    ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(a.workdir, "ppo_overopt.png"), dpi=100)
  print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  main()
