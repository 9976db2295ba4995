"""Frozen-backbone fast path for ensembles: cache pooled embeddings, then train K heads on them.

The backbone runs once over every chosen and rejected sequence (pooled last-token hidden state,
[N, D] per side, saved as .npz keyed by model spec, data and length); the K linear heads (the
same stacked [K, D] kernel + [K] bias as `EnsembleHead`, one einsum) then train with optax AdamW
on those arrays inside one `lax.scan` -- seconds instead of a backbone pass per step. Each
member keeps its own BT loss, init key fold_in(PRNGKey(seed), k) and bootstrap weights, exactly
as the full `rmjax.train.ensemble` task.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rmjax.models.heads import pool_last
from rmjax.models.llama import Llama, LlamaConfig


@functools.partial(jax.jit, static_argnames=("cfg",))
def _pooled(params, ids, mask, cfg: LlamaConfig):
  hidden = Llama(cfg).apply({"params": params}, ids, mask, output="hidden")
  return pool_last(hidden, mask).astype(jnp.float32)          # [B, D]


def pooled_embeddings(params, cfg: LlamaConfig, seqs, pad_id: int = 0, batch_size: int = 8,
                      multiple: int = 32, progress: bool = False) -> np.ndarray:
  """Pooled last-token hidden states [N, D] of right-padded token sequences (list of int lists).

  Rows are processed in length order (few padded tokens; lengths bucketed to `multiple` so jit
  compiles a handful of shapes) and returned in input order.
  """
  from tqdm.auto import tqdm
  n = len(seqs)
  out = np.zeros((n, cfg.hidden_size), np.float32)
  order = np.argsort([len(s) for s in seqs], kind="stable")
  for start in tqdm(range(0, n, batch_size), desc="embed", disable=not progress):
    idx = order[start:start + batch_size]
    t = -(-max(len(seqs[i]) for i in idx) // multiple) * multiple
    ids = np.full((batch_size, t), pad_id, np.int32)
    mask = np.zeros((batch_size, t), np.int32)
    for row, i in enumerate(idx):
      ids[row, :len(seqs[i])], mask[row, :len(seqs[i])] = seqs[i], 1
    mask[len(idx):, 0] = 1
    out[idx] = np.asarray(_pooled(params, ids, mask, cfg))[:len(idx)]
  return out


def cache_key(**parts) -> str:
  return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached(path: str, compute):
  """Load arrays from `path` (.npz) or compute them (a dict of arrays) and save."""
  if os.path.exists(path):
    with np.load(path) as z:
      return {k: z[k] for k in z.files}
  arrays = compute()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  np.savez(path, **arrays)
  return arrays


def init_heads(members: int, dim: int, seed: int = 0) -> dict:
  """Stacked heads like EnsembleHead: kernel [K, D] with member k ~ fold_in(PRNGKey(seed), k)."""
  base = jax.random.PRNGKey(seed)
  rows = jnp.stack([jax.random.normal(jax.random.fold_in(base, k), (dim,)) for k in range(members)])
  return {"kernel": rows / dim ** 0.5, "bias": jnp.zeros((members,), jnp.float32)}


def head_scores(head: dict, emb) -> jax.Array:
  """[N, D] -> [N, K]: one einsum, as EnsembleHead."""
  return jnp.einsum("bd,kd->bk", jnp.asarray(emb, jnp.float32), head["kernel"]) + head["bias"]


def train_heads(emb_c, emb_r, members: int, *, steps: int = 300, lr: float = 1e-2,
                batch_size: int = 256, seed: int = 0, boot=None, weight_decay: float = 1e-4,
                label_smoothing: float = 0.0, standardize_inputs: bool = True):
  """Train K heads on cached pairs: emb_c, emb_r [N, D]; boot [N, K] bootstrap weights or None.

  Minibatches of `batch_size` rows drawn per step (with replacement when N < batch_size) from
  PRNGKey(seed); AdamW; returns (head params, per-step mean member loss [steps]). With
  `standardize_inputs`, features are centred/scaled by the chosen+rejected mean/std first and the
  returned head is folded back so it applies to raw embeddings.
  """
  from rmjax.train.ensemble import member_bt_losses
  ec, er = jnp.asarray(emb_c, jnp.float32), jnp.asarray(emb_r, jnp.float32)
  n, d = ec.shape
  mu = jnp.zeros((d,)) if not standardize_inputs else jnp.concatenate([ec, er]).mean(0)
  sd = jnp.ones((d,)) if not standardize_inputs else jnp.concatenate([ec, er]).std(0) + 1e-6
  xc, xr = (ec - mu) / sd, (er - mu) / sd
  table = jnp.ones((n, members)) if boot is None else jnp.asarray(boot, jnp.float32)
  head = init_heads(members, d, seed)
  tx = optax.adamw(lr, weight_decay=weight_decay)
  opt = tx.init(head)
  bs = min(batch_size, n)

  def loss(h, idx):
    per = member_bt_losses(head_scores(h, xc[idx]), head_scores(h, xr[idx]), jnp.ones((bs,)),
                           table[idx], label_smoothing=label_smoothing)
    return jnp.mean(per)

  def step(carry, key):
    h, o = carry
    idx = jax.random.choice(key, n, (bs,), replace=n < batch_size)
    l, g = jax.value_and_grad(loss)(h, idx)
    up, o = tx.update(g, o, h)
    return (optax.apply_updates(h, up), o), l

  keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), 10_000), steps)
  (head, _), hist = jax.jit(lambda c, k: jax.lax.scan(step, c, k))((head, opt), keys)
  raw = {"kernel": head["kernel"] / sd, "bias": head["bias"] - jnp.einsum("kd,d->k", head["kernel"] / sd, mu)}
  return jax.device_get(raw), np.asarray(hist)


def tokenized_embeddings(params, cfg, tokenized, batch_size: int = 8, progress: bool = False) -> dict:
  """{'chosen': [N, D], 'rejected': [N, D]} for rmjax.data.batching.TokenizedPairs."""
  return {side: pooled_embeddings(params, cfg, [list(s) for s in getattr(tokenized, side)],
                                  tokenized.pad_id, batch_size, progress=progress)
          for side in ("chosen", "rejected")}


def run(config, workdir: str) -> dict:
  """Fast-path training for `rmjax train` (ensemble.cached_embeddings): embeddings cached under
  workdir/embeddings (or ensemble.cache_dir), K heads trained, eval written, and a checkpoint
  with backbone + heads saved so `rmjax score/eval --workdir` work as for the full task."""
  from rmjax.data.batching import tokenize_pairs
  from rmjax.data.tokenize import ChatEncoder
  from rmjax.train import builders
  from rmjax.train.checkpoint import Checkpointer
  from rmjax.train.ensemble import bootstrap_weights, summarize_ensemble
  from rmjax.train.metrics_writer import MetricWriter
  e, d = config.ensemble, config.data
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  cfg, backbone = builders.backbone(config)
  with open(os.path.join(workdir, "model_config.json"), "w") as f:
    json.dump(cfg.to_dict(), f, indent=2)
  tok = builders.tokenizer(config)
  train_ex, eval_ex, stats = builders.train_eval_pairs(config)
  enc = ChatEncoder(tok, d.max_length)
  cache_dir = e.cache_dir or os.path.join(workdir, "embeddings")
  t0 = time.perf_counter()
  embs = {}
  for split, ex in (("train", train_ex), ("eval", eval_ex)):
    if not ex:
      continue
    key = cache_key(spec=config.model.spec, source=d.source, eval=d.eval_source, split=split,
                    n=len(ex), max_length=d.max_length, seed=config.seed, limit=d.limit)
    tokd, _ = tokenize_pairs(ex, enc, on_overlong="truncate")
    embs[split] = cached(os.path.join(cache_dir, f"{split}-{key}.npz"),
                         lambda: tokenized_embeddings(backbone, cfg, tokd, config.train.batch_size))
  t_embed = time.perf_counter() - t0
  boot = None
  if e.bootstrap != "none":
    boot = bootstrap_weights(len(train_ex), e.members, e.bootstrap, e.seed)
  t0 = time.perf_counter()
  head, hist = train_heads(embs["train"]["chosen"], embs["train"]["rejected"], e.members,
                           steps=e.head_steps, lr=e.head_lr, batch_size=e.head_batch_size,
                           seed=e.seed, boot=boot, weight_decay=e.head_weight_decay,
                           label_smoothing=config.loss.label_smoothing)
  final = {"step": e.head_steps, "loss": float(hist[-1]), "embed_s": t_embed,
           "head_train_s": time.perf_counter() - t0}
  writer = MetricWriter(workdir, tensorboard=False)
  for i in range(0, len(hist), max(config.train.log_every, 1)):
    writer.write(i + 1, {"loss": float(hist[i])})
  if "eval" in embs:
    mc = np.asarray(head_scores(head, embs["eval"]["chosen"]))
    mr = np.asarray(head_scores(head, embs["eval"]["rejected"]))
    rep = summarize_ensemble(eval_ex)({"chosen": mc.mean(1), "rejected": mr.mean(1),
                                       "chosen_members": mc, "rejected_members": mr,
                                       "weight": np.ones(len(mc))})
    final.update({k: v for k, v in writer.write(e.head_steps, rep, prefix="eval_").items()
                  if k != "step"})
  writer.close()
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  params = {"backbone": backbone, "reward_head": {"kernel": np.asarray(head["kernel"]),
                                                  "bias": np.asarray(head["bias"])}}
  ckpt.save(e.head_steps, {"step": np.int32(e.head_steps), "params": params}, {"step": e.head_steps})
  ckpt.close()
  return final
