"""Uncertainty-penalised PPO: `rmjax train --config configs/ppo.py:tiny --workdir W`.

tiny: a tiny random Llama over the synthetic task's word vocabulary learns the KNOWN synthetic
gold reward (seconds per step on CPU). smollm2: SmolLM2-135M-Instruct on MT-Bench prompts with
the same known reward on its text (a pipeline check at real scale).
Args: reward=gold|token_count|proxy, uncertainty=none|reward|variance_kl|both, agg=mean|uwo|lcb|wco,
kl=<coef>, norm=none|frozen|running, smoke (seconds-long run for tests).
Reward 'proxy' is the over-optimisation setup: a 5-member proxy ensemble trained on noisy
gold labels (configs/overopt.py), gold logged beside it. tiny: the tiny proxy; smollm2: the
policy answers the synthetic prompts and the proxy is 5 heads on frozen SmolLM2 embeddings.
`rl_config` is shared with configs/grpo.py (the same learner and keys, in `config.<task>`).
"""

import ml_collections as mlc

from configs import common

ARGS = dict(reward="gold", uncertainty="none", agg="mean", kl=0.05, norm="none", smoke=False,
            members=5, noise=0.25)


def get_config(arg=None):
  return rl_config(common.parse_arg(arg, **ARGS), "ppo")


def rl_config(arg, task: str):
  """The RL learner's config for `task`, its settings in `c[task]`: PPO's defaults (GAE with a
  value model, the KL in the reward); configs/grpo.py changes the estimator and the KL."""
  c = common.base_config(arg, task)
  c.model.spec = "words" if arg.variant == "tiny" else c.model.spec
  c.model.hidden = 64
  c.model.layers = 2
  # advantage: an ADVANTAGES name (gae | grpo | rloo) or a plug-in's 'module:name'; group_size:
  # samples per prompt (>= 2 for grpo / rloo); kl_in: reward (PPO, RLOO) | loss (GRPO)
  c[task] = pc = mlc.ConfigDict(dict(
      advantage="gae", group_size=1, kl_in="reward",
      prompts="synthetic:512", eval_prompts="synthetic:64", prompt_len=8, max_new_tokens=8,
      temperature=1.0, top_p=1.0, rollout_batch=32, minibatches=2, epochs=2,
      policy_loss="clip", clip=0.2, dual_clip=3.0, vf_clip=0.2, vf_coef=0.5, ent_coef=0.0,
      gamma=1.0, lam=0.95, whiten=True,
      kl_coef=arg.kl, kl_estimator="k1", kl_clamp=False, adaptive_kl=False, kl_target=6.0,
      kl_horizon=10000.0,
      reward_norm=arg.norm, uncertainty=arg.uncertainty, aggregate=arg.agg, uwo_lam=0.5,
      lcb_beta=1.0, w_min=0.1, w_max=10.0,
      value_init="policy", value_lr=0.0))
  c.reward = mlc.ConfigDict(dict(kind=arg.reward, token_id=5, log_gold=True, proxy_dir=""))
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 0
  c.optim.schedule = "constant"
  c.optim.clip_norm = 1.0
  c.train.steps = 60
  c.train.log_every = 1
  c.train.eval_every = 20
  c.train.checkpoint_every = 20
  c.train.keep_checkpoints = 2
  if arg.variant == "smollm2":
    pc.prompts = "shared:mt_bench"
    pc.eval_prompts = "shared:alpaca_eval_prompts:16"
    pc.prompt_len = 128
    pc.max_new_tokens = 48
    pc.rollout_batch = 8
    pc.minibatches = 2
    pc.temperature = 0.7
    pc.top_p = 0.9
    c.optim.lr = 1e-6
    c.train.steps = 20
    c.train.eval_every = 10
    c.train.checkpoint_every = 10
  if arg.reward == "proxy":
    from configs import overopt
    size = "smollm2" if arg.variant == "smollm2" else "tiny"
    c.proxy = overopt.get_config(f"{size},members={arg.members},noise={arg.noise}"
                                 + (",smoke" if arg.smoke else ""))
    if arg.variant == "smollm2":
      # over-optimisation at SmolLM2 scale: the policy answers the synthetic prompts the proxy
      # (5 heads on frozen SmolLM2 embeddings) was labelled on, and the proxy's label pairs are
      # sampled from the reference policy with the PPO sampling settings
      pc.prompts, pc.eval_prompts, pc.prompt_len = "synthetic:512", "", 48
      o = c.proxy.overopt
      o.max_new_tokens, o.temperature, o.top_p = pc.max_new_tokens, pc.temperature, pc.top_p
  if arg.smoke:
    pc.prompts, pc.eval_prompts = "synthetic:64", "synthetic:16"
    pc.rollout_batch = 16
    c.train.steps = 4
    c.train.eval_every = c.train.checkpoint_every = 2
    c.train.progress = False
    c.train.tensorboard = False
    c.train.async_checkpoint = False
  return c
