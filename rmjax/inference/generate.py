"""Batched autoregressive generation from the rmjax Llama with a preallocated KV cache.

Two jitted functions, as in tunix's sampler: `_prefill` runs the left-padded prompt once and
fills the cache; `_decode` runs the whole token loop as one `lax.while_loop` over that cache and
stops as soon as every row has emitted an EOS (or after `max_new_tokens`). Both are jitted with
the model config and the structure of the `SamplingConfig` (length, greedy or not, top-k, top-p
on or off, number of EOS ids) as static arguments; temperature, top_p, EOS and pad ids are
traced values. Repeated calls with the same shapes reuse the compiled code; `left_pad` buckets
prompt lengths to a multiple for the same reason.

Everything is a pure function of (params, prompts, rng): token i is drawn with
`fold_in(rng, i)`, so the same rng gives the same samples.

Cache layout (see `rmjax.models.llama.init_cache`): slots [0, T) hold the left-padded prompt,
generated token i is written at slot T + i when it is fed back. A row's positions skip its
padding (`cumsum(mask) - 1`), so generated token i sits at position `prompt_len + i`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rmjax import sharding as rsharding
from rmjax.models.llama import Llama, LlamaConfig, init_cache, positions_from_mask

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How to pick tokens (frozen, hashable). Only its `structure()` is static under jit.

  temperature: 0 means greedy (argmax); otherwise logits are divided by it before sampling.
  top_k: keep the k most likely tokens (0 = off). top_p: nucleus sampling, keep the smallest
  set of most likely tokens whose probability reaches top_p, always at least one (1.0 = off).
  eos_ids: tokens that end a row (kept in the output, masked 1). pad_id: fills rows after EOS.
  """
  max_new_tokens: int = 64
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  eos_ids: tuple = ()
  pad_id: int = 0

  def __post_init__(self):
    if isinstance(self.eos_ids, int):
      object.__setattr__(self, "eos_ids", (self.eos_ids,))
    object.__setattr__(self, "eos_ids", tuple(int(e) for e in self.eos_ids))
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0

  def replace(self, **kw) -> "SamplingConfig":
    return dataclasses.replace(self, **kw)

  def structure(self) -> "_Structure":
    """What the compiled decode loop depends on; everything else is passed as traced values."""
    return _Structure(self.max_new_tokens, self.greedy, self.top_k, self.top_p < 1.0,
                      max(len(self.eos_ids), 1))

  def values(self) -> dict:
    """The traced knobs: changing them (temperature, top_p, EOS ids, pad) does not recompile."""
    return {"temperature": jnp.float32(self.temperature if self.temperature else 1.0),
            "top_p": jnp.float32(self.top_p),
            "eos": jnp.asarray(self.eos_ids or (-1,), jnp.int32),
            "pad_id": jnp.int32(self.pad_id)}


