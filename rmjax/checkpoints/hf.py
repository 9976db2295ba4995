"""transformers (HF) Llama checkpoints <-> rmjax params, driven by one name table.

`NAME_TABLE` lists every backbone tensor once as (hf_name_template, rmjax_path, transform); the
import and the export both walk it, so the two directions cannot drift apart. Per-layer entries
carry `{i}` in the HF name and are stacked on a leading layer axis in rmjax (the decoder is an
`nn.scan`). HF `nn.Linear` weights are [out, in]; rmjax Dense kernels are [in, out] ('T').

Files: `config.json` plus `model.safetensors` or sharded `model-0000x-of-0000y.safetensors` with
`model.safetensors.index.json`. Tensors that are not part of the backbone (e.g. a
`LlamaForSequenceClassification` `score.weight`) are handed back as extras so head importers can
use them.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rmjax.checkpoints.tokenizer_export import save_tokenizer
from rmjax.errors import CheckpointError
from rmjax.models.init import abstract_params
from rmjax.models.llama import Llama, LlamaConfig

# (hf_name_template, rmjax_path, transform); transform 'T' = transpose the last two dims.
NAME_TABLE: tuple = (
    ("model.embed_tokens.weight", ("embed_tokens", "embedding"), None),
    ("model.layers.{i}.input_layernorm.weight", ("layers", "input_layernorm", "scale"), None),
    ("model.layers.{i}.post_attention_layernorm.weight", ("layers", "post_attention_layernorm", "scale"), None),
    ("model.layers.{i}.self_attn.q_proj.weight", ("layers", "self_attn", "q_proj", "kernel"), "T"),
    ("model.layers.{i}.self_attn.k_proj.weight", ("layers", "self_attn", "k_proj", "kernel"), "T"),
    ("model.layers.{i}.self_attn.v_proj.weight", ("layers", "self_attn", "v_proj", "kernel"), "T"),
    ("model.layers.{i}.self_attn.o_proj.weight", ("layers", "self_attn", "o_proj", "kernel"), "T"),
    ("model.layers.{i}.mlp.gate_proj.weight", ("layers", "mlp", "gate_proj", "kernel"), "T"),
    ("model.layers.{i}.mlp.up_proj.weight", ("layers", "mlp", "up_proj", "kernel"), "T"),
    ("model.layers.{i}.mlp.down_proj.weight", ("layers", "mlp", "down_proj", "kernel"), "T"),
    ("model.norm.weight", ("norm", "scale"), None),
    ("lm_head.weight", ("lm_head", "kernel"), "T"),
)

# HF tensors that carry no weights of ours and are dropped silently (old rotary buffers).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

def _first(x):
  """eos/bos may be an int or a list of ints in HF configs; rmjax keeps one id."""
  if isinstance(x, (list, tuple)):
    return int(x[0]) if x else None
  return None if x is None else int(x)


def config_from_hf(d: Mapping[str, Any]) -> LlamaConfig:
  """LlamaConfig from an HF `config.json` dict (Llama architectures only)."""
  arch = d.get("model_type", "llama")
  if arch != "llama":
    raise CheckpointError(f"config.json has model_type {arch!r}; only 'llama' checkpoints are supported")
  missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                         "num_attention_heads") if k not in d]
  if missing:
    raise CheckpointError(f"config.json lacks {', '.join(missing)}")
  rope_theta = d.get("rope_theta")
  rope_scaling = d.get("rope_scaling")
  rope_params = d.get("rope_parameters")  # transformers 5 folds rope_theta + scaling in here
  if isinstance(rope_params, dict):
    rope_theta = rope_params.get("rope_theta", rope_theta)
    if rope_params.get("rope_type", "default") != "default":
      rope_scaling = {k: v for k, v in rope_params.items() if k != "rope_theta"}
  if isinstance(rope_scaling, dict):
    rope_scaling = dict(rope_scaling)
    if "type" in rope_scaling and "rope_type" not in rope_scaling:
      rope_scaling["rope_type"] = rope_scaling.pop("type")
    if rope_scaling.get("rope_type", "default") == "default":
      rope_scaling = None
    else:  # hashable scalars only
      rope_scaling = {k: v for k, v in rope_scaling.items() if isinstance(v, (int, float, str))}
  try:
    return LlamaConfig(
        vocab_size=int(d["vocab_size"]),
        hidden_size=int(d["hidden_size"]),
        intermediate_size=int(d["intermediate_size"]),
        num_hidden_layers=int(d["num_hidden_layers"]),
        num_attention_heads=int(d["num_attention_heads"]),
        num_key_value_heads=int(d.get("num_key_value_heads") or d["num_attention_heads"]),
        head_dim=d.get("head_dim"),
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope_theta if rope_theta is not None else 10000.0),
        rope_scaling=rope_scaling or None,
        max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        bos_token_id=_first(d.get("bos_token_id")),
        eos_token_id=_first(d.get("eos_token_id")),
        pad_token_id=_first(d.get("pad_token_id")),
    )
  except ValueError as e:
    raise CheckpointError(f"config.json is not a valid Llama config: {e}") from None


def config_to_hf(cfg: LlamaConfig) -> dict:
  """HF `config.json` dict for `cfg` (LlamaForCausalLM, float32 unless the params say otherwise)."""
  d = {
      "architectures": ["LlamaForCausalLM"],
      "model_type": "llama",
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size,
      "num_hidden_layers": cfg.num_hidden_layers,
      "num_attention_heads": cfg.num_attention_heads,
      "num_key_value_heads": cfg.num_key_value_heads,
      "head_dim": cfg.head_dim,
      "hidden_act": "silu",
      "rms_norm_eps": cfg.rms_norm_eps,
      "rope_theta": cfg.rope_theta,
      "rope_scaling": cfg.rope_scaling_dict,
      "max_position_embeddings": cfg.max_position_embeddings,
      "tie_word_embeddings": cfg.tie_word_embeddings,
      "attention_bias": False,
      "mlp_bias": False,
      "bos_token_id": cfg.bos_token_id,
      "eos_token_id": cfg.eos_token_id,
      "pad_token_id": cfg.pad_token_id,
      "torch_dtype": cfg.param_dtype,
  }
  return d


def param_shapes(cfg: LlamaConfig) -> dict:
  """rmjax param shapes for `cfg` as a nested dict of tuples, computed without allocating."""
  return jax.tree_util.tree_map(lambda x: tuple(x.shape), nn.unbox(abstract_params(Llama(cfg))))


def _entries(cfg: LlamaConfig):
  """Table rows that apply to `cfg` (no lm_head when the embeddings are tied)."""
  return [e for e in NAME_TABLE if not (cfg.tie_word_embeddings and e[1][0] == "lm_head")]


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def _set(tree, path, value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _hf_shape(shape, transform, stacked):
  shape = tuple(shape[1:]) if stacked else tuple(shape)
  return shape[::-1] if transform == "T" else shape


def _normalise_keys(sd: Mapping[str, Any]) -> dict:
  """Accept bare `LlamaModel` keys ('layers.0...', 'embed_tokens.weight') by adding 'model.'."""
  sd = dict(sd)
  if "model.embed_tokens.weight" not in sd and "embed_tokens.weight" in sd:
    backbone = ("embed_tokens.", "layers.", "norm.")
    sd = {("model." + k if k.startswith(backbone) else k): v for k, v in sd.items()}
  return sd


def params_from_hf_state_dict(sd: Mapping[str, np.ndarray], cfg: LlamaConfig,
                              return_extra: bool = False):
  """rmjax params (numpy, `cfg.param_dtype`) from an HF Llama state dict.

  Raises CheckpointError naming the first missing tensor or the first tensor whose shape does not
  fit `cfg`. With `return_extra`, returns (params, extra) where `extra` holds the tensors the table
  does not map (e.g. a classification `score.weight`).
  """
  sd = _normalise_keys(sd)
  shapes = param_shapes(cfg)
  dtype = jnp.dtype(cfg.param_dtype)
  used = set()
  params: dict = {}
  for template, path, transform in _entries(cfg):
    stacked = "{i}" in template
    want = _hf_shape(_get(shapes, path), transform, stacked)
    names = [template.format(i=i) for i in range(cfg.num_hidden_layers)] if stacked else [template]
    arrays = []
    for name in names:
      if name not in sd:
        raise CheckpointError(f"weights do not fit the config: tensor {name} is missing")
      w = np.asarray(sd[name])
      if tuple(w.shape) != want:
        raise CheckpointError(f"weights do not fit the config: {name} has shape {tuple(w.shape)} "
                              f"but config expects {want}")
      arrays.append(w.T if transform == "T" else w)
      used.add(name)
    value = np.stack(arrays) if stacked else arrays[0]
    _set(params, path, value.astype(dtype, copy=False))
  if cfg.tie_word_embeddings:
    used.add("lm_head.weight")  # some exporters write the tied head anyway
  if not return_extra:
    return params
  extra = {k: v for k, v in sd.items() if k not in used and not k.endswith(_IGNORED_SUFFIXES)}
  return params, extra


def hf_state_dict_from_params(params: Any, cfg: LlamaConfig) -> dict:
  """HF `LlamaForCausalLM` state dict (numpy arrays, contiguous) from rmjax params."""
  params = nn.unbox(params)
  sd = {}
  for template, path, transform in _entries(cfg):
    value = np.asarray(jax.device_get(_get(params, path)))
    if "{i}" in template:
      for i in range(cfg.num_hidden_layers):
        w = value[i]
        sd[template.format(i=i)] = np.ascontiguousarray(w.T if transform == "T" else w)
    else:
      sd[template] = np.ascontiguousarray(value.T if transform == "T" else value)
  return sd


def _read_safetensors(path: str) -> dict:
  from safetensors.numpy import load_file
  try:
    return load_file(path)
  except Exception as e:  # noqa: BLE001 - corrupt or truncated file
    raise CheckpointError(f"{path}: cannot read safetensors file ({type(e).__name__}: {e})".replace("\n", " ")) from None


def _index_files(path: str, index: str) -> list:
  """Shard files named by model.safetensors.index.json, each checked to stay inside `path`:
  a relative name without '..' parts (lexically, so an HF cache snapshot's symlinks to
  ../../blobs still load). A weight_map may not send the loader elsewhere on disk."""
  try:
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    names = sorted(set(weight_map.values()))
  except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
    raise CheckpointError(f"{index}: not a safetensors index ({type(e).__name__}: {e})") from None
  for name in names:
    parts = str(name).replace("\\", "/").split("/")
    if (not isinstance(name, str) or not name or os.path.isabs(name) or ".." in parts
        or os.path.splitdrive(name)[0] or os.path.normpath(name).startswith("..")):
      raise CheckpointError(f"{index}: weight file {name!r} is outside the checkpoint directory")
  return [os.path.join(path, x) for x in names]


def weight_files(path: str) -> list:
  """The safetensors files of an HF checkpoint directory (index shards, else every file)."""
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    files = _index_files(path, index)
  else:
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
  if not files:
    raise CheckpointError(f"{path}: no *.safetensors weights found (PyTorch .bin files are not supported)")
  for file in files:
    if not os.path.exists(file):
      raise CheckpointError(f"{file}: listed in model.safetensors.index.json but missing")
  return files


def load_hf_state_dict(path: str) -> dict:
  """All tensors of an HF checkpoint directory (single file or sharded with an index)."""
  sd = {}
  for file in weight_files(path):
    sd.update(_read_safetensors(file))
  return sd


def read_tensors(path: str, names) -> dict:
  """Only the tensors `names` (those present) of an HF directory: a head without the backbone."""
  from safetensors import safe_open  # optional dependency, as in _read_safetensors
  out, want = {}, set(names)
  for file in weight_files(path):
    try:
      with safe_open(file, framework="numpy") as f:
        for k in want.intersection(f.keys()):
          out[k] = f.get_tensor(k)
    except Exception as e:  # noqa: BLE001 - corrupt or truncated file
      raise CheckpointError(f"{file}: cannot read safetensors file ({type(e).__name__})") from None
  return out


def read_hf_config(path: str) -> dict:
  """DIR/config.json as a dict (CheckpointError when the directory or file is missing/bad)."""
  cfg_path = os.path.join(path, "config.json")
  if not os.path.isdir(path):
    raise CheckpointError(f"{path}: no such checkpoint directory")
  if not os.path.exists(cfg_path):
    raise CheckpointError(f"{cfg_path}: missing (an HF checkpoint directory needs config.json)")
  try:
    with open(cfg_path) as f:
      d = json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{cfg_path}: invalid JSON ({e})") from None
  if not isinstance(d, dict):
    raise CheckpointError(f"{cfg_path}: expected a JSON object")
  return d


def load_hf_config(path: str) -> LlamaConfig:
  return config_from_hf(read_hf_config(path))


def is_causal_lm(d: Mapping[str, Any]) -> bool:
  """Whether config.json describes a model that ships an LM head (no architectures: assume so)."""
  archs = d.get("architectures") or ["LlamaForCausalLM"]
  return any(str(a).endswith("ForCausalLM") for a in archs)


def load_hf_dir(path: str, return_extra: bool = False):
  """(cfg, params) from an HF Llama directory; with `return_extra`, (cfg, params, extra tensors).

  Reward-model layouts (LlamaForSequenceClassification, ArmoRM's) carry no LM head; rmjax's
  backbone always holds one, so it starts as a copy of the input embeddings (unused by the
  reward; a GRM export's trained head comes back from its lm_head.safetensors instead)."""
  d = read_hf_config(path)
  cfg = config_from_hf(d)
  sd = load_hf_state_dict(path)
  if not cfg.tie_word_embeddings and "lm_head.weight" not in sd and not is_causal_lm(d):
    embed = sd.get("model.embed_tokens.weight", sd.get("embed_tokens.weight"))
    if embed is not None:
      sd["lm_head.weight"] = embed
  params, extra = params_from_hf_state_dict(sd, cfg, return_extra=True)
  return (cfg, params, extra) if return_extra else (cfg, params)


def save_hf_dir(params: Any, cfg: LlamaConfig, path: str, tokenizer: Optional[Any] = None) -> None:
  """Write config.json + model.safetensors (+ tokenizer files) loadable by transformers."""
  from safetensors.numpy import save_file
  os.makedirs(path, exist_ok=True)
  sd = hf_state_dict_from_params(params, cfg)
  d = config_to_hf(cfg)
  d["torch_dtype"] = str(next(iter(sd.values())).dtype)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(d, f, indent=2)
  save_file(sd, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
  if tokenizer is not None:
    save_tokenizer(tokenizer, path)
  make_readable(path)


def make_readable(path: str) -> None:
  """Files under `path` get the mode the umask gives new files (0644 under the usual 022):
  safetensors writes 0600, unreadable to the other users of a shared checkpoint directory."""
  umask = os.umask(0)
  os.umask(umask)
  for root, _, files in os.walk(path):
    for name in files:
      os.chmod(os.path.join(root, name), 0o666 & ~umask)
