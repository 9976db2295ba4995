"""Over-optimisation under PPO (ALGORITHMS.md 2.5/2.7, 5.2): gold and proxy reward vs KL for
vanilla PPO on the mean of a proxy ensemble and for uncertainty-penalised variants.

One proxy ensemble, trained on gold-labelled pairs (25% label noise) of the base policy, is
shared by all runs (cached in <workdir>/proxy); each PPO run starts from the same policy.
  --policy tiny     configs/ppo.py:tiny: tiny word-level policy, tiny byte-level proxy
  --policy smollm2  configs/ppo.py:smollm2: SmolLM2-135M-Instruct policy on the synthetic prompts;
                    proxy = 5 heads on frozen SmolLM2 embeddings of its own samples, the reward
                    fn embeds prompt + response with the frozen backbone and applies the heads
Gold is `rmjax.data.synthetic.gold_reward` of the decoded rollouts. Every rollout sample is kept
(prompt, response, gold, member scores), so the end of each run is read with intervals: gold and
the paper's risk (a sample's gold below the base policy's mean gold on its prompt; the base
policy's samples are the proxy's label samples) over the last `--window` steps, bootstrapped over
samples, and the difference to the first variant. A variant whose result is in its workdir is
read back, not rerun (an interrupted variant restarts). Writes <workdir>/ppo_overopt.{json,png}
(per-step curves, gold/proxy/ensemble std vs sqrt(KL)) and copies them to --results; prints the
summary.

  python experiments/ppo_overopt.py --workdir /tmp/ppo_overopt --steps 40 [--kl 0.01]
  HF_HUB_OFFLINE=1 python experiments/ppo_overopt.py --policy smollm2 --workdir runs/ppo_smol \
      --variants vanilla_mean,variance_kl --steps 30 --label_prompts 400 --eval_prompts 64 \
      --rollout_batch 16 --max_new_tokens 24 --lr 3e-6 --kl 0.01 \
      --results experiments/results/ppo_overopt
"""

import argparse
import json
import os
import shutil
import time

import numpy as np

VARIANTS = {  # name -> configs/ppo.py args
    "vanilla_mean": "uncertainty=none",
    "uwo": "uncertainty=reward,agg=uwo",
    "wco": "uncertainty=reward,agg=wco",
    "variance_kl": "uncertainty=variance_kl",
}
CURVES = ("step", "kl", "reward_mean", "score_mean", "gold_mean", "ensemble_std",
          "response_length", "steps_per_s")


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
  if a.head_lr is not None:
    c.proxy.ensemble.head_lr = a.head_lr
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


def _recording(build, log: list):
  """`ppo_setup.build` whose reward fn also appends every rollout's samples to `log` (one list
  of {prompt, response, gold, members} per call), so a run is read per sample, not per batch."""
  from rmjax.data.synthetic import gold_reward

  def wrapped(config, workdir, mesh):
    s = build(config, workdir, mesh)
    fn = s.reward_fn

    def reward_fn(prompts, responses, *rest):
      reward, members = fn(prompts, responses, *rest)
      m = np.zeros((len(prompts), 0)) if members is None else np.asarray(members)
      log.append([{"prompt": p, "response": r, "gold": gold_reward(p, r),
                   "members": [float(x) for x in row]}
                  for p, r, row in zip(prompts, responses, m)])
      return reward, members
    s.reward_fn = reward_fn
    return s
  return wrapped


def base_means(proxy_dir: str) -> tuple:
  """({prompt: mean gold of the base policy's samples there}, every base sample's gold): the base
  policy's samples are the proxy's label samples, the reference the runs start from."""
  from rmjax.data.synthetic import gold_reward
  cached = json.load(open(os.path.join(proxy_dir, "proxy_data", "responses.json")))
  golds = {}
  for p, rs in zip(cached["key"]["prompts"], cached["responses"]):
    golds.setdefault(p, []).extend(gold_reward(p, r) for r in rs)
  return {p: float(np.mean(g)) for p, g in golds.items()}, np.concatenate(list(golds.values()))


def _boot(values, n_boot=2000, seed=0):
  from rmjax.eval.stats import bootstrap_ci
  return bootstrap_ci(np.asarray(values, np.float64), n_boot=n_boot, seed=seed)