@dataclasses.dataclass(frozen=True)
class _Structure:
  """Static part of a SamplingConfig: output length, greedy or not, top-k, top-p on, #EOS ids."""
  max_new_tokens: int
  greedy: bool
  top_k: int
  top_p: bool
  num_eos: int


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, length: Optional[int] = None,
             multiple: int = 16) -> tuple[np.ndarray, np.ndarray]:
  """Token lists -> (ids [B, T] int32, mask [B, T] int32), padded on the left.

  T is `length` if given, else the longest list rounded up to `multiple` (bucketing prompt
  lengths so that `generate` compiles once per bucket, not once per batch). Lists longer than
  `length` keep their last `length` tokens: for prompts the end (the generation prompt) matters.
  """
  if not len(seqs):
    raise ValueError("left_pad needs at least one sequence")
  if length is None:
    longest = max(max(len(s) for s in seqs), 1)
    length = -(-longest // max(multiple, 1)) * max(multiple, 1)
  ids = np.full((len(seqs), length), pad_id, np.int32)
  mask = np.zeros((len(seqs), length), np.int32)
  for row, seq in enumerate(seqs):
    seq = list(seq)[-length:] if length else []
    if seq:
      ids[row, length - len(seq):] = seq
      mask[row, length - len(seq):] = 1
  return ids, mask


def nucleus_threshold(probs: Array, top_p) -> Array:
  """Per-row probability threshold [B, 1] of top-p sampling: keeping `probs >= threshold` keeps
  the smallest set of most likely tokens whose mass reaches `top_p` (ties kept, at least one).

  The threshold is the largest t with mass(probs >= t) >= top_p. Non-negative float32 values
  order like their int32 bit patterns, so 32 bisection steps over the bits find it exactly: 32
  masked sums over the vocabulary instead of a full sort per row per decoded token (the sort
  made sampling ~2x slower than greedy decoding on CPU).
  """
  bits = jax.lax.bitcast_convert_type(probs, jnp.int32)  # [B, V], monotone in probs
  lo = jnp.zeros(probs.shape[:1], jnp.int32)
  hi = jnp.max(bits, axis=-1)

  def body(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo + 1) // 2
    mass = jnp.sum(jnp.where(bits >= mid[:, None], probs, 0.0), axis=-1)
    ok = mass >= top_p
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

  lo, _ = jax.lax.fori_loop(0, 32, body, (lo, hi))
  return jax.lax.bitcast_convert_type(lo, jnp.float32)[:, None]


def _sample(logits: Array, key: Array, structure: _Structure, knobs: dict) -> tuple[Array, Array]:
  """One token per row from logits [B, V] (float32).

  Returns (tokens [B], processed log-probs [B]): the log-probability of each token under the
  distribution actually sampled from (after temperature, top-k, top-p; 0 for greedy).
  """
  if structure.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32), jnp.zeros(logits.shape[:1], jnp.float32)
  x = logits / knobs["temperature"]
  neg_inf = jnp.finfo(jnp.float32).min
  if structure.top_k and structure.top_k < x.shape[-1]:
    kth = jax.lax.top_k(x, structure.top_k)[0][:, -1:]  # [B, 1]
    x = jnp.where(x < kth, neg_inf, x)
  if structure.top_p:
    probs = jax.nn.softmax(x, axis=-1)
    x = jnp.where(probs < nucleus_threshold(probs, knobs["top_p"]), neg_inf, x)
  tokens = jax.random.categorical(key, x, axis=-1).astype(jnp.int32)
  lp = jnp.take_along_axis(jax.nn.log_softmax(x, axis=-1), tokens[:, None], axis=-1)[:, 0]
  return tokens, lp


def _token_logprob(logits: Array, tokens: Array) -> Array:
  """Raw model log-prob (temperature 1, no filtering) of tokens [B] under logits [B, V]."""
  return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tokens[:, None], axis=-1)[:, 0]


def _constrain_cache(cache: dict) -> dict:
  """Batch over ('data','fsdp'), KV heads over 'tensor' (no-op without a mesh in context)."""
  names = (None, "act_batch", None, "act_kv_heads", None)
  return {"k": nn.with_logical_constraint(cache["k"], names),
          "v": nn.with_logical_constraint(cache["v"], names), "index": cache["index"]}


@functools.partial(jax.jit, static_argnames=("cfg", "cache_len"))
def _prefill(params, prompt_ids, prompt_mask, *, cfg: LlamaConfig, cache_len: int):
  """Prompt [B, T] -> (last-slot logits [B, V], cache filled at slots [0, T))."""
  b, t = prompt_ids.shape
  cache = _constrain_cache(init_cache(cfg, b, cache_len))
  key_mask = jnp.zeros((b, cache_len), bool).at[:, :t].set(prompt_mask.astype(bool))
  positions = positions_from_mask(prompt_mask)
  hidden, cache = Llama(cfg).apply({"params": params}, prompt_ids, key_mask, positions,
                                   cache=cache, method=Llama.hidden_states)
  # Left padding puts every row's last prompt token at slot T - 1: only it needs the LM head.
  logits = Llama(cfg).apply({"params": params}, hidden[:, -1:], method=Llama.logits_from_hidden)
  return logits[:, 0], _constrain_cache(cache)


