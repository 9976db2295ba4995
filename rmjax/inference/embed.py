"""The one padded, bucketed, sharded, jitted forward over token rows, and its on-disk cache.

`batched_forward(fn, params, rows)` is how rmjax runs a model over a list of variable-length
token rows (scoring, backbone features for head-only training and ArmoRM, SALMON judging):
rows are sorted by length, padded (right, or left for next-token read-outs) to a power-of-two
bucket (`bucket_length`: a handful of compiled shapes), sharded over the mesh's batch axes,
run through `fn(params, ids, mask)` and returned as numpy in input order. Padding rows keep one
visible token so softmax stays finite.

`cached(directory, name, rows, settings, compute)` stores arrays as NAME.npz with a NAME.json
sidecar holding a fingerprint of the exact token rows and the settings (model spec, a hash of
the backbone weights, lengths...): a cache is reused only when both match.

Features: `pooled_features` (last-token post-norm hidden state, what reward heads read) and
`armo_features` (ArmoRM: the response embedding plus the prompt embedding at the token that
closes the last user turn, found by `prompt_end_pattern`, in the same forward).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from rmjax import sharding as shd
from rmjax.models.armorm import gather_embeddings
from rmjax.models.heads import pool_last
from rmjax.models.llama import Llama, LlamaConfig

MIN_BUCKET = 32
_SENTINEL = "RMJAXSENTINEL"


def bucket_length(n: int, minimum: int = MIN_BUCKET) -> int:
  """The padded length of a batch whose longest row has n tokens: a power of two >= minimum."""
  b = minimum
  while b < n:
    b *= 2
  return b


def pad_rows(rows: Sequence[Sequence[int]], batch_size: int, length: int, pad_id: int = 0,
             side: str = "right") -> tuple[np.ndarray, np.ndarray]:
  """(ids, mask) [batch_size, length]; rows longer than `length` keep their last tokens."""
  ids = np.full((batch_size, length), pad_id, np.int32)
  mask = np.zeros((batch_size, length), np.int32)
  for i, r in enumerate(rows):
    r = list(r)[-length:]
    sl = slice(0, len(r)) if side == "right" else slice(length - len(r), length)
    ids[i, sl], mask[i, sl] = r, 1
  mask[len(rows):, 0 if side == "right" else -1] = 1  # padding rows: one visible token
  return ids, mask


def batched_forward(fn: Callable, params: Any, rows: Sequence[Sequence[int]], *,
                    batch_size: int = 16, pad_id: int = 0, mesh=None, side: str = "right",
                    max_length: int | None = None, progress: bool = False,
                    desc: str = "forward", bucket_multiple: int | None = None) -> Any:
  """`fn(params, ids, mask)` (jitted; returns a pytree of [B, ...] arrays) over every row, in
  length-sorted, bucketed batches; the outputs come back as numpy in input order.
  `bucket_multiple`: pad to a multiple of it instead of a power of two (fewer padded tokens,
  more compiled shapes: for long, length-sorted streams such as a feature cache)."""
  mesh = mesh or shd.make_mesh((-1, 1, 1))
  div = shd.batch_divisor(mesh)
  batch_size = max(div, batch_size - batch_size % div)
  n = len(rows)
  order = np.argsort([len(r) for r in rows], kind="stable")
  out = None
  with jax.set_mesh(mesh), nn.logical_axis_rules(shd.DEFAULT_RULES):
    for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress):
      idx = order[start:start + batch_size]
      longest = max(len(rows[i]) for i in idx)
      t = (-(-longest // bucket_multiple) * bucket_multiple if bucket_multiple
           else bucket_length(longest))
      if max_length:
        t = min(t, max_length)
      ids, mask = pad_rows([rows[i] for i in idx], batch_size, t, pad_id, side)
      b = shd.shard_batch({"ids": ids, "mask": mask}, mesh, global_batch=True)
      res = _to_host(fn(params, b["ids"], b["mask"]))
      if out is None:
        out = jax.tree_util.tree_map(lambda x: np.zeros((n,) + x.shape[1:], x.dtype), res)
      jax.tree_util.tree_map(lambda o, x: o.__setitem__(idx, x[:len(idx)]), out, res)
  return out


def _to_host(tree):
  """Outputs as numpy; on several processes each holds only its rows, so gather them first."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


# ------------------------------------------------------------------------------- features

@functools.partial(jax.jit, static_argnames=("cfg",))
def _pooled(params, ids, mask, cfg: LlamaConfig):
  hidden = Llama(cfg).apply({"params": params}, ids, mask, output="hidden")
  return pool_last(hidden, mask).astype(jnp.float32)          # [B, D]