def _boot_diff(a, b, n_boot=2000, seed=0) -> dict:
  """mean(a) - mean(b), independent samples each resampled (unpaired percentile bootstrap)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  rng = np.random.default_rng(seed)
  d = (a[rng.integers(0, len(a), (n_boot, len(a)))].mean(1)
       - b[rng.integers(0, len(b), (n_boot, len(b)))].mean(1))
  lo, hi = np.percentile(d, [2.5, 97.5])
  return {"value": float(a.mean() - b.mean()), "lo": float(lo), "hi": float(hi)}


def run_variant(name, a, wd, proxy_dir) -> dict:
  """Train one variant (or read its finished result back): curves + every rollout sample."""
  from configs import ppo as ppo_config
  from rmjax.tasks import ppo, ppo_setup
  done = os.path.join(wd, "variant.json")
  if os.path.exists(done):
    return json.load(open(done))
  shutil.rmtree(wd, ignore_errors=True)          # an interrupted variant restarts whole
  c = ppo_config.get_config(f"{a.policy},reward=proxy,kl={a.kl},{VARIANTS[name]}"
                            + (",smoke" if a.smoke else ""))
  _override(c, a)
  c.reward.proxy_dir = proxy_dir
  c.train.steps, c.train.eval_every, c.train.checkpoint_every = a.steps, 0, a.steps
  c.train.progress = c.train.tensorboard = False
  log = []
  build = ppo_setup.build
  ppo_setup.build = _recording(build, log)
  t0 = time.perf_counter()
  try:
    ppo.run(c, wd)
  finally:
    ppo_setup.build = build
  rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
  out = {"curves": {k: [r.get(k) for r in rows] for k in CURVES}, "rollouts": log,
         "run_s": time.perf_counter() - t0}
  tmp = done + ".tmp"
  with open(tmp, "w") as f:
    json.dump(out, f)
  os.replace(tmp, done)
  return out


def summarise(runs: dict, means: dict, window: int) -> dict:
  """Per variant: start / final (last `window` steps) of the batch curves, and over the last
  window's samples the gold and risk with bootstrap CIs; differences to the first variant."""
  summary, finals = {}, {}
  for name, r in runs.items():
    cv = r["curves"]
    first = lambda k: float(np.mean(cv[k][:3]))
    last = lambda k: float(np.mean(cv[k][-3:]))
    samples = [s for step in r["rollouts"][-window:] for s in step]
    start = [s for step in r["rollouts"][:3] for s in step]
    words = lambda xs: float(np.mean([len(x["response"].split()) for x in xs]))  # noqa: E731
    gold = np.array([s["gold"] for s in samples])
    risk = np.array([s["gold"] < means[s["prompt"]] for s in samples], np.float64)
    finals[name] = gold, risk
    summary[name] = {
        "gold_start": first("gold_mean"), "gold_peak": float(np.max(cv["gold_mean"])),
        "gold_peak_step": int(np.argmax(cv["gold_mean"])) + 1, "proxy_start": first("reward_mean"),
        "proxy_final": last("reward_mean"), "kl_max": float(np.max(cv["kl"])),
        "kl_final": last("kl"), "length_start": first("response_length"),
        "length_final": last("response_length"),
        "ensemble_std_growth": last("ensemble_std") / max(first("ensemble_std"), 1e-9),
        "words_start": words(start),
        "final_window": {"steps": window, "n": int(len(gold)), "gold": _boot(gold),
                         "risk": _boot(risk), "words": words(samples),
                         # answers with no space at all (emoji strings, one unbroken token run):
                         # the word-count gold's cheapest optimum
                         "no_space": int(sum(" " not in x["response"].strip() for x in samples))}}
  ref = next(iter(finals))
  for name, (gold, risk) in finals.items():
    if name != ref:
      summary[name]["final_window"][f"gold_minus_{ref}"] = _boot_diff(gold, finals[ref][0])
      summary[name]["final_window"][f"risk_minus_{ref}"] = _boot_diff(risk, finals[ref][1])
  return summary


def plot(runs: dict, base: dict, path: str, title: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(14, 4))
  for name, r in runs.items():
    cv = r["curves"]
    d = np.sqrt(np.maximum(cv["kl"], 0))
    for ax, k in zip(axes, ("gold_mean", "reward_mean", "ensemble_std")):
      ax.plot(d, cv[k], ".-", label=name)
  axes[0].axhline(base["gold"]["value"], color="grey", ls="--", lw=1, label="base policy")
  for ax, t in zip(axes, ("gold reward (rollout batch)", "proxy reward (mean of members)",
                          "ensemble std (rollout batch)")):
    ax.set_xlabel("sqrt(KL(pi || pi_ref)) [nats^0.5]")
    ax.set_title(t)
    ax.legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--steps", type=int, default=40)
  ap.add_argument("--kl", type=float, default=0.01)
  ap.add_argument("--variants", default=",".join(VARIANTS))
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--policy", default="tiny", choices=("tiny", "smollm2"))
  ap.add_argument("--window", type=int, default=10,
                  help="final steps read with intervals (E-b: the last 10 iterations)")
  ap.add_argument("--results", help="also copy ppo_overopt.{json,png} here")
  # size overrides (default: the config's); --spec swaps the model for a smoke test ('tiny')
  for flag in ("label_prompts", "eval_prompts", "rollout_batch", "max_new_tokens", "head_steps"):
    ap.add_argument(f"--{flag}", type=int)
  ap.add_argument("--lr", type=float)
  ap.add_argument("--head_lr", type=float)
  ap.add_argument("--spec")
  ap.add_argument("--smoke", action="store_true", help="the config's seconds-long size (tests)")
  a = ap.parse_args(argv)
  unknown = [v for v in a.variants.split(",") if v not in VARIANTS]
  if unknown:
    ap.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
  proxy_dir = os.path.join(a.workdir, "proxy")
  runs = {name: run_variant(name, a, os.path.join(a.workdir, name), proxy_dir)
          for name in a.variants.split(",")}
  means, base_gold = base_means(proxy_dir)
  base = {"n": int(len(base_gold)), "gold": _boot(base_gold), "prompts": len(means)}
  summary = summarise(runs, means, min(a.window, a.steps))
  proxy = json.load(open(os.path.join(proxy_dir, "proxy_info.json")))
  out = {"summary": summary, "base_policy": base, "proxy": proxy,
         "run_s": {k: r["run_s"] for k, r in runs.items()}, "args": vars(a),
         "curves": {k: r["curves"] for k, r in runs.items()},
         "last_rollout": {k: r["rollouts"][-1][:8] for k, r in runs.items()}}
  with open(os.path.join(a.workdir, "ppo_overopt.json"), "w") as f:
    json.dump(out, f, indent=1)
  plot(runs, base, os.path.join(a.workdir, "ppo_overopt.png"),
       f"PPO against a proxy ensemble, {a.policy} policy")
  if a.results:
    os.makedirs(a.results, exist_ok=True)
    for ext in ("json", "png"):
      shutil.copy(os.path.join(a.workdir, f"ppo_overopt.{ext}"), a.results)
  print(json.dumps({"summary": summary, "base_policy": base, "proxy": proxy,
                    "run_s": out["run_s"]}, indent=1))
  return out


if __name__ == "__main__":
  main()
