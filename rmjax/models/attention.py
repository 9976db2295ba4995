"""Attention backends behind `LlamaConfig.attention`: pure functions of (q, k, v, masks).

Layouts: q [B, T, N, D], k / v [B, S, K, D] with N a multiple of K (grouped-query attention; query
head h reads KV head h // (N // K), the HF order). `key_mask` [B, S] marks real tokens (left or
right padding), `q_slots` [B, T] the cache slot of each query. Every backend returns [B, T, N * D].

Packed rows (no cache, T == S): an INTEGER `key_mask` (`packed_mask`) holds per token its segment
id in the low 16 bits (0 = padding, k >= 1 = the k-th sequence of the row) and, in the bits above,
the segment id of a shared prefix it also sees (0 = none). A query sees the causally earlier keys
of its own segment and of its prefix segment: plain packing has no prefixes; prompt-shared
packing (`rmjax.data.packing`, `data.share_prompt`) lays out prompt, chosen response and
rejected response once each, both responses seeing the prompt as their prefix, so each response
sees exactly the context it has in its own padded row. A boolean `key_mask` is the padding mask
(one sequence per row).

- 'xla': the reference einsum path (scores in float32, masked with finfo.min); handles any
  `q_slots`, so it is the one the KV-cache path (prefill into a cache and decode steps) uses.
- 'blocked': exact attention in query blocks of `BLOCK` rows that skip the key blocks above the
  causal diagonal, with a hand-written flash-style VJP (the backward recomputes the probabilities
  from the saved log-sum-exp instead of differentiating the softmax). Pure XLA, any platform;
  the fast path on CPU (experiments/benchmarks/RESULTS.md).
- 'dot_product': `jax.nn.dot_product_attention(implementation=None)`: XLA picks the
  implementation (in jax 0.10 that is still its XLA one; cuDNN needs `implementation='cudnn'`
  and cannot express left padding, so it is not forced here).
- 'splash': the Pallas TPU splash-attention kernel under `jax.shard_map` over the batch axes
  ('data', 'fsdp') and the head axis ('tensor') of the mesh set with `jax.set_mesh` (no mesh:
  called directly). Off TPU it runs in Pallas interpret mode (slow; for tests). Its segment ids
  are equality masks: prompt-shared packing cannot be expressed (refused by config validation).
- 'auto': splash on TPU, dot_product on GPU, blocked elsewhere (`resolve`).

blocked, dot_product and splash compute self-attention without a cache (S == T, q_slots ==
arange(T)). For dot_product and splash, causality plus padding are expressed as segment ids:
real tokens are segment 1, padding 0, and a query sees causally earlier keys of its own segment.
For real tokens that is exactly the xla mask; padding rows (whose outputs nothing reads) attend
to earlier padding instead of getting the xla path's uniform row, so outputs at padded positions
differ between backends, and no row is ever empty (no NaN in forward or backward).

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

BACKENDS = ("xla", "blocked", "dot_product", "splash", "auto")
PREFIX_SHIFT = 16  # packed key mask: segment id | prefix segment id << PREFIX_SHIFT
SEGMENT_BITS = (1 << PREFIX_SHIFT) - 1
BLOCK = 64  # query rows per block of the blocked path (fastest of 64 / 128 / 256 on CPU at T=256)
BATCH_AXES = ("data", "fsdp")
HEAD_AXIS = "tensor"
SPLASH_LANES = 128
SPLASH_BLOCKS = (512, 256, 128)


def resolve(backend: str, platform: str | None = None) -> str:
  """The concrete backend: 'auto' becomes splash on TPU, dot_product on GPU, blocked elsewhere."""
  if backend not in BACKENDS:
    raise ValueError(f"attention must be one of {', '.join(BACKENDS)}, got {backend!r}")
  if backend != "auto":
    return backend
  platform = platform or jax.default_backend()
  return {"tpu": "splash", "gpu": "dot_product", "cuda": "dot_product",
          "rocm": "dot_product"}.get(platform, "blocked")


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
  if backend == "blocked":
    return blocked_attention(q, k, v, key_mask)
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
  allowed = allowed_mask(key_mask, q_slots, s)
  scores = jnp.where(allowed[:, None, None], scores / math.sqrt(hd), jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b, nkv, g * t, s)
  out = jnp.einsum("bkqs,bskd->bkqd", probs, v).reshape(b, nkv, g, t, hd)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, nh * hd)


def packed_mask(segment_ids: Array, prefix_ids: Array | None = None) -> Array:
  """The int key mask of packed rows: `segment_ids` [B, T] (0 = padding) and, optionally,
  `prefix_ids` [B, T], the segment id of the shared prefix each token also sees (0 = none)."""
  seg = segment_ids.astype(jnp.int32)
  if prefix_ids is None:
    return seg
  return seg | (prefix_ids.astype(jnp.int32) << PREFIX_SHIFT)


def segment_ids(key_mask: Array) -> Array:
  """[B, T] int32: 0 for padding, else the segment (1 for every real token when unpacked)."""
  if key_mask.dtype == jnp.bool_:
    return key_mask.astype(jnp.int32)
  return key_mask.astype(jnp.int32) & SEGMENT_BITS


def allowed_mask(key_mask: Array, q_slots: Array, s: int) -> Array:
  """[B, T, S] bool: key slot s is visible to query t (causal, real, and for packed rows in
  the query's segment or its prefix segment)."""
  allowed = jnp.arange(s)[None, None, :] <= q_slots[:, :, None]
  if key_mask.dtype == jnp.bool_:
    return allowed & key_mask[:, None, :]
  seg = key_mask & SEGMENT_BITS
  prefix = key_mask >> PREFIX_SHIFT
  kseg = seg[:, None, :]
  return allowed & (kseg > 0) & ((kseg == seg[:, :, None]) | (kseg == prefix[:, :, None]))


def dot_product_attention(q, k, v, key_mask):
  """`jax.nn.dot_product_attention`, causal within segments (and prefixes) -> [B, T, N, D]."""
  if key_mask.dtype == jnp.bool_:
    seg = segment_ids(key_mask)
    mask = (seg[:, :, None] == seg[:, None, :])[:, None]  # [B, 1, T, S]; padding sees padding
  else:
    t = key_mask.shape[1]
    seg = segment_ids(key_mask)
    mask = allowed_mask(key_mask, jnp.broadcast_to(jnp.arange(t), seg.shape), t)
    mask = (mask | (seg[:, :, None] == 0))[:, None]  # padding rows see earlier keys: no empty row
  return jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask,
                                      is_causal=True, implementation=None)


