"""Llama decoder in Flax Linen: the one backbone every rmjax method runs on.

Matches transformers' `LlamaForCausalLM` numerically (RMSNorm, rotate-half RoPE with default or
Llama-3.1 scaling, grouped-query attention, SwiGLU). Layers are stacked with `nn.scan` so a
30- or 80-layer model compiles once per layer shape; every parameter carries logical axis names
that `rmjax.sharding` maps to mesh axes.

The KV cache is explicit and functional: `__call__` takes a cache pytree and returns the updated
one, so prefill and decode are plain jitted functions (see `rmjax.rl.generate`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from rmjax.models import attention as attn_lib
from rmjax.models.matmuls import dense_dot_general, swiglu

REMAT = ("none", "full", "dots")  # LlamaConfig.remat: nothing, everything, matmul outputs saved

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Architecture plus numeric policy of a Llama model (HF `LlamaConfig` field names)."""
  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_hidden_layers: int = 32
  num_attention_heads: int = 32
  num_key_value_heads: int = 32
  head_dim: Optional[int] = None
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  rope_scaling: Optional[tuple] = None  # tuple of (key, value) pairs, hashable; see rope_scaling_dict
  max_position_embeddings: int = 2048
  tie_word_embeddings: bool = False
  bos_token_id: Optional[int] = 1
  eos_token_id: Optional[int] = 2
  pad_token_id: Optional[int] = None
  # numeric policy (not part of the checkpoint)
  dtype: str = "float32"         # compute dtype of matmuls
  param_dtype: str = "float32"
  remat: str = "none"            # 'none' | 'full' | 'dots' (save matmul outputs)
  attention: str = "auto"        # 'xla' | 'blocked' | 'dot_product' | 'splash' | 'auto' (models/attention)

  def __post_init__(self):
    if self.head_dim is None:
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
    if isinstance(self.rope_scaling, dict):
      object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(
          f"num_attention_heads={self.num_attention_heads} is not a multiple of "
          f"num_key_value_heads={self.num_key_value_heads}")
    if self.remat not in REMAT:
      raise ValueError(f"remat must be one of {', '.join(REMAT)}, got {self.remat!r}")
    if self.attention not in attn_lib.BACKENDS:
      raise ValueError(f"attention must be one of {', '.join(attn_lib.BACKENDS)}, "
                       f"got {self.attention!r}")

  @property
  def rope_scaling_dict(self) -> Optional[dict]:
    return dict(self.rope_scaling) if self.rope_scaling else None

  def replace(self, **kw) -> "LlamaConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["rope_scaling"] = self.rope_scaling_dict
    return d

  @property
  def num_params(self) -> int:
    d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
    q = self.num_attention_heads * self.head_dim
    kv = self.num_key_value_heads * self.head_dim
    per_layer = d * (q + 2 * kv) + q * d + 3 * d * f + 2 * d
    return v * d * (1 if self.tie_word_embeddings else 2) + self.num_hidden_layers * per_layer + d


def rope_inv_freq(cfg: LlamaConfig) -> Array:
  """Inverse frequencies [head_dim // 2], with Llama-3.1 ('llama3') scaling when configured."""
  dim = cfg.head_dim
  inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  scaling = cfg.rope_scaling_dict
  if not scaling:
    return inv_freq
  kind = scaling.get("rope_type", scaling.get("type", "default"))
  if kind == "default":
    return inv_freq
  if kind == "linear":
    return inv_freq / scaling["factor"]
  if kind != "llama3":
    raise ValueError(f"unsupported rope_scaling type {kind!r} (supported: default, linear, llama3)")
  factor = scaling["factor"]
  low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
  old_len = scaling["original_max_position_embeddings"]
  low_wavelen, high_wavelen = old_len / low, old_len / high
  wavelen = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
  smooth = (old_len / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(is_medium, smoothed, scaled)


def apply_rope(x: Array, positions: Array, inv_freq: Array) -> Array:
  """Rotate-half RoPE. x: [B, T, H, D]; positions: [B, T].

  Computed on the two halves of the head dim (x1 cos - x2 sin, x2 cos + x1 sin) with one
  concatenate of the result: no [D]-wide angle, cos/sin or rotated copies (cheaper on CPU)."""
  angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, D/2]
  cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
  half = x.shape[-1] // 2
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def positions_from_mask(attention_mask: Array) -> Array:
  """Position ids that skip padding: works for left and right padding alike. [B, T]."""
  return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def positions_from_segments(segment_ids: Array) -> Array:
  """Packed rows: each segment's positions count from 0 at its first token (0 on padding).
  segment_ids [B, T] int: 0 = padding, k >= 1 = the k-th sequence of the row."""
  t = segment_ids.shape[-1]
  idx = jnp.broadcast_to(jnp.arange(t), segment_ids.shape)
  prev = jnp.pad(segment_ids[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  start = jax.lax.cummax(jnp.where(segment_ids != prev, idx, 0), axis=1)
  return jnp.where(segment_ids > 0, idx - start, 0)


class RMSNorm(nn.Module):
  eps: float
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (scale.astype(jnp.float32) * y).astype(x.dtype)


class Embedder(nn.Module):
  """Token embedding [vocab, embed] shared by the lookup and (when tied) the LM head.

  The lookup gathers the table's embed dim first: with the table split over ('tensor', 'fsdp')
  and activations split over batch, a direct gather would rematerialise the whole output.
  """
  cfg: LlamaConfig

  def setup(self):
    cfg = self.cfg
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
        (cfg.vocab_size, cfg.hidden_size), jnp.dtype(cfg.param_dtype))

  def __call__(self, ids):
    table = nn.with_logical_constraint(self.embedding, ("vocab", None))
    return jnp.take(table, ids, axis=0).astype(jnp.dtype(self.cfg.dtype))

  def attend(self, x):
    return jnp.einsum("btd,vd->btv", x, self.embedding.astype(x.dtype))


def _dense(features, names, cfg, name):
  return nn.Dense(
      features, use_bias=False, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
      kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), names), name=name,
      dot_general=dense_dot_general)


