"""Attention backends behind `LlamaConfig.attention`: pure functions of (q, k, v, masks).

Layouts: q [B, T, N, D], k / v [B, S, K, D] with N a multiple of K (grouped-query attention; query
head h reads KV head h // (N // K), the HF order). `key_mask` [B, S] marks real tokens (left or
right padding), `q_slots` [B, T] the cache slot of each query. Every backend returns [B, T, N * D].
Packed rows: an INTEGER `key_mask` holds segment ids (0 = padding, k >= 1 = the k-th sequence of
the row; no cache, T == S) and a query sees causally earlier keys of its own segment only; a
boolean `key_mask` is the padding mask (one sequence per row).

- 'xla': the reference einsum path (scores in float32, masked with finfo.min); handles any
  `q_slots`, so it is the one the KV-cache path (prefill into a cache and decode steps) uses.
- 'dot_product': `jax.nn.dot_product_attention(implementation=None)`: XLA picks the
  implementation (in jax 0.10 that is still its XLA one; cuDNN needs `implementation='cudnn'`
  and cannot express left padding, so it is not forced here).
- 'splash': the Pallas TPU splash-attention kernel under `jax.shard_map` over the batch axes
  ('data', 'fsdp') and the head axis ('tensor') of the mesh set with `jax.set_mesh` (no mesh:
  called directly). Off TPU it runs in Pallas interpret mode (slow; for tests).
- 'auto': splash on TPU, dot_product on GPU, xla elsewhere (`resolve`).

dot_product and splash compute self-attention without a cache (S == T, q_slots == arange(T)).
Causality plus padding are expressed as segment ids: real tokens are segment 1, padding 0, and a
query sees causally earlier keys of its own segment. For real tokens that is exactly the xla
mask; padding rows (whose outputs nothing reads) attend to earlier padding instead of getting the
xla path's uniform row, so outputs at padded positions differ between backends, and no row is
ever empty (no NaN in forward or backward).

Splash block sizes: T is padded up to a multiple of 128 inside the wrapper (the kernel's lane
width; the extra rows are padding segment 0, causally after every real token, and are sliced
off), and the block is the largest of 512 / 256 / 128 that divides the padded length, for the
forward and both backward kernels. Queries are pre-scaled by 1/sqrt(D) (splash does not scale).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

Array = jax.Array

BACKENDS = ("xla", "dot_product", "splash", "auto")
BATCH_AXES = ("data", "fsdp")
HEAD_AXIS = "tensor"
SPLASH_LANES = 128
SPLASH_BLOCKS = (512, 256, 128)


def resolve(backend: str, platform: str | None = None) -> str:
  """The concrete backend: 'auto' becomes splash on TPU, dot_product on GPU, xla elsewhere."""
  if backend not in BACKENDS:
    raise ValueError(f"attention must be one of {', '.join(BACKENDS)}, got {backend!r}")
  if backend != "auto":
    return backend
  platform = platform or jax.default_backend()
  return {"tpu": "splash", "gpu": "dot_product", "cuda": "dot_product",
          "rocm": "dot_product"}.get(platform, "xla")


def attend(q: Array, k: Array, v: Array, key_mask: Array, q_slots: Array,
           backend: str = "xla") -> Array:
  """Grouped-query attention -> [B, T, N * D] (see the module docstring for the contract)."""
  backend = resolve(backend)
  if backend == "xla":
    return xla_attention(q, k, v, key_mask, q_slots)
  if q.shape[1] != k.shape[1]:
    raise ValueError(f"attention={backend!r} needs self-attention without a cache (T == S), got "
                     f"T={q.shape[1]}, S={k.shape[1]}; the cache path uses 'xla'")
  b, t, n, d = q.shape
  if backend == "dot_product":
    return dot_product_attention(q, k, v, key_mask).reshape(b, t, n * d)
  return splash_attention(q, k, v, key_mask).reshape(b, t, n * d)


def xla_attention(q, k, v, key_mask, q_slots):
  """The reference path: any cache slots, scores in float32."""
  b, t, nh, hd = q.shape
  s, nkv = k.shape[1], k.shape[2]
  g = nh // nkv
  # Queries go heads-major, [B, kv, g * T, D]: each KV head's scores are one [g*T, D] x [D, S]
  # matmul against K/V in their [B, S, kv, D] (cache) layout, which XLA:CPU runs ~2x faster
  # than the [B, T, kv, g, D] contraction (experiments/benchmarks/RESULTS.md).
  qg = q.reshape(b, t, nkv, g, hd).transpose(0, 2, 3, 1, 4).reshape(b, nkv, g * t, hd)
  scores = jnp.einsum("bkqd,bskd->bkqs", qg, k.astype(qg.dtype),
                      preferred_element_type=jnp.float32).reshape(b, nkv, g, t, s)
  allowed = (jnp.arange(s)[None, None, :] <= q_slots[:, :, None]) & (key_mask[:, None, :] > 0)
  if key_mask.dtype != jnp.bool_:  # packed: segment ids, T == S
    allowed = allowed & (key_mask[:, :, None] == key_mask[:, None, :])  # [B, T, S]
  scores = jnp.where(allowed[:, None, None], scores / math.sqrt(hd), jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b, nkv, g * t, s)
  out = jnp.einsum("bkqs,bskd->bkqd", probs, v).reshape(b, nkv, g, t, hd)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, nh * hd)


def segment_ids(key_mask: Array) -> Array:
  """[B, T] int32: 0 for padding, else the segment (1 for every real token when unpacked)."""
  return key_mask.astype(jnp.int32)


def dot_product_attention(q, k, v, key_mask):
  """`jax.nn.dot_product_attention`, causal within segments -> [B, T, N, D]."""
  seg = segment_ids(key_mask)
  same = (seg[:, :, None] == seg[:, None, :])[:, None]  # [B, 1, T, S]
  return jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=same,
                                      is_causal=True, implementation=None)


def splash_block(t: int) -> tuple[int, int]:
  """(padded length, block size) for a sequence of `t` tokens."""
  padded = -(-t // SPLASH_LANES) * SPLASH_LANES
  return padded, next(bk for bk in SPLASH_BLOCKS if padded % bk == 0)


def _splash_local(q, k, v, seg, *, block, interpret):
  """Splash on one shard: q [B, n, T, D], k / v [B, kv, T, D], seg [B, T] -> [B, n, T, D]."""
  # Imported here so the Pallas/Mosaic stack loads only when splash is actually used.
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  n, t = q.shape[1], q.shape[2]
  mask = sm.MultiHeadMask([sm.CausalMask((t, t)) for _ in range(n)])
  sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                        block_q_dq=block, block_kv_dq=block)
  kernel = sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                              interpret=interpret)
  return jax.vmap(kernel)(q, k, v, sk.SegmentIds(q=seg, kv=seg))


def _mesh_specs(b: int, n: int, kv: int):
  """(mesh, batch axes, head axis) of the current mesh for shard_map, or (None, ...) without one.

  Axes that do not divide the batch (or both head counts) are left out: those dims replicate."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    return None, None, None
  names = mesh.axis_names
  batch = tuple(a for a in BATCH_AXES if a in names and mesh.shape[a] > 1)
  if batch and b % math.prod(mesh.shape[a] for a in batch):
    batch = ()
  head = HEAD_AXIS if HEAD_AXIS in names and mesh.shape[HEAD_AXIS] > 1 else None
  if head and (n % mesh.shape[head] or kv % mesh.shape[head]):
    head = None
  return mesh, (batch or None), head