@functools.partial(jax.jit, static_argnames=("cfg", "structure"), donate_argnames=("cache",))
def _decode(params, first_logits, cache, prompt_mask, rng, knobs, *, cfg: LlamaConfig,
            structure: _Structure):
  """The whole decode loop: sample, feed back, repeat until all rows are done or N tokens.

  Token 0 comes from the prefill logits; step i >= 1 feeds token i - 1 at cache slot T + i - 1
  and samples token i, so N tokens cost N - 1 single-token forward passes.
  """
  b, t = prompt_mask.shape
  n = structure.max_new_tokens
  cache_len = cache["k"].shape[2]
  eos, pad_id = knobs["eos"], knobs["pad_id"]
  prompt_len = jnp.sum(prompt_mask.astype(jnp.int32), axis=-1)  # [B]
  model = Llama(cfg)

  def pick(i, logits, done, out):
    """Sample token i from logits [B, V] and record it (pad / 0 for rows already done)."""
    tok, lp_proc = _sample(logits, jax.random.fold_in(rng, i), structure, knobs)
    lp = _token_logprob(logits, tok)
    live = ~done
    tok = jnp.where(live, tok, pad_id)
    out = {
        "tokens": out["tokens"].at[:, i].set(tok),
        "logprobs": out["logprobs"].at[:, i].set(jnp.where(live, lp, 0.0)),
        "logprobs_processed": out["logprobs_processed"].at[:, i].set(jnp.where(live, lp_proc, 0.0)),
        "mask": out["mask"].at[:, i].set(live.astype(jnp.int32)),
    }
    return done | (live & jnp.isin(tok, eos)), out

  out = {
      "tokens": jnp.full((b, n), pad_id, jnp.int32),
      "logprobs": jnp.zeros((b, n), jnp.float32),
      "logprobs_processed": jnp.zeros((b, n), jnp.float32),
      "mask": jnp.zeros((b, n), jnp.int32),
  }
  done, out = pick(0, first_logits, jnp.zeros((b,), bool), out)
  key_mask = jnp.zeros((b, cache_len), bool).at[:, :t].set(prompt_mask.astype(bool))

  def cond(state):
    i, done = state[0], state[1]
    return (i < n) & ~jnp.all(done)

  def body(state):
    i, done, out, cache, key_mask = state
    prev = out["tokens"][:, i - 1]  # fed at slot t + i - 1, position prompt_len + i - 1
    key_mask = jax.lax.dynamic_update_slice(key_mask, jnp.ones((b, 1), bool), (0, t + i - 1))
    positions = (prompt_len + i - 1)[:, None]
    logits, cache = model.apply({"params": params}, prev[:, None], key_mask, positions, cache=cache)
    done, out = pick(i, logits[:, 0], done, out)
    return i + 1, done, out, _constrain_cache(cache), key_mask

  state = (jnp.int32(1), done, out, cache, key_mask)
  _, _, out, cache, _ = jax.lax.while_loop(cond, body, state)
  out["lengths"] = jnp.sum(out["mask"], axis=-1)
  # The final cache is returned only so that the donated input cache can alias it: the loop then
  # updates one cache buffer in place instead of holding two.
  return out, cache


def _on_mesh(params: Any, cfg: LlamaConfig, mesh) -> Any:
  """Params placed by the rules table, unless every leaf already lives on this mesh."""
  leaves = jax.tree_util.tree_leaves(params)
  if all(isinstance(getattr(x, "sharding", None), jax.sharding.NamedSharding)
         and x.sharding.mesh == mesh for x in leaves):
    return params
  return rsharding.shard_params(params, cfg, mesh)


