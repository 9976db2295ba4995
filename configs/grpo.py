"""GRPO / RLOO (critic-free, G samples per prompt): `rmjax train --config configs/grpo.py:tiny`.

The RL learner and keys of configs/ppo.py, in `config.grpo`, with no value model:
advantage=grpo (Shao et al. 2024: (R - mean_g) / (std_g + eps) over the G samples of a prompt,
the k3 KL to the reference in the loss) or advantage=rloo (Ahmadian et al. 2024: R minus the
mean of the other G - 1 samples, the k1 KL in the reward), or a plug-in's 'module:name'.
Args: those of configs/ppo.py (reward=gold|token_count|proxy, uncertainty=none|reward|
variance_kl|both, agg=mean|uwo|lcb|wco, kl, norm, smoke, members, noise), advantage=grpo|rloo,
group=G. tiny's default reward is the proxy ensemble (gold logged beside it), so
`uncertainty=reward,agg=lcb` is GRPO on the uncertainty-penalised LCB reward.
"""

from configs import common, ppo

ARGS = dict(ppo.ARGS, reward="proxy", kl=0.04, advantage="grpo", group=4)


def get_config(arg=None):
  arg = common.parse_arg(arg, **ARGS)
  c = ppo.rl_config(arg, "grpo")
  g = c.grpo
  g.advantage, g.group_size = arg.advantage, arg.group
  g.whiten = False                  # the group baseline already centres (and GRPO scales)
  if arg.advantage == "rloo":
    g.kl_in, g.kl_estimator = "reward", "k1"
  else:
    g.kl_in, g.kl_estimator = "loss", "k3"
  return c
