"""Policy-gradient math as pure functions over [B, N] response arrays (tunix `algo_core`
decomposition): PPO's pieces and the critic-free group estimators (GRPO, RLOO).

Conventions: every array is indexed by response token t = 0..N-1 of a right-padded response
window; `mask` [B, N] is 1 on generated tokens (up to and including the EOS), 0 after. A row's
last real token is `lengths - 1`. Means over tokens are masked means over the whole batch.

Pieces (ALGORITHMS.md 2.3, 2.4, 3.8); the named ones live in `rmjax.rl.registry`:
  kl_estimate       per-token KL(pi || pi_ref) estimate, KL_ESTIMATORS: k1 = d, k2 = d^2 / 2,
                    k3 = exp(-d) - 1 + d with d = log pi - log pi_ref (optional clamp, SALMON: k1 >= 0)
  variance_weights  per-sequence KL-coefficient multiplier w = sigma^2 / mean_batch(sigma^2), clipped
  token_rewards     r_t = -beta_t k(t), plus the sequence score at the last response token
  ADVANTAGES        gae: GAE by a reverse `lax.scan` (needs values); grpo: the group-normalised
                    sequence reward (r - mean_g) / (std_g + eps) (Shao et al. 2024); rloo: r minus
                    the mean of the other G - 1 samples of its prompt (Ahmadian et al. 2024)
  whiten            masked standardisation (advantages)
  policy_loss       clipped surrogate, POLICY_LOSSES: 'clip' or 'dual_clip' (Ye et al. 2020)
  value_loss        clipped value loss 0.5 max((v - R)^2, (v_clip - R)^2)
  entropy           masked mean entropy from logits
  adaptive_kl       Ziegler et al. proportional controller for the KL coefficient
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rmjax.errors import ConfigError
from rmjax.rl.registry import ADVANTAGES, KL_ESTIMATORS, POLICY_LOSSES


def masked_mean(x, mask, axis=None):
  mask = mask.astype(x.dtype)
  return jnp.sum(x * mask, axis=axis) / jnp.maximum(jnp.sum(mask, axis=axis), 1.0)


def masked_var(x, mask):
  mu = masked_mean(x, mask)
  return masked_mean(jnp.square(x - mu), mask)


@KL_ESTIMATORS.register("k1")
def _k1(d):
  return d


@KL_ESTIMATORS.register("k2")
def _k2(d):
  return 0.5 * jnp.square(d)


@KL_ESTIMATORS.register("k3")
def _k3(d):
  return jnp.exp(-d) - 1.0 + d


def kl_estimate(logp, ref_logp, kind: str = "k1", clamp_min=None, clamp_max=None):
  """Per-token KL estimate [B, N] from log pi and log pi_ref of the SAMPLED tokens.

  k1 is unbiased but can be negative; k3 (Schulman) is unbiased and >= 0; k2 is biased, >= 0.
  `clamp_min` / `clamp_max` bound the estimate (SALMON uses k1 with clamp_min = 0).
  """
  k = KL_ESTIMATORS.get(kind)(logp - ref_logp)
  if clamp_min is not None or clamp_max is not None:
    k = jnp.clip(k, clamp_min, clamp_max)
  return k


def variance_weights(var, w_min: float = 0.1, w_max: float = 10.0, eps: float = 1e-8):
  """w = var / mean(var) over the batch, clipped to [w_min, w_max] ([B] -> [B], section 2.3).

  The batch mean keeps the KL coefficient at its usual scale; a batch with no spread at all
  gets w = 1 everywhere.
  """
  if not 0 < w_min <= 1 <= w_max:
    raise ConfigError(f"variance weights need 0 < w_min <= 1 <= w_max, got {w_min}, {w_max}")
  mean = jnp.mean(var)
  w = jnp.where(mean > eps, var / jnp.maximum(mean, eps), 1.0)
  return jnp.clip(w, w_min, w_max)


def last_token_onehot(mask):
  """1 at each row's last real response token [B, N] (rows with no token: all 0)."""
  lengths = jnp.sum(mask.astype(jnp.int32), axis=-1)                     # [B]
  pos = jnp.arange(mask.shape[-1])[None, :]
  return ((pos == (lengths - 1)[:, None]) & (lengths[:, None] > 0)).astype(jnp.float32)