def _query_blocks(t: int, block: int):
  return [(a, min(a + block, t)) for a in range(0, t, block)]


def blocked_attention(q, k, v, key_mask, block: int = BLOCK):
  """Exact causal attention in query blocks -> [B, T, N * D] (see the module docstring).

  Query block [a, e) reads keys [0, e) only, so about half of the T x T scores of a causal
  layer are never computed; the VJP recomputes each block's probabilities from the saved
  log-sum-exp (flash-attention style) instead of keeping or differentiating the softmax."""
  b, t, nh, hd = q.shape
  nkv = k.shape[2]
  g = nh // nkv
  allowed = allowed_mask(key_mask, jnp.broadcast_to(jnp.arange(t), (b, t)), t)
  qg = (q * (1.0 / math.sqrt(hd))).astype(q.dtype)
  qg = qg.reshape(b, t, nkv, g, hd).transpose(0, 2, 3, 1, 4)  # [B, K, g, T, D]
  kh = k.astype(q.dtype).transpose(0, 2, 1, 3)  # [B, K, S, D]
  vh = v.astype(q.dtype).transpose(0, 2, 1, 3)
  out = _blocked_core(qg, kh, vh, allowed, block)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, nh * hd)


_NEG = float(jnp.finfo(jnp.float32).min)


def _block_scores(q, k, allowed, a, e):
  """Masked float32 scores of query rows [a, e) against keys [0, e): [B, K, g, e-a, e]."""
  s = jnp.einsum("bkgqd,bksd->bkgqs", q[:, :, :, a:e], k[:, :, :e],
                 preferred_element_type=jnp.float32)
  return jnp.where(allowed[:, None, None, a:e, :e], s, _NEG)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _blocked_core(q, k, v, allowed, block):
  """q [B, K, g, T, D] (pre-scaled), k / v [B, K, T, D], allowed [B, T, T] -> [B, K, g, T, D]."""
  return _blocked_fwd(q, k, v, allowed, block)[0]


def _blocked_fwd(q, k, v, allowed, block):
  outs, lses = [], []
  for a, e in _query_blocks(q.shape[3], block):
    s = _block_scores(q, k, allowed, a, e)
    m = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.exp(s - m)  # a row with no visible key (padding) is uniform, never empty
    l = jnp.sum(p, axis=-1, keepdims=True)
    o = jnp.einsum("bkgqs,bksd->bkgqd", p.astype(v.dtype), v[:, :, :e],
                   preferred_element_type=jnp.float32) / l
    outs.append(o.astype(q.dtype))
    lses.append(m + jnp.log(l))
  out = jnp.concatenate(outs, axis=3)
  return out, (q, k, v, allowed, out, jnp.concatenate(lses, axis=3))


def _blocked_bwd(block, res, d_out):
  q, k, v, allowed, out, lse = res
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
  dq = []
  dk = jnp.zeros(k.shape, jnp.float32)
  dv = jnp.zeros(v.shape, jnp.float32)
  for a, e in _query_blocks(q.shape[3], block):
    p = jnp.exp(_block_scores(q, k, allowed, a, e) - lse[:, :, :, a:e])
    do = d_out[:, :, :, a:e]
    dv = dv.at[:, :, :e].add(jnp.einsum("bkgqs,bkgqd->bksd", p.astype(do.dtype), do,
                                        preferred_element_type=jnp.float32))
    dp = jnp.einsum("bkgqd,bksd->bkgqs", do, v[:, :, :e], preferred_element_type=jnp.float32)
    ds = (p * (dp - delta[:, :, :, a:e])).astype(q.dtype)
    dq.append(jnp.einsum("bkgqs,bksd->bkgqd", ds, k[:, :, :e], preferred_element_type=jnp.float32))
    dk = dk.at[:, :, :e].add(jnp.einsum("bkgqs,bkgqd->bksd", ds, q[:, :, :, a:e],
                                        preferred_element_type=jnp.float32))
  return (jnp.concatenate(dq, axis=3).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None)


_blocked_core.defvjp(_blocked_fwd, _blocked_bwd)


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