class Attention(nn.Module):
  """Grouped-query attention; K/V are never repeated. The kernel is `cfg.attention` without a
  cache; with a cache (prefill into it and decode steps) it is always the 'xla' path."""
  cfg: LlamaConfig

  @nn.compact
  def __call__(self, x, positions, key_mask, q_slots, cache):
    cfg = self.cfg
    b, t, _ = x.shape
    nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    q = _dense(nh * hd, ("embed", "heads"), cfg, "q_proj")(x).reshape(b, t, nh, hd)
    k = _dense(nkv * hd, ("embed", "kv_heads"), cfg, "k_proj")(x).reshape(b, t, nkv, hd)
    v = _dense(nkv * hd, ("embed", "kv_heads"), cfg, "v_proj")(x).reshape(b, t, nkv, hd)
    inv_freq = rope_inv_freq(cfg)
    q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
    q = nn.with_logical_constraint(q, ("act_batch", "act_length", "act_heads", None))
    k = nn.with_logical_constraint(k, ("act_batch", "act_length", "act_kv_heads", None))

    if cache is not None:  # write this step's K/V at slots [index, index + t)
      index = cache["index"]
      k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), (0, index, 0, 0))
      v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), (0, index, 0, 0))
      new_cache = {"k": k, "v": v, "index": index}
    else:
      new_cache = None

    # The cache path (prefill into a cache, decode steps) always runs the xla reference path.
    backend = "xla" if cache is not None else cfg.attention
    out = attn_lib.attend(q, k, v, key_mask, q_slots, backend)
    out = _dense(cfg.hidden_size, ("heads", "embed"), cfg, "o_proj")(out.astype(jnp.dtype(cfg.dtype)))
    return out, new_cache



class _Kernel(nn.Module):
  """A bias-free projection's weight [in, out] under `<name>/kernel` (the nn.Dense layout)."""
  shape: tuple
  names: tuple
  param_dtype: Any

  @nn.compact
  def __call__(self):
    return self.param("kernel", nn.with_logical_partitioning(nn.initializers.normal(0.02), self.names),
                      self.shape, self.param_dtype)


class MLP(nn.Module):
  cfg: LlamaConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    d, f, pd = cfg.hidden_size, cfg.intermediate_size, jnp.dtype(cfg.param_dtype)
    w_gate = _Kernel((d, f), ("embed", "mlp"), pd, name="gate_proj")()
    w_up = _Kernel((d, f), ("embed", "mlp"), pd, name="up_proj")()
    w_down = _Kernel((f, d), ("mlp", "embed"), pd, name="down_proj")()
    dt = jnp.dtype(cfg.dtype)
    return swiglu(x.astype(dt), w_gate.astype(dt), w_up.astype(dt), w_down.astype(dt))


class DecoderLayer(nn.Module):
  """One pre-norm decoder block; signature fits `nn.scan` (carry, per-layer cache)."""
  cfg: LlamaConfig

  @nn.compact
  def __call__(self, x, cache, positions, key_mask, q_slots):
    cfg = self.cfg
    h, new_cache = Attention(cfg, name="self_attn")(
        RMSNorm(cfg.rms_norm_eps, jnp.dtype(cfg.param_dtype), name="input_layernorm")(x),
        positions, key_mask, q_slots, cache)
    x = x + h
    x = x + MLP(cfg, name="mlp")(
        RMSNorm(cfg.rms_norm_eps, jnp.dtype(cfg.param_dtype), name="post_attention_layernorm")(x))
    x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))
    return x, new_cache