def token_rewards(score, kl, mask, kl_coef):
  """Shaped rewards [B, N]: -kl_coef * kl at every real token, + score at the last one.

  score [B]; kl [B, N]; kl_coef a scalar or [B] (the variance-aware per-sequence coefficient).
  """
  mask = mask.astype(jnp.float32)
  coef = jnp.broadcast_to(jnp.asarray(kl_coef, jnp.float32), score.shape)[:, None]   # [B, 1]
  return (-coef * kl * mask) + score[:, None] * last_token_onehot(mask)


@ADVANTAGES.register("gae", needs_value=True)
def gae(rewards, values, mask, gamma: float = 1.0, lam: float = 0.95, group_size: int = 1):
  """Generalised advantage estimation by a reverse `lax.scan` over tokens.

  delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}, with V and A past
  the end of the response taken as 0 (the episode terminates at the last real token).
  Returns (advantages [B, N], returns = advantages + values [B, N]), both 0 where mask is 0.
  `group_size` is unused (the ADVANTAGES interface).
  """
  del group_size
  mask = mask.astype(jnp.float32)
  values = values * mask
  rewards = rewards * mask
  next_values = jnp.pad(values[:, 1:], ((0, 0), (0, 1)))                # [B, N]
  deltas = rewards + gamma * next_values - values

  def step(carry, xs):
    delta, m = xs
    adv = (delta + gamma * lam * carry) * m
    return adv, adv

  _, adv = jax.lax.scan(step, jnp.zeros(rewards.shape[:1], jnp.float32),
                        (deltas.T, mask.T), reverse=True)
  adv = adv.T
  return adv, (adv + values) * mask


def sequence_groups(rewards, mask, group_size: int):
  """Each sequence's total reward sum_t r_t (the score minus its KL penalty when the KL is in the
  reward), as [B / G, G]: rows come in consecutive groups of G samples of one prompt."""
  total = jnp.sum(rewards * mask.astype(jnp.float32), axis=-1)            # [B]
  return total.reshape(-1, group_size)


def _per_token(group_adv, mask):
  return group_adv.reshape(-1)[:, None] * mask.astype(jnp.float32)        # [B, N]


@ADVANTAGES.register("grpo", grouped=True)
def grpo(rewards, values, mask, gamma: float = 1.0, lam: float = 1.0, group_size: int = 2,
         eps: float = 1e-6):
  """GRPO's outcome advantage: (R - mean_g R) / (std_g R + eps) per group of G samples, the
  sample std (ddof 1, as Tunix and TRL), the same value at every token of a sequence; no
  returns (no value model). gamma, lam, values: unused."""
  del values, gamma, lam
  r = sequence_groups(rewards, mask, group_size)
  adv = (r - r.mean(-1, keepdims=True)) / (r.std(-1, ddof=1, keepdims=True) + eps)
  return _per_token(adv, mask), None


@ADVANTAGES.register("rloo", grouped=True)
def rloo(rewards, values, mask, gamma: float = 1.0, lam: float = 1.0, group_size: int = 2):
  """REINFORCE leave-one-out: R_i - mean_{j != i} R_j within its group of G samples, at every
  token of the sequence; no returns (no value model). gamma, lam, values: unused."""
  del values, gamma, lam
  r = sequence_groups(rewards, mask, group_size)
  baseline = (r.sum(-1, keepdims=True) - r) / (group_size - 1)
  return _per_token(r - baseline, mask), None


def whiten(x, mask, shift_mean: bool = True, eps: float = 1e-8):
  """(x - mean) / std over masked entries (mean kept when not `shift_mean`); 0 where masked."""
  mu = masked_mean(x, mask)
  out = (x - mu) * jax.lax.rsqrt(masked_var(x, mask) + eps)
  if not shift_mean:
    out = out + mu
  return out * mask.astype(x.dtype)


