"""Gold-RM over-optimisation study (ALGORITHMS.md 5.2, Coste et al.): `rmjax train --config
configs/overopt.py:tiny`.

1. A base policy samples two responses for each of `label_prompts` prompts; the gold reward
   labels each pair (chosen = higher gold), optionally flipping `label_noise` of the labels.
2. A proxy ensemble (K members, `rmjax.tasks.ensemble`) trains on those labels: through the
   generic loop (full backbone + K heads), or on cached frozen-backbone embeddings
   (`ensemble.cached_embeddings`, the CPU path for SmolLM2 scale).
3. The base policy samples a pool of `pool` responses for each of `bon_prompts` new prompts; the
   proxy members and the gold reward score every sample.
4. Best-of-n curves (unbiased and nested estimators, `rmjax.rl.best_of_n`) of proxy and gold vs
   sqrt(KL_bon) for: single member (member 0), mean, UWO, WCO, LCB (members standardised on the
   pool, `rmjax.rl.rewards`). Written to <workdir>/eval/overopt.{json,png}.

Gold: 'synthetic' (the known `rmjax.data.synthetic.gold_reward`, which scores any text).
Policy: 'synthetic' (the built-in response sampler: a base distribution whose samples the gold
reward can tell apart -- a random tiny LM would only emit bytes) or 'lm' (`rmjax.inference.generate`
from the config's model spec, e.g. SmolLM2-135M-Instruct).
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections as mlc
import numpy as np

from rmjax import checkpoints
from rmjax.checkpoints.workdir import write_json_atomic
from rmjax.data import synthetic
from rmjax.data.pairs import make_pair, write_pairs
from rmjax.errors import ConfigError
from rmjax.inference.generate import SamplingConfig, generate_text
from rmjax.inference.scorer import Scorer
from rmjax.rl import best_of_n, rewards
from rmjax.tasks import ensemble
from rmjax.tasks.spec import TaskSpec

POLICIES = ("synthetic", "lm")
GOLDS = ("synthetic",)


def _check(o):
  if o.policy not in POLICIES:
    raise ConfigError(f"overopt.policy must be one of {', '.join(POLICIES)}, got {o.policy!r}")
  if o.gold not in GOLDS:
    raise ConfigError(f"overopt.gold must be one of {', '.join(GOLDS)}, got {o.gold!r}")
  if not 0.0 <= o.label_noise < 0.5:
    raise ConfigError(f"overopt.label_noise must be in [0, 0.5), got {o.label_noise}")
  if o.pool < 2:
    raise ConfigError(f"overopt.pool must be >= 2, got {o.pool}")


def gold_score(prompt: str, response: str) -> float:
  return synthetic.gold_reward(prompt, response)


def sample_responses(config, prompts, per_prompt: int, seed: int) -> list:
  """[len(prompts)][per_prompt] response strings from the base policy."""
  o = config.overopt
  if o.policy == "synthetic":
    rng = np.random.default_rng([seed, 3])
    return [[synthetic.sample_response(rng, synthetic.parse_prompt(p)[1]) for _ in range(per_prompt)]
            for p in prompts]
  cfg, params = checkpoints.load_pretrained(config.model.spec, seed=config.seed)
  tok = checkpoints.load_tokenizer(config.model.tokenizer or config.model.spec)
  sampling = SamplingConfig(max_new_tokens=o.max_new_tokens, temperature=o.temperature, top_p=o.top_p)
  flat = [p for p in prompts for _ in range(per_prompt)]
  outs = generate_text(params, cfg, tok, flat, sampling, jax.random.PRNGKey(seed),
                       batch_size=o.generate_batch_size, progress=config.train.progress)
  texts = [r["text"].strip() or "." for r in outs]
  return [texts[i * per_prompt:(i + 1) * per_prompt] for i in range(len(prompts))]


def label_pairs(prompts, responses, noise: float, seed: int) -> tuple[list, dict]:
  """Gold-labelled PairExamples from two responses per prompt (ties dropped), `noise` flipped."""
  rng = np.random.default_rng([seed, 4])
  out, flipped, ties = [], 0, 0
  for p, (a, b) in zip(prompts, responses):
    ga, gb = gold_score(p, a), gold_score(p, b)
    if ga == gb or a == b:
      ties += 1
      continue
    chosen, rejected = (a, b) if ga > gb else (b, a)
    if rng.random() < noise:
      chosen, rejected = rejected, chosen
      flipped += 1
    out.append(make_pair(p, chosen, rejected, subset=synthetic.parse_prompt(p)[0],
                         path="overopt", line=len(out) + 1))
  return out, {"pairs": len(out), "flipped": flipped, "ties_dropped": ties}


def _proxy_config(config, train_path: str, eval_path: str) -> mlc.ConfigDict:
  c = mlc.ConfigDict(config.to_dict())
  c.task = "ensemble"
  c.data.source = f"json:{train_path}"
  c.data.eval_source = f"json:{eval_path}"
  return c


def train_proxy(config, workdir: str, train_path: str, eval_path: str):
  """Train the proxy ensemble (the ensemble task, on its own workdir `workdir/proxy`: resumable,
  cached-feature fast path when `ensemble.cached_embeddings`); returns
  (score_fn(prompts, responses) -> members [n, K], info)."""
  pc = _proxy_config(config, train_path, eval_path)
  proxy_dir = os.path.join(workdir, "proxy")
  final = ensemble.SPEC.train(pc, proxy_dir)
  info = {k: final[k] for k in ("loss", "eval_accuracy", "eval_unc_auroc_std_wrong") if k in final}
  info["path"] = "cached_embeddings" if pc.ensemble.cached_embeddings else "train_loop"
  scorer = Scorer(proxy_dir, ensemble.SPEC, batch_size=pc.train.batch_size)

  def score_fn(prompts, responses):
    return scorer.score(list(prompts), list(responses), progress=False)["members"]
  return score_fn, info


def run(config, workdir: str) -> dict:
  o = config.overopt
  _check(o)
  os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
  write_json_atomic(os.path.join(workdir, "config.json"), None,
                    text=config.to_json_best_effort(indent=2))
  times = {}
  t0 = time.perf_counter()
  # 1. gold-labelled pairs from the base policy
  label_prompts = [r["prompt"] for r in synthetic.make_prompts(o.label_prompts + o.eval_prompts,
                                                               seed=config.seed)]
  resp = sample_responses(config, label_prompts, 2, seed=config.seed)
  pairs, label_stats = label_pairs(label_prompts[:o.label_prompts], resp[:o.label_prompts],
                                   o.label_noise, config.seed)
  eval_pairs, _ = label_pairs(label_prompts[o.label_prompts:], resp[o.label_prompts:], 0.0,
                              config.seed + 1)
  train_path = os.path.join(workdir, "gold_pairs.jsonl")
  eval_path = os.path.join(workdir, "gold_pairs_eval.jsonl")
  write_pairs(train_path, pairs)
  write_pairs(eval_path, eval_pairs)
  times["label_s"] = time.perf_counter() - t0
  # 2. proxy ensemble
  t0 = time.perf_counter()
  score_fn, proxy_info = train_proxy(config, workdir, train_path, eval_path)
  times["proxy_train_s"] = time.perf_counter() - t0
  # 3. best-of-n pool: proxy members and gold on every sample
  t0 = time.perf_counter()
  bon_prompts = [r["prompt"] for r in synthetic.make_prompts(o.bon_prompts, seed=config.seed + 100)]
  pool = sample_responses(config, bon_prompts, o.pool, seed=config.seed + 100)
  flat_p = [p for p, rs in zip(bon_prompts, pool) for _ in rs]
  flat_r = [r for rs in pool for r in rs]
  members = score_fn(flat_p, flat_r).reshape(len(bon_prompts), o.pool, -1)   # [M, N, K]
  gold = np.array([gold_score(p, r) for p, r in zip(flat_p, flat_r)]).reshape(len(bon_prompts), o.pool)
  times["pool_score_s"] = time.perf_counter() - t0
  np.savez(os.path.join(workdir, "eval", "overopt_pool.npz"), members=members, gold=gold)
  # 4. curves per aggregator
  ref = members.reshape(-1, members.shape[-1]) if o.standardize else None
  proxies = rewards.aggregate_all(members, methods=tuple(o.aggregators), reference=ref, lam=o.lam,
                                  beta=o.beta, std=o.std)
  curves = best_of_n.bon_curves(proxies, gold)
  curves.update(label_stats=label_stats, proxy=proxy_info, label_noise=o.label_noise,
                policy=o.policy, gold_source=o.gold, members=int(members.shape[-1]),
                gold_base_mean=float(gold.mean()), gold_oracle_best=float(gold.max(axis=1).mean()),
                member_corr_with_gold=[float(np.corrcoef(members[..., k].ravel(), gold.ravel())[0, 1])
                                       for k in range(members.shape[-1])],
                times=times)
  paths = best_of_n.save_curves(curves, os.path.join(workdir, "eval"), "overopt",
                                title=f"best-of-n, {o.policy} policy, label noise {o.label_noise}")
  summary = {name: {"gold_at_max_n": c["gold"][-1], "gold_peak": max(c["gold"]),
                    "gold_final_minus_max": c["gold_final_minus_max"]}
             for name, c in curves["curves"].items()}
  return {"curves": paths, "summary": summary, "proxy": proxy_info, "labels": label_stats,
          "max_kl": curves["kl"][-1], "times": times}


SPEC = TaskSpec(name="overopt", run=run)
