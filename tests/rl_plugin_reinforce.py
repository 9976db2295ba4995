"""A plug-in RL algorithm from outside rmjax: REINFORCE with a baseline (Williams 1992) as an
advantage estimator, registered by name. Train with it through the CLI:

    PYTHONPATH=tests rmjax train --config configs/grpo.py:tiny \
        --config.grpo.advantage=rl_plugin_reinforce:reinforce --config.grpo.group_size=1

The learner imports this module when it reads the 'module:name' and then runs the estimator
like its own: no value model (needs_value=False), any number of samples per prompt
(grouped=False), the policy loss, KL and rewards the config names.
"""

import jax.numpy as jnp

from rmjax.rl.registry import ADVANTAGES


@ADVANTAGES.register("reinforce")
def reinforce(rewards, values, mask, *, gamma, lam, group_size):
  """A_t = G_t - b_t: the discounted reward-to-go G_t = sum_{s >= t} gamma^(s - t) r_s of each
  row minus its batch mean at token t (over the rows that reach t). rewards, mask [B, N] ->
  (advantages [B, N], no returns)."""
  del values, lam, group_size
  m = mask.astype(jnp.float32)
  n = rewards.shape[-1]
  disc = jnp.power(jnp.float32(gamma), jnp.arange(n, dtype=jnp.float32))       # [N]
  # G_t = (sum_{s >= t} gamma^s r_s) / gamma^t: a reversed cumulative sum
  to_go = jnp.flip(jnp.cumsum(jnp.flip(rewards * m * disc, -1), -1), -1) / disc
  baseline = jnp.sum(to_go * m, 0) / jnp.maximum(jnp.sum(m, 0), 1.0)           # [N]
  return (to_go - baseline) * m, None
