"""Reward heads that sit on pooled backbone features, and the pooling itself.

Heads are separate Linen modules so reward models compose them: a scalar BT head, a stack of
K scalar heads on an `ensemble` axis (one einsum), and a value head for PPO. Every parameter
carries logical axis names for `rmjax.sharding`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def last_token_index(mask: jax.Array) -> jax.Array:
  """Index of the last real token per row [B]; right or left padding alike."""
  t = mask.shape[-1]
  return t - 1 - jnp.argmax(mask[:, ::-1].astype(jnp.int32), axis=-1)


def pool_last(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """Hidden state [B, D] at the last real token of each row; hidden: [B, T, D]."""
  idx = last_token_index(mask)
  return jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0]


class ScalarHead(nn.Module):
  """Linear d -> 1 (bias-free like transformers' `score` layer), or an MLP when `hidden` > 0.

  The MLP variant is GRM's head: Dropout -> Linear d->hidden -> ReLU -> Linear hidden->1.
  """
  hidden: int = 0
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, deterministic: bool = True):  # x: [B, D] -> [B]
    x = x.astype(jnp.float32)
    init = nn.initializers.normal(1.0 / (x.shape[-1] ** 0.5))
    if self.hidden:
      x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
      x = nn.Dense(self.hidden, kernel_init=nn.with_logical_partitioning(init, ("embed", "hidden")),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("hidden",)))(x)
      x = nn.relu(x)
      init = nn.initializers.normal(1.0 / (self.hidden ** 0.5))
      kernel = nn.with_logical_partitioning(init, ("hidden", None))
    else:
      kernel = nn.with_logical_partitioning(init, ("embed", None))
    return nn.Dense(1, use_bias=bool(self.hidden), kernel_init=kernel,
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))(x)[..., 0]


class EnsembleHead(nn.Module):
  """K linear reward heads with stacked weights on an `ensemble` axis: [B, D] -> [B, K].

  Each member gets its own init (independent normal draws per member slice).
  """
  members: int

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    x = x.astype(jnp.float32)
    d = x.shape[-1]
    w = self.param("kernel", nn.with_logical_partitioning(
        nn.initializers.normal(1.0 / d ** 0.5), ("ensemble", "embed")), (self.members, d))
    b = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("ensemble",)),
                   (self.members,))
    return jnp.einsum("bd,kd->bk", x, w) + b