def _clipped(logp, old_logp, advantages, clip_eps):
  ratio = jnp.exp(logp - old_logp)
  loss1 = -advantages * ratio
  loss2 = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  return ratio, loss1, loss2, jnp.maximum(loss1, loss2)


def _policy_metrics(logp, old_logp, ratio, loss1, loss2, dual, mask):
  return {"clipfrac": masked_mean((loss2 > loss1).astype(jnp.float32), mask),
          "dual_clipfrac": masked_mean(dual, mask),
          "approx_kl": masked_mean(0.5 * jnp.square(logp - old_logp), mask),
          "ratio_mean": masked_mean(ratio, mask)}


@POLICY_LOSSES.register("clip")
def clip_loss(logp, old_logp, advantages, mask, *, clip: float = 0.2, dual_clip: float = 3.0):
  """max(-A r, -A clip(r, 1-eps, 1+eps)), token mean."""
  del dual_clip
  ratio, loss1, loss2, per_token = _clipped(logp, old_logp, advantages, clip)
  dual = jnp.zeros_like(per_token)
  metrics = _policy_metrics(logp, old_logp, ratio, loss1, loss2, dual, mask)
  return masked_mean(per_token, mask), metrics


@POLICY_LOSSES.register("dual_clip")
def dual_clip_loss(logp, old_logp, advantages, mask, *, clip: float = 0.2,
                   dual_clip: float = 3.0):
  """'clip', and the loss of a negative advantage bounded by -dual_clip * A (Ye et al.), so a
  huge ratio on a bad token cannot dominate."""
  if dual_clip <= 1.0:
    raise ConfigError(f"dual_clip must be > 1, got {dual_clip}")
  ratio, loss1, loss2, per_token = _clipped(logp, old_logp, advantages, clip)
  capped = jnp.minimum(per_token, -dual_clip * advantages)
  dual = ((advantages < 0) & (capped < per_token)).astype(jnp.float32)
  per_token = jnp.where(advantages < 0, capped, per_token)
  metrics = _policy_metrics(logp, old_logp, ratio, loss1, loss2, dual, mask)
  return masked_mean(per_token, mask), metrics


def policy_loss(logp, old_logp, advantages, mask, clip_eps: float = 0.2, kind: str = "clip",
                dual_clip: float = 3.0):
  """The POLICY_LOSSES entry `kind` (token mean) and its metrics
  {'clipfrac', 'approx_kl', 'ratio_mean', 'dual_clipfrac'}."""
  return POLICY_LOSSES.get(kind)(logp, old_logp, advantages, mask, clip=clip_eps,
                                 dual_clip=dual_clip)


def value_loss(values, old_values, returns, mask, clip: float = 0.2):
  """0.5 * max((v - R)^2, (old + clip(v - old, -c, c) - R)^2), token mean; c <= 0 disables."""
  unclipped = jnp.square(values - returns)
  if clip and clip > 0:
    v_clip = old_values + jnp.clip(values - old_values, -clip, clip)
    clipped = jnp.square(v_clip - returns)
    loss = 0.5 * masked_mean(jnp.maximum(unclipped, clipped), mask)
    frac = masked_mean((clipped > unclipped).astype(jnp.float32), mask)
  else:
    loss, frac = 0.5 * masked_mean(unclipped, mask), jnp.zeros(())
  return loss, {"vf_clipfrac": frac}


def entropy(logits, mask):
  """Masked mean entropy of the token distributions logits [B, N, V] (float32)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1)                           # [B, N]
  return masked_mean(ent, mask)


def adaptive_kl(coef: float, kl: float, target: float, horizon: float, n_steps: int) -> float:
  """Ziegler et al. controller: coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon."""
  if target <= 0 or horizon <= 0:
    raise ConfigError(f"adaptive KL needs target > 0 and horizon > 0, got {target}, {horizon}")
  err = float(np.clip(kl / target - 1.0, -0.2, 0.2))
  return float(coef) * (1.0 + err * n_steps / horizon)
