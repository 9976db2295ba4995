"""Import released ArmoRM checkpoints (`LlamaForRewardModelWithGating`, HF layout) into rmjax.

Layout of e.g. RLHFlow/ArmoRM-Llama3-8B-v0.1 (its modeling code on the Hub):
  model.*                          LlamaModel (no lm_head)
  regression_layer.weight          [O, D]           bias-free
  reward_transform_matrix          [O, O]           T
  gating.layers.{i}.weight/bias    [out, in], [out] i = 0..n_hidden (last -> O)
  gating.logit_scale               [1]              beta
config.json: num_objectives, gating_temperature, gating_hidden_dim, gating_n_hidden (defaults
19, 10, 1024, 3). `load_armorm(dir)` -> (LlamaConfig, params in ArmoRM's layout, head settings);
`heads_to_state_dict` / `config_fields` are the exact inverse, for `rmjax convert --to hf:OUT`.

The released forward (RLHFlow's modeling code, trust_remote_code) reads h at the token before the
first pad (right padding) and the gate input at the first token of the last occurrence of a
hard-coded Llama-3 pattern; rmjax takes the last real token and the chat template's pattern,
which config.json carries as rmjax.prompt_pattern in an rmjax export.
"""

from __future__ import annotations

import json
import os

import numpy as np

from rmjax.checkpoints import hf
from rmjax.errors import CheckpointError


def head_settings(config_dict: dict) -> dict:
  return {"objectives": int(config_dict.get("num_objectives", 19)),
          "temperature": float(config_dict.get("gating_temperature", 10)),
          "gate_hidden": int(config_dict.get("gating_hidden_dim", 1024)),
          "gate_layers": int(config_dict.get("gating_n_hidden", 3))}


def settings_of(heads: dict) -> dict:
  """head_settings of ArmoHeads params (objectives, gate sizes); temperature is not a param."""
  gate = heads["gate"]
  n_hidden = len(gate) - 1
  return {"objectives": int(np.shape(heads["transform"])[0]),
          "gate_hidden": int(np.shape(gate["layers_0"]["kernel"])[1]) if n_hidden else 0,
          "gate_layers": n_hidden}


def config_fields(settings: dict) -> dict:
  """The config.json keys RLHFlow's LlamaForRewardModelWithGating reads (inverse of head_settings)."""
  return {"architectures": ["LlamaForRewardModelWithGating"],
          "num_objectives": int(settings["objectives"]),
          "gating_temperature": float(settings["temperature"]),
          "gating_hidden_dim": int(settings["gate_hidden"]),
          "gating_n_hidden": int(settings["gate_layers"])}


def heads_to_state_dict(heads: dict) -> dict:
  """The head tensors of an ArmoRM state dict from ArmoHeads params (inverse of the import)."""
  a = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))  # noqa: E731
  sd = {"regression_layer.weight": a(np.asarray(heads["regression"]["kernel"]).T),
        "reward_transform_matrix": a(heads["transform"]),
        "gating.logit_scale": a(np.reshape(heads["beta"], (1,)))}
  for i in range(len(heads["gate"])):
    layer = heads["gate"][f"layers_{i}"]
    sd[f"gating.layers.{i}.weight"] = a(np.asarray(layer["kernel"]).T)
    sd[f"gating.layers.{i}.bias"] = a(layer["bias"])
  return sd


def heads_from_state_dict(sd: dict, settings: dict) -> dict:
  """ArmoHeads params (numpy float32) from the head tensors of an ArmoRM state dict."""
  def get(name, shape=None):
    if name not in sd:
      raise CheckpointError(f"not an ArmoRM checkpoint: tensor {name} is missing")
    x = np.asarray(sd[name], np.float32)
    if shape is not None and tuple(x.shape) != tuple(shape):
      raise CheckpointError(f"{name} has shape {tuple(x.shape)}, expected {tuple(shape)}")
    return x
  o = settings["objectives"]
  w = get("regression_layer.weight")
  if w.shape[0] != o:
    raise CheckpointError(f"regression_layer.weight has {w.shape[0]} objectives, config says {o}")
  gate = {}
  for i in range(settings["gate_layers"] + 1):
    k = get(f"gating.layers.{i}.weight")
    gate[f"layers_{i}"] = {"kernel": k.T, "bias": get(f"gating.layers.{i}.bias", (k.shape[0],))}
  if gate[f"layers_{settings['gate_layers']}"]["kernel"].shape[1] != o:
    raise CheckpointError("the last gating layer does not output num_objectives weights")
  return {"regression": {"kernel": w.T}, "transform": get("reward_transform_matrix", (o, o)),
          "gate": gate, "beta": np.asarray(get("gating.logit_scale").reshape(-1)[0], np.float32)}


def load_armorm(path: str):
  """(cfg, {'backbone', 'heads'}, settings) from an ArmoRM HF directory."""
  cfg = hf.load_hf_config(path)
  with open(os.path.join(path, "config.json")) as f:
    settings = head_settings(json.load(f))
  sd = hf.load_hf_state_dict(path)
  backbone_sd = {k: v for k, v in sd.items() if k.startswith("model.")}
  if cfg.tie_word_embeddings is False and "lm_head.weight" not in sd:
    # AutoModel-style checkpoints carry no LM head; reuse the embeddings so the tree is complete
    backbone_sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
  backbone = hf.params_from_hf_state_dict(backbone_sd, cfg)
  return cfg, {"backbone": backbone, "heads": heads_from_state_dict(sd, settings)}, settings
