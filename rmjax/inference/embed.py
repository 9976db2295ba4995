"""ArmoRM embedding extraction: one backbone forward -> (response, prompt) embeddings, cached.

Rows are (messages, response) rendered by `ChatEncoder` (prompt with generation prompt +
response + end of turn = the whole conversation). The response embedding is the last token's
post-norm hidden state; the prompt embedding is the one at the token that closes the last user
turn, found by `prompt_end_pattern` (from the rendered chat template) in the same forward.
Batches are sorted by length, padded to power-of-two buckets, sharded over the mesh's batch axes
and run through one jitted forward; results go back to input order. `cached` stores them as
`NAME.npz` + `NAME.json` (data order and the settings that produced them) so stage 1 and stage 2
never recompute a forward.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from rmjax import sharding as shd
from rmjax.models.armorm import gather_embeddings
from rmjax.models.llama import Llama

_SENTINEL = "RMJAXSENTINEL"


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


def encode_rows(encoder, items: Sequence[tuple]) -> list:
  """[(messages, response)] -> token id lists of the whole conversation (truncated to max)."""
  out = []
  for messages, response in items:
    p, r, _ = encoder.encode_pair(messages, response)
    out.append(list(p) + list(r))
  return out


def _bucket(n: int) -> int:
  b = 16
  while b < n:
    b *= 2
  return b


def embed_rows(cfg, backbone_params, rows: Sequence[list], pattern: Sequence[int], *,
               batch_size: int = 16, mesh=None, pad_id: int = 0, progress: bool = True,
               desc: str = "embed") -> tuple:
  """(h_response [N, D], h_prompt [N, D]) float32 numpy for token rows, in input order."""
  mesh = mesh or shd.make_mesh((-1, 1, 1))
  div = shd.batch_divisor(mesh)
  batch_size = max(div, batch_size - batch_size % div)
  model = Llama(cfg)
  pattern = tuple(int(t) for t in pattern)
  n, d = len(rows), cfg.hidden_size
  h_resp, h_prompt = np.zeros((n, d), np.float32), np.zeros((n, d), np.float32)
  order = np.argsort([len(r) for r in rows], kind="stable")

  def fwd(params, ids, mask):
    hidden = model.apply({"params": params}, ids, mask, output="hidden")
    return gather_embeddings(hidden, ids, mask, pattern)

  with jax.set_mesh(mesh), nn.logical_axis_rules(shd.DEFAULT_RULES):
    params = shd.shard_params(backbone_params, cfg, mesh)
    f = jax.jit(fwd)
    for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress):
      idx = order[start:start + batch_size]
      t = _bucket(max(len(rows[i]) for i in idx))
      ids = np.full((batch_size, t), pad_id, np.int32)
      mask = np.zeros((batch_size, t), np.int32)
      for k, i in enumerate(idx):
        ids[k, :len(rows[i])], mask[k, :len(rows[i])] = rows[i], 1
      mask[len(idx):, 0] = 1  # padding rows keep one visible token
      b = shd.shard_batch({"ids": ids, "mask": mask}, mesh)
      hr, hp = jax.device_get(f(params, b["ids"], b["mask"]))
      h_resp[idx], h_prompt[idx] = hr[:len(idx)], hp[:len(idx)]
  return h_resp, h_prompt


def fingerprint(rows: Sequence[list], settings: dict) -> str:
  """Hash of the exact token rows and settings: a cache is reused only when both match."""
  h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
  for r in rows:
    h.update(np.asarray(r, np.int32).tobytes() + b"|")
  return h.hexdigest()


def cached(directory: str, name: str, keys: Sequence[str], rows: Sequence[list], settings: dict,
           compute: Callable[[], tuple]) -> tuple:
  """(h_response, h_prompt): loaded from `directory/name.npz` when its JSON sidecar records the
  same fingerprint, else computed and written (npz + JSON with `keys` = the data order)."""
  os.makedirs(directory, exist_ok=True)
  npz, meta = os.path.join(directory, f"{name}.npz"), os.path.join(directory, f"{name}.json")
  fp = fingerprint(rows, settings)
  if os.path.exists(npz) and os.path.exists(meta):
    with open(meta) as f:
      info = json.load(f)
    if info.get("fingerprint") == fp:
      with np.load(npz) as z:
        return z["h_response"], z["h_prompt"]
  h_resp, h_prompt = compute()
  np.savez(npz, h_response=h_resp, h_prompt=h_prompt)
  with open(meta, "w") as f:
    json.dump({"fingerprint": fp, "settings": settings, "rows": len(rows), "order": list(keys)}, f)
  return h_resp, h_prompt
