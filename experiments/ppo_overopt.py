"""Over-optimisation under PPO (ALGORITHMS.md 2.5/2.7, 5.2): gold and proxy reward vs KL for
vanilla PPO on the mean of a proxy ensemble and for uncertainty-penalised variants.

One proxy ensemble, trained on gold-labelled pairs (25% label noise) of the base policy, is
shared by all runs (cached in <workdir>/proxy); each PPO run starts from the same policy.
  --policy tiny     configs/ppo.py:tiny: tiny word-level policy, tiny byte-level proxy
  --policy smollm2  configs/ppo.py:smollm2: SmolLM2-135M-Instruct policy on the synthetic prompts;
                    proxy = 5 heads on frozen SmolLM2 embeddings of its own samples, the reward
                    fn embeds prompt + response with the frozen backbone and applies the heads
Gold is `rmjax.data.synthetic.gold_reward` of the decoded rollouts. Writes
<workdir>/ppo_overopt.{json,png} (per-step curves, gold/proxy vs sqrt(KL)); prints the summary.

  python experiments/ppo_overopt.py --workdir /tmp/ppo_overopt --steps 40 [--kl 0.01]
  HF_HUB_OFFLINE=1 python experiments/ppo_overopt.py --policy smollm2 --workdir /tmp/ppo_smol \
      --variants vanilla_mean,wco --steps 12 --label_prompts 100 --max_new_tokens 24 --lr 1e-5
"""

import argparse
import json
import os
import time

import numpy as np

VARIANTS = {  # name -> configs/ppo.py args
    "vanilla_mean": "uncertainty=none",
    "uwo": "uncertainty=reward,agg=uwo",
    "wco": "uncertainty=reward,agg=wco",
    "variance_kl": "uncertainty=variance_kl",
}


def _override(c, a):
  """Apply the size flags to a configs/ppo.py config (proxy sampling follows the policy's)."""
  c.seed = a.seed
  o = c.proxy.overopt
  if a.label_prompts is not None:
    o.label_prompts = a.label_prompts
  if a.eval_prompts is not None:
    o.eval_prompts = a.eval_prompts
  if a.head_steps is not None:
    c.proxy.ensemble.head_steps = a.head_steps
  if a.rollout_batch is not None:
    c.ppo.rollout_batch = a.rollout_batch
  if a.max_new_tokens is not None:
    c.ppo.max_new_tokens = a.max_new_tokens
    if a.policy == "smollm2":
      o.max_new_tokens = a.max_new_tokens
  if a.lr is not None:
    c.optim.lr = a.lr
  if a.spec:
    c.model.spec = c.model.tokenizer = c.proxy.model.spec = c.proxy.model.tokenizer = a.spec


def _mean_of(curves: dict, part: slice):
  """k -> mean of curves[k][part] (first / last 3 steps of a run)."""
  return lambda k: float(np.mean(curves[k][part]))


def _recording(build, log: list):
  """`ppo_setup.build` whose reward fn also keeps the latest rollout's (prompt, response) pairs,
  so the JSON shows what the policy ended up writing."""
  def wrapped(config, workdir, mesh):
    s = build(config, workdir, mesh)
    fn = s.reward_fn

    def reward_fn(prompts, responses, *rest):
      log[:] = list(zip(prompts, responses))
      return fn(prompts, responses, *rest)
    s.reward_fn = reward_fn
    return s
  return wrapped


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--steps", type=int, default=40)
  ap.add_argument("--kl", type=float, default=0.01)
  ap.add_argument("--variants", default=",".join(VARIANTS))
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--policy", default="tiny", choices=("tiny", "smollm2"))
  # size overrides (default: the config's); --spec swaps the model for a smoke test ('tiny')
  for flag in ("label_prompts", "eval_prompts", "rollout_batch", "max_new_tokens", "head_steps"):
    ap.add_argument(f"--{flag}", type=int)
  ap.add_argument("--lr", type=float)
  ap.add_argument("--spec")
  a = ap.parse_args()
  from configs import ppo as ppo_config
  from rmjax.data.synthetic import gold_reward
  from rmjax.tasks import ppo, ppo_setup
  last = []
  ppo_setup.build = _recording(ppo_setup.build, last)
  curves, times = {}, {}
  for name in a.variants.split(","):
    c = ppo_config.get_config(f"{a.policy},reward=proxy,kl={a.kl},{VARIANTS[name]}")
    _override(c, a)
    c.reward.proxy_dir = os.path.join(a.workdir, "proxy")
    c.train.steps, c.train.eval_every, c.train.checkpoint_every = a.steps, 0, a.steps
    c.train.progress = c.train.tensorboard = False
    wd = os.path.join(a.workdir, name)
    t0 = time.perf_counter()
    ppo.run(c, wd)
    times[name] = time.perf_counter() - t0
    rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
    curves[name] = {k: [r[k] for r in rows] for k in ("step", "kl", "reward_mean", "score_mean",
                                                       "gold_mean", "ensemble_std",
                                                       "response_length", "steps_per_s")}
    curves[name]["last_rollout"] = [(p, r, gold_reward(p, r)) for p, r in last[:8]]
  summary = {}
  for name, cv in curves.items():
    g = np.array(cv["gold_mean"])
    start, final = _mean_of(cv, slice(None, 3)), _mean_of(cv, slice(-3, None))
    summary[name] = {"gold_start": start("gold_mean"), "gold_peak": float(g.max()),
                     "gold_final": final("gold_mean"), "proxy_start": start("reward_mean"),
                     "proxy_final": final("reward_mean"), "kl_final": final("kl"),
                     "length_start": start("response_length"),
                     "length_final": final("response_length"),
                     "ensemble_std_growth": final("ensemble_std") / max(start("ensemble_std"),
                                                                        1e-9)}
  proxy = json.load(open(os.path.join(a.workdir, "proxy", "proxy_info.json")))
  with open(os.path.join(a.workdir, "ppo_overopt.json"), "w") as f:
    json.dump({"curves": curves, "summary": summary, "proxy": proxy, "run_s": times,
               "args": vars(a)}, f)
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for name, cv in curves.items():
    d = np.sqrt(np.maximum(cv["kl"], 0))
    axes[0].plot(d, cv["gold_mean"], ".-", label=name)
    axes[1].plot(d, cv["reward_mean"], ".-", label=name)
  for ax, t in zip(axes, ("gold reward (rollout batch)", "proxy reward (mean of members)")):
    ax.set_xlabel("sqrt(KL(pi || pi_ref)) [nats^0.5]")
    ax.set_title(t)
    ax.legend()
  fig.suptitle(f"PPO against a proxy ensemble, {a.policy} policy")
  fig.tight_layout()
  fig.savefig(os.path.join(a.workdir, "ppo_overopt.png"), dpi=100)
  print(json.dumps({"summary": summary, "proxy": proxy, "run_s": times}, indent=1))


if __name__ == "__main__":
  main()
