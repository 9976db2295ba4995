"""PPO math as pure functions over [B, N] response arrays (tunix `algo_core` decomposition).

Conventions: every array is indexed by response token t = 0..N-1 of a right-padded response
window; `mask` [B, N] is 1 on generated tokens (up to and including the EOS), 0 after. A row's
last real token is `lengths - 1`. Means over tokens are masked means over the whole batch.

Pieces (ALGORITHMS.md 2.3, 2.4, 3.8):
  kl_estimate       per-token KL(pi || pi_ref) estimate, by name: k1 = d, k2 = d^2 / 2,
                    k3 = exp(-d) - 1 + d with d = log pi - log pi_ref (optional clamp, SALMON: k1 >= 0)
  variance_weights  per-sequence KL-coefficient multiplier w = sigma^2 / mean_batch(sigma^2), clipped
  token_rewards     r_t = -beta_t k(t), plus the sequence score at the last response token
  gae               advantages and returns by a reverse `lax.scan`
  whiten            masked standardisation (advantages)
  policy_loss       clipped surrogate, by name: 'clip' or 'dual_clip' (Ye et al. 2020)
  value_loss        clipped value loss 0.5 max((v - R)^2, (v_clip - R)^2)
  entropy           masked mean entropy from logits
  adaptive_kl       Ziegler et al. proportional controller for the KL coefficient
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rmjax.errors import ConfigError

KL_ESTIMATORS = ("k1", "k2", "k3")
POLICY_LOSSES = ("clip", "dual_clip")


def masked_mean(x, mask, axis=None):
  mask = mask.astype(x.dtype)
  return jnp.sum(x * mask, axis=axis) / jnp.maximum(jnp.sum(mask, axis=axis), 1.0)


def masked_var(x, mask):
  mu = masked_mean(x, mask)
  return masked_mean(jnp.square(x - mu), mask)


def kl_estimate(logp, ref_logp, kind: str = "k1", clamp_min=None, clamp_max=None):
  """Per-token KL estimate [B, N] from log pi and log pi_ref of the SAMPLED tokens.

  k1 is unbiased but can be negative; k3 (Schulman) is unbiased and >= 0; k2 is biased, >= 0.
  `clamp_min` / `clamp_max` bound the estimate (SALMON uses k1 with clamp_min = 0).
  """
  if kind not in KL_ESTIMATORS:
    raise ConfigError(f"unknown KL estimator {kind!r}; choose from {', '.join(KL_ESTIMATORS)}")
  d = logp - ref_logp
  if kind == "k1":
    k = d
  elif kind == "k2":
    k = 0.5 * jnp.square(d)
  else:
    k = jnp.exp(-d) - 1.0 + d
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


def gae(rewards, values, mask, gamma: float = 1.0, lam: float = 0.95):
  """Generalised advantage estimation by a reverse `lax.scan` over tokens.

  delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}, with V and A past
  the end of the response taken as 0 (the episode terminates at the last real token).
  Returns (advantages [B, N], returns = advantages + values [B, N]), both 0 where mask is 0.
  """
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


def whiten(x, mask, shift_mean: bool = True, eps: float = 1e-8):
  """(x - mean) / std over masked entries (mean kept when not `shift_mean`); 0 where masked."""
  mu = masked_mean(x, mask)
  out = (x - mu) * jax.lax.rsqrt(masked_var(x, mask) + eps)
  if not shift_mean:
    out = out + mu
  return out * mask.astype(x.dtype)


def policy_loss(logp, old_logp, advantages, mask, clip_eps: float = 0.2, kind: str = "clip",
                dual_clip: float = 3.0):
  """Clipped PPO surrogate (token mean) and metrics.

  'clip': max(-A r, -A clip(r, 1-eps, 1+eps)). 'dual_clip' also bounds the loss of negative
  advantages by -dual_clip * A (Ye et al.), so a huge ratio on a bad token cannot dominate.
  Returns (loss, {'clipfrac', 'approx_kl', 'ratio_mean', 'dual_clipfrac'}).
  """
  if kind not in POLICY_LOSSES:
    raise ConfigError(f"unknown policy loss {kind!r}; choose from {', '.join(POLICY_LOSSES)}")
  ratio = jnp.exp(logp - old_logp)
  loss1 = -advantages * ratio
  loss2 = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  per_token = jnp.maximum(loss1, loss2)
  dual = jnp.zeros_like(per_token)
  if kind == "dual_clip":
    if dual_clip <= 1.0:
      raise ConfigError(f"dual_clip must be > 1, got {dual_clip}")
    capped = jnp.minimum(per_token, -dual_clip * advantages)
    dual = ((advantages < 0) & (capped < per_token)).astype(jnp.float32)
    per_token = jnp.where(advantages < 0, capped, per_token)
  metrics = {"clipfrac": masked_mean((loss2 > loss1).astype(jnp.float32), mask),
             "dual_clipfrac": masked_mean(dual, mask),
             "approx_kl": masked_mean(0.5 * jnp.square(logp - old_logp), mask),
             "ratio_mean": masked_mean(ratio, mask)}
  return masked_mean(per_token, mask), metrics


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