_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Llama(nn.Module):
  """Llama decoder. Returns logits [B, T, V] (float32) by default.

  `attention_mask` [B, T] marks real tokens (1) and padding (0), left or right. With a `cache`
  (from `init_cache`), `attention_mask` covers all cache slots [B, S] and `positions` must be
  given; the call returns `(output, new_cache)`.
  `output`: 'logits' | 'hidden' (after the final norm) | 'both' -> (logits, hidden).
  Packed rows (several sequences per row): `segment_ids` [B, T] (0 = padding, k >= 1 = the
  k-th sequence) instead of `attention_mask`; a token attends causally within its own segment
  and positions restart at each segment (no cache). `prefix_ids` [B, T] (with explicit
  `positions`) adds, per token, the segment id of a shared prefix it also sees (0 = none): a
  prompt laid out once with both responses after it (`rmjax.models.attention.packed_mask`).
  """
  cfg: LlamaConfig

  def setup(self):
    cfg = self.cfg
    self.embed_tokens = Embedder(cfg)
    layer = DecoderLayer
    if cfg.remat != "none":
      layer = nn.remat(layer, prevent_cse=False, policy=_REMAT_POLICIES[cfg.remat])
    self.layers = nn.scan(
        layer, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_hidden_layers,
        metadata_params={nn.PARTITION_NAME: "layers"})(cfg)
    self.norm = RMSNorm(cfg.rms_norm_eps, jnp.dtype(cfg.param_dtype))
    if not cfg.tie_word_embeddings:
      self.lm_head = _dense(cfg.vocab_size, ("embed", "vocab"), cfg, "lm_head")

  def hidden_states(self, input_ids, attention_mask=None, positions=None, cache=None,
                    segment_ids=None, prefix_ids=None):
    """Final hidden states [B, T, D] after the last norm (and the new cache)."""
    b, t = input_ids.shape
    if segment_ids is not None:  # packed: the int key mask carries the segments (attention.py)
      if cache is not None:
        raise ValueError("packed rows (segment_ids) cannot decode with a cache")
      if prefix_ids is not None and positions is None:
        raise ValueError("prefix_ids need explicit positions (a response continues its prefix)")
      key_mask = attn_lib.packed_mask(segment_ids, prefix_ids)
      positions = positions_from_segments(segment_ids.astype(jnp.int32)) if positions is None else positions
      q_slots = jnp.broadcast_to(jnp.arange(t), (b, t))
      layer_cache = None
    elif cache is None:
      key_mask = (jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool))
      if positions is None:
        positions = positions_from_mask(key_mask)
      q_slots = jnp.broadcast_to(jnp.arange(t), (b, t))
      layer_cache = None
    else:
      if attention_mask is None or positions is None:
        raise ValueError("decoding with a cache needs attention_mask over the cache slots and positions")
      key_mask = attention_mask.astype(bool)
      q_slots = jnp.broadcast_to(cache["index"] + jnp.arange(t), (b, t))
      layer_cache = {"k": cache["k"], "v": cache["v"],
                     "index": jnp.broadcast_to(cache["index"], (self.cfg.num_hidden_layers,))}
    x = self.embed_tokens(input_ids)
    x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))
    x, new_layer_cache = self.layers(x, layer_cache, positions, key_mask, q_slots)
    x = self.norm(x)
    new_cache = None
    if cache is not None:
      new_cache = {"k": new_layer_cache["k"], "v": new_layer_cache["v"], "index": cache["index"] + t}
    return x, new_cache

  def logits_from_hidden(self, x):
    """LM logits [B, T, V] in float32 from final hidden states."""
    if self.cfg.tie_word_embeddings:
      logits = self.embed_tokens.attend(x)
    else:
      logits = self.lm_head(x)
    return nn.with_logical_constraint(logits.astype(jnp.float32), ("act_batch", "act_length", "act_vocab"))

  def __call__(self, input_ids, attention_mask=None, positions=None, cache=None, output="logits",
               segment_ids=None, prefix_ids=None):
    x, new_cache = self.hidden_states(input_ids, attention_mask, positions, cache, segment_ids,
                                      prefix_ids)
    if output == "hidden":
      out = x
    elif output == "logits":
      out = self.logits_from_hidden(x)
    elif output == "both":
      out = (self.logits_from_hidden(x), x)
    else:
      raise ValueError(f"output must be 'logits', 'hidden' or 'both', got {output!r}")
    return out if cache is None else (out, new_cache)


def init_cache(cfg: LlamaConfig, batch: int, max_len: int, dtype=None) -> dict:
  """Empty KV cache: k, v [layers, B, S, kv_heads, head_dim] and the next write slot."""
  dtype = jnp.dtype(dtype or cfg.dtype)
  shape = (cfg.num_hidden_layers, batch, max_len, cfg.num_key_value_heads, cfg.head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype), "index": jnp.zeros((), jnp.int32)}
