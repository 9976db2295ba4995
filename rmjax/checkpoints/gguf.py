"""GGUF (llama.cpp) Llama files -> rmjax params, dequantised to float32.

GGUF stores tensors under llama.cpp names (`blk.{i}.attn_q.weight`...), lists shapes in ggml
`ne` order (reversed), and permutes the rows of Q and K so that RoPE rotates interleaved pairs.
We read through `gguf.GGUFReader`, dequantise with `gguf.quants.dequantize` (which already
returns numpy order, i.e. the HF [out, in] layout), undo the Q/K permutation, rename to HF names
through `GGUF_TO_HF`, and reuse the HF importer, so the shape checks live in one place.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from rmjax.checkpoints.hf import params_from_hf_state_dict
from rmjax.errors import CheckpointError
from rmjax.models.llama import LlamaConfig

# llama.cpp tensor name -> HF name ({i} = layer index).
GGUF_TO_HF: tuple = (
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
    ("blk.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("blk.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("blk.{i}.attn_q.weight", "model.layers.{i}.self_attn.q_proj.weight"),
    ("blk.{i}.attn_k.weight", "model.layers.{i}.self_attn.k_proj.weight"),
    ("blk.{i}.attn_v.weight", "model.layers.{i}.self_attn.v_proj.weight"),
    ("blk.{i}.attn_output.weight", "model.layers.{i}.self_attn.o_proj.weight"),
    ("blk.{i}.ffn_gate.weight", "model.layers.{i}.mlp.gate_proj.weight"),
    ("blk.{i}.ffn_up.weight", "model.layers.{i}.mlp.up_proj.weight"),
    ("blk.{i}.ffn_down.weight", "model.layers.{i}.mlp.down_proj.weight"),
)
_PATTERNS = [(re.compile("^" + re.escape(g).replace(r"\{i\}", r"(\d+)") + "$"), h) for g, h in GGUF_TO_HF]


def _hf_name(gguf_name: str):
  for pat, hf in _PATTERNS:
    m = pat.match(gguf_name)
    if m:
      return hf.format(i=m.group(1)) if m.groups() else hf
  return None


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Undo llama.cpp's convert-time row permutation of Q/K ([out, in]) for `n_heads` heads."""
  out, inp = w.shape
  # llama.cpp wrote reshape(n, 2, out/n/2, in).swapaxes(1, 2); this is its inverse.
  return w.reshape(n_heads, out // n_heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def _field(reader, key, default=None):
  f = reader.fields.get(key)
  if f is None:
    return default
  v = f.contents()
  return v


def _open(path: str):
  import gguf
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: no such GGUF file")
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # noqa: BLE001 - not a GGUF file, truncated...
    msg = str(e).replace("\n", " ")
    raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {msg})") from None


def config_from_gguf(reader, path: str = "<gguf>") -> LlamaConfig:
  """LlamaConfig from the `general.*`, `llama.*` and `tokenizer.ggml.*` metadata."""
  arch = _field(reader, "general.architecture")
  if arch != "llama":
    raise CheckpointError(f"{path}: GGUF architecture is {arch!r}, only 'llama' is supported")
  need = ("llama.block_count", "llama.embedding_length", "llama.feed_forward_length",
          "llama.attention.head_count")
  missing = [k for k in need if _field(reader, k) is None]
  if missing:
    raise CheckpointError(f"{path}: GGUF metadata lacks {', '.join(missing)}")
  n_heads = int(_field(reader, "llama.attention.head_count"))
  hidden = int(_field(reader, "llama.embedding_length"))
  tokens = reader.fields.get("tokenizer.ggml.tokens")
  embed = [t for t in reader.tensors if t.name == "token_embd.weight"]
  if tokens is not None:
    vocab = len(tokens.data)
  elif _field(reader, "llama.vocab_size") is not None:
    vocab = _field(reader, "llama.vocab_size")
  elif embed:
    vocab = int(embed[0].shape[-1])  # ne order: [embed, vocab]
  else:
    raise CheckpointError(f"{path}: GGUF has neither a token list nor token_embd.weight")
  names = {t.name for t in reader.tensors}
  head_dim = _field(reader, "llama.attention.key_length") or _field(reader, "llama.rope.dimension_count")
  rope_scaling = None
  if _field(reader, "llama.rope.scaling.type") == "linear":
    rope_scaling = {"rope_type": "linear", "factor": float(_field(reader, "llama.rope.scaling.factor"))}
  eps = float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5))
  eps = float(np.float32(eps))  # stored as f32: 9.9999997e-06 -> keep the f32 value
  return LlamaConfig(
      vocab_size=int(vocab),
      hidden_size=hidden,
      intermediate_size=int(_field(reader, "llama.feed_forward_length")),
      num_hidden_layers=int(_field(reader, "llama.block_count")),
      num_attention_heads=n_heads,
      num_key_value_heads=int(_field(reader, "llama.attention.head_count_kv", n_heads)),
      head_dim=int(head_dim) if head_dim else hidden // n_heads,
      rms_norm_eps=eps,
      rope_theta=float(_field(reader, "llama.rope.freq_base", 10000.0)),
      rope_scaling=rope_scaling,
      max_position_embeddings=int(_field(reader, "llama.context_length", 2048)),
      tie_word_embeddings="output.weight" not in names,
      bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
      eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
      pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"),
  )


def gguf_state_dict(reader, cfg: LlamaConfig) -> dict:
  """HF-named float32 tensors [out, in] from the GGUF tensors (Q/K un-permuted)."""
  from gguf.quants import dequantize
  sd = {}
  for t in reader.tensors:
    name = _hf_name(t.name)
    if name is None:
      continue  # e.g. rope_freqs: recomputed from the config
    w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
    w = w.reshape(tuple(int(x) for x in reversed(t.shape)))  # ne order -> numpy order
    if name.endswith("q_proj.weight"):
      w = unpermute_qk(w, cfg.num_attention_heads)
    elif name.endswith("k_proj.weight"):
      w = unpermute_qk(w, cfg.num_key_value_heads)
    sd[name] = w
  return sd


def load_gguf(path: str) -> tuple:
  """(LlamaConfig, params) from a llama GGUF file; params are `cfg.param_dtype` numpy arrays."""
  reader = _open(path)
  cfg = config_from_gguf(reader, path)
  sd = gguf_state_dict(reader, cfg)
  try:
    params = params_from_hf_state_dict(sd, cfg)
  except CheckpointError as e:
    raise CheckpointError(f"{path}: {e}") from None
  return cfg, params