@functools.partial(jax.jit, static_argnames=("cfg", "pattern"))
def _armo(params, ids, mask, cfg: LlamaConfig, pattern: tuple):
  hidden = Llama(cfg).apply({"params": params}, ids, mask, output="hidden")
  return gather_embeddings(hidden, ids, mask, pattern)


def pooled_features(cfg: LlamaConfig, backbone_params, rows, **kw) -> np.ndarray:
  """Last-token hidden states [N, D] float32 of right-padded token rows (what heads read)."""
  return batched_forward(functools.partial(_pooled, cfg=cfg), backbone_params, rows, **kw)


def armo_features(cfg: LlamaConfig, backbone_params, rows, pattern: Sequence[int], **kw) -> dict:
  """{'h_response', 'h_prompt'} [N, D] float32 (ArmoRM's two embeddings, one forward)."""
  fn = functools.partial(_armo, cfg=cfg, pattern=tuple(int(t) for t in pattern))
  h_resp, h_prompt = batched_forward(fn, backbone_params, rows, **kw)
  return {"h_response": h_resp, "h_prompt": h_prompt}


def prompt_end_pattern(tokenizer) -> tuple:
  """Token ids of (text closing a user turn + generation prompt), read off the chat template.

  Llama-3 gives `<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n` (the ArmoRM
  pattern), ChatML `<|im_end|>\\n<|im_start|>assistant\\n`; its first token closes the user turn."""
  msgs = [{"role": "user", "content": _SENTINEL}]
  plain = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
  with_gen = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
  closing = plain[plain.index(_SENTINEL) + len(_SENTINEL):]
  gen = with_gen[len(plain):] if with_gen.startswith(plain) else ""
  return tuple(int(i) for i in tokenizer.encode(closing + gen, add_special_tokens=False))


def encode_rows(encoder, items: Sequence[tuple], truncated: list | None = None) -> list:
  """[(messages, response)] -> token id lists of the whole conversation (truncated to max);
  `truncated` (a list) gets one bool per row: whether it was cut."""
  out = []
  for messages, response in items:
    p, r, cut = encoder.encode_pair(messages, response)
    out.append(list(p) + list(r))
    if truncated is not None:
      truncated.append(bool(cut))
  return out


def encode_pair_rows(encoder, pairs: Sequence, truncated: list | None = None) -> tuple:
  """Pairs (`.messages`, `.chosen`, `.rejected`) -> (chosen rows, rejected rows), each pair's
  prompt cut once for both responses (`rmjax.data.tokenize.truncate`, as training batches and
  `rmjax eval` cut it); `truncated` (a list) gets one bool per pair: whether it was cut."""
  rows_c, rows_r = [], []
  for p in pairs:
    prompt, (c, r), cut = encoder.encode_responses(p.messages, [p.chosen, p.rejected])
    rows_c.append(list(prompt) + list(c))
    rows_r.append(list(prompt) + list(r))
    if truncated is not None:
      truncated.append(bool(cut))
  return rows_c, rows_r


# ---------------------------------------------------------------------------------- cache

def params_fingerprint(params) -> str:
  """A short hash of a param tree's first leaf and shapes: which weights made the features."""
  leaves = jax.tree_util.tree_leaves(params)
  h = hashlib.sha256(np.asarray(leaves[0]).tobytes())
  h.update(json.dumps([list(np.shape(x)) for x in leaves]).encode())
  return h.hexdigest()[:16]


def fingerprint(rows: Sequence[Sequence[int]], settings: dict) -> str:
  """Hash of the exact token rows and settings: a cache is reused only when both match."""
  h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
  for r in rows:
    h.update(np.asarray(r, np.int32).tobytes() + b"|")
  return h.hexdigest()


def cached(directory: str, name: str, rows: Sequence[Sequence[int]], settings: dict,
           compute: Callable[[], dict]) -> dict:
  """Arrays from `directory/name.npz` when its sidecar records the same fingerprint; else
  `compute()` (a dict of arrays), written atomically (npz, then the sidecar)."""
  os.makedirs(directory, exist_ok=True)
  npz, meta = os.path.join(directory, f"{name}.npz"), os.path.join(directory, f"{name}.json")
  fp = fingerprint(rows, settings)
  if os.path.exists(npz) and os.path.exists(meta):
    with open(meta) as f:
      info = json.load(f)
    if info.get("fingerprint") == fp:
      with np.load(npz) as z:
        return {k: z[k] for k in z.files}
  arrays = compute()
  tmp = npz + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, npz)
  with open(meta + ".tmp", "w") as f:
    json.dump({"fingerprint": fp, "settings": settings, "rows": len(rows)}, f, default=str)
  os.replace(meta + ".tmp", meta)
  return arrays