def splash_attention(q, k, v, key_mask, interpret: bool | None = None):
  """Pallas splash attention, causal within segments -> [B, T, N, D]."""
  if interpret is None:
    interpret = jax.default_backend() != "tpu"
  b, t, n, d = q.shape
  kv = k.shape[2]
  padded, block = splash_block(t)
  seg = segment_ids(key_mask)
  q = (q / math.sqrt(d)).astype(q.dtype)
  k, v = k.astype(q.dtype), v.astype(q.dtype)
  if padded != t:
    pad = [(0, 0), (0, padded - t), (0, 0), (0, 0)]
    q, k, v = jnp.pad(q, pad), jnp.pad(k, pad), jnp.pad(v, pad)
    seg = jnp.pad(seg, [(0, 0), (0, padded - t)])
  q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))  # [B, heads, T, D]
  local = functools.partial(_splash_local, block=block, interpret=interpret)
  mesh, batch, head = _mesh_specs(b, n, kv)
  if mesh is not None and (batch or head):
    qspec, sspec = P(batch, head, None, None), P(batch, None)
    local = jax.shard_map(local, mesh=mesh, in_specs=(qspec, qspec, qspec, sspec),
                          out_specs=qspec, check_vma=False)
  out = local(q, k, v, seg)
  return out.transpose(0, 2, 1, 3)[:, :t]