def generate(params: Any, cfg: LlamaConfig, prompt_ids, prompt_mask, rng: Array,
             sampling: SamplingConfig, mesh=None) -> dict:
  """Continue left-padded prompts [B, T] by up to `sampling.max_new_tokens` = N tokens.

  Returns a dict of arrays:
    tokens [B, N] int32: generated tokens, `pad_id` after a row's EOS (the EOS itself is kept).
    logprobs [B, N] float32: log-prob of each token under the raw model, i.e.
      log_softmax(logits) at temperature 1 with no top-k/top-p filtering -- the "old log-prob"
      PPO needs, comparable with a later forward pass of the same params. 0 where mask is 0.
    logprobs_processed [B, N] float32: log-prob under the distribution actually sampled from
      (temperature, top-k, top-p applied); 0 for greedy and where mask is 0.
    mask [B, N] int32: 1 for generated tokens up to and including the EOS.
    lengths [B] int32: number of generated tokens per row (sum of mask).
  Decoding stops early once every row has emitted one of `sampling.eos_ids`.

  With a `mesh`, the batch is sharded over ('data', 'fsdp') (rows are padded with copies of
  row 0 to a multiple of that size and dropped again) and params are placed by
  `rmjax.sharding.DEFAULT_RULES` unless they already live on the mesh.
  """
  prompt_ids = np.asarray(prompt_ids, np.int32)
  prompt_mask = np.asarray(prompt_mask, np.int32)
  if prompt_ids.ndim != 2 or prompt_ids.shape != prompt_mask.shape:
    raise ValueError(f"prompt_ids {prompt_ids.shape} and prompt_mask {prompt_mask.shape} must "
                     "both be [batch, length]")
  if not prompt_mask[:, -1].all():
    rows = np.flatnonzero(prompt_mask[:, -1] == 0).tolist()
    raise ValueError(f"prompt rows {rows} do not end in a real token: prompts must be left-padded "
                     "and non-empty (see left_pad)")
  b, t = prompt_ids.shape
  cache_len = t + sampling.max_new_tokens
  knobs = sampling.values()
  ctx = contextlib.nullcontext()
  if mesh is not None:
    extra = -b % rsharding.batch_divisor(mesh)
    if extra:
      prompt_ids = np.concatenate([prompt_ids, np.repeat(prompt_ids[:1], extra, 0)])
      prompt_mask = np.concatenate([prompt_mask, np.repeat(prompt_mask[:1], extra, 0)])
    params = _on_mesh(params, cfg, mesh)
    batch = rsharding.shard_batch({"ids": prompt_ids, "mask": prompt_mask}, mesh, global_batch=True)
    prompt_ids, prompt_mask = batch["ids"], batch["mask"]
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    rng, knobs = jax.device_put((rng, knobs), replicated)
    ctx = _mesh_context(mesh)
  with ctx:
    logits, cache = _prefill(params, prompt_ids, prompt_mask, cfg=cfg, cache_len=cache_len)
    out, _ = _decode(params, logits, cache, prompt_mask, rng, knobs, cfg=cfg,
                     structure=sampling.structure())
  if mesh is not None and out["tokens"].shape[0] != b:
    out = {k: v[:b] for k, v in out.items()}
  return out


@contextlib.contextmanager
def _mesh_context(mesh):
  """The mesh as context (so logical constraints apply) plus rmjax's logical-axis rules."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rsharding.DEFAULT_RULES):
    yield


def _render(tokenizer, prompt, use_chat_template: bool) -> list[int]:
  """A prompt (str or chat messages) -> token ids, with the generation prompt appended."""
  if use_chat_template:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
  elif isinstance(prompt, str):
    text = prompt
  else:
    raise ValueError("chat messages need use_chat_template=True")
  return list(tokenizer.encode(text, add_special_tokens=False))


def generate_text(params: Any, cfg: LlamaConfig, tokenizer, prompts: Sequence[Any],
                  sampling: SamplingConfig, rng: Array, batch_size: int = 8, mesh=None,
                  use_chat_template: bool = True, multiple: int = 16,
                  progress: bool = True) -> list[dict]:
  """Generate a response for each prompt (a user string or a list of chat messages).

  Prompts are rendered with the tokenizer's chat template (add_generation_prompt=True) and
  encoded without extra special tokens; batches of `batch_size` (the last one filled with
  copies so shapes, hence compiled code, repeat) run through `generate` with rng
  `fold_in(rng, batch_index)`. Without `sampling.eos_ids`, the tokenizer's EOS is used.

  Returns one dict per prompt: text (decoded, EOS stripped), token_ids (incl. EOS),
  logprobs (raw model log-probs, as in `generate`), finished (ended on an EOS).
  """
  from tqdm.auto import tqdm

  if not sampling.eos_ids and getattr(tokenizer, "eos_token_id", None) is not None:
    sampling = sampling.replace(eos_ids=(tokenizer.eos_token_id,))
  encoded = [_render(tokenizer, p, use_chat_template) for p in prompts]
  results = []
  starts = range(0, len(encoded), batch_size)
  for batch_index, start in enumerate(tqdm(starts, desc="generate", disable=not progress)):
    chunk = encoded[start:start + batch_size]
    rows = chunk + [chunk[0]] * (batch_size - len(chunk))
    ids, mask = left_pad(rows, sampling.pad_id, multiple=multiple)
    out = generate(params, cfg, ids, mask, jax.random.fold_in(rng, batch_index), sampling, mesh=mesh)
    out = jax.device_get(out)
    for row in range(len(chunk)):
      n = int(out["lengths"][row])
      token_ids = [int(x) for x in out["tokens"][row, :n]]
      finished = bool(n) and token_ids[-1] in sampling.eos_ids
      text_ids = token_ids[:-1] if finished else token_ids
      results.append({"text": tokenizer.decode(text_ids, skip_special_tokens=True),
                      "token_ids": token_ids,
                      "logprobs": [float(x) for x in out["logprobs"][row, :n]],
                      "finished": finished})
  return results
