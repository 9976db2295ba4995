"""Reward models <-> the HF layouts TRL, RewardBench and OpenRLHF load without custom code.

Export (`export_layout`, written by `rmjax.checkpoints.hf_export`):
  RewardModel head 'scalar' (BT, GRM, SALMON) -> `LlamaForSequenceClassification`, num_labels=1,
      `score.weight` [1, D] = the head kernel transposed (both are bias-free linear maps).
  RewardModel head 'ensemble' (K members) -> by default `LlamaForSequenceClassification`,
      num_labels=1, `score.weight` [1, D] = the mean of the K member rows: a mean of linear
      heads is the linear head with the mean weights, so its logit is the ensemble's reward (the
      members' mean) up to the constant mean member bias, written to config.json
      `rmjax.reward_bias` (0 after joint BT training; rankings identical either way). This is the
      form TRL (num_labels=1 required), OpenRLHF and RewardBench read correctly.
      With `members=True` (`rmjax convert --members`): num_labels=K, `score.weight` [K, D]. transformers' `score` has no bias and its input is RMS-normalised,
      so no weight can carry a constant: the member biases b [K] go to config.json
      `rmjax.member_bias`, and logits + member_bias = rmjax's members exactly (`aggregation`:
      reward = their mean). After joint BT training b is 0 (the BT loss cannot see a constant,
      so it gets no gradient) and the logits already are the members; the cached-embedding fast
      path standardises features and folds their mean into b, and then the bias must be added
      (a per-member constant: every member's ranking and accuracy are the same without it).
  RewardModel head 'mlp' (GRM's option) -> refused with a one-line CheckpointError: a bias-free
      Linear cannot hold Linear-ReLU-Linear, and any other layout needs trust_remote_code in
      every consumer. Train with `--config.model.head=scalar` to export (GRM's config defaults
      to the paper's MLP head: `configs/grm.py:tiny,head=scalar`).
  ArmoRM -> RLHFlow's `LlamaForRewardModelWithGating` (rmjax.checkpoints.armorm, both ways),
      with its modeling code (`hf_armorm_modeling.py` as modeling_rmjax_armorm.py, config.json
      auto_map): `AutoModelForSequenceClassification.from_pretrained(OUT, trust_remote_code=True)`
      gives the gated reward as logits[:, 0] and the objectives and gate beside it.
  GRM keeps its trained LM head in `lm_head.safetensors` (key `lm_head.weight`) beside
      model.safetensors: transformers reads model.safetensors only, so the classifier loads with
      no unexpected key, and `AutoModelForCausalLM.from_pretrained(OUT)` plus
      `model.lm_head.weight.data = load_file(OUT/lm_head.safetensors)['lm_head.weight']` gives the
      regularised LM. rmjax reads it back on import.

Pooling: transformers takes the rightmost token that is not `pad_token_id`; rmjax the last token
of the attention mask. Equal for right and left padding when the pad id is a token no real text
contains, which `rmjax.checkpoints.tokenizer_export.export_tokenizer` guarantees.

Import (`load_reward_model`, `score_head`): `LlamaForSequenceClassification` (num_labels=1 ->
scalar head, K -> ensemble head with `rmjax.member_bias` or zeros) and ArmoRM directories.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import numpy as np

from rmjax.checkpoints import armorm as armo_ckpt
from rmjax.checkpoints import hf
from rmjax.errors import CheckpointError
from rmjax.models.armorm import ArmoRM
from rmjax.models.reward_model import RewardModel

SEQ_CLS = "LlamaForSequenceClassification"
ARMORM = "LlamaForRewardModelWithGating"
LM_HEAD_FILE = "lm_head.safetensors"
POOLING = "rightmost token != pad_token_id (transformers) = last attention-mask token (rmjax)"
# ArmoRM's modeling code (hf_armorm_modeling.py), copied into the export under this name
ARMORM_CODE = "modeling_rmjax_armorm.py"
SEQ_CLS_AUTO = "AutoModelForSequenceClassification"
ARMORM_AUTO = f"{ARMORM_CODE[:-3]}.{ARMORM}"


def _np(tree):
  return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), nn.unbox(tree))


def _backbone_sd(params, cfg) -> dict:
  sd = hf.hf_state_dict_from_params(params, cfg)
  sd.pop("lm_head.weight", None)
  return sd


def export_layout(model, params, task: str = "", members: bool = False) -> tuple:
  """(state dict, config.json fields over `hf.config_to_hf`, extra files {name: state dict}).

  `model` is the scoring module (RewardModel or ArmoRM), `params` its params (any placement);
  `members`: an ensemble keeps its K outputs (num_labels=K) instead of their mean.
  """
  params = _np(params)
  adapters = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]
              if jax.tree_util.keystr(k).endswith(("_lora_a']", "_lora_b']"))]
  if adapters:
    raise CheckpointError(f"params hold LoRA adapters ({adapters[0]}, ...): merge them into the "
                          f"kernels first (rmjax.models.lora.merge); rmjax convert does")
  if isinstance(model, ArmoRM):
    settings = dict(armo_ckpt.settings_of(params["heads"]), temperature=model.temperature)
    sd = dict(_backbone_sd(params["backbone"], model.cfg), **armo_ckpt.heads_to_state_dict(params["heads"]))
    fields = dict(armo_ckpt.config_fields(settings), auto_map={SEQ_CLS_AUTO: ARMORM_AUTO},
                  rmjax={"kind": "armorm", "task": task, "prompt_pattern": list(model.prompt_pattern),
                         "pooling": "reward: last real token; gate: first token of the last "
                                    "prompt_pattern match"})
    return sd, fields, {}
  if not isinstance(model, RewardModel):
    raise CheckpointError(f"cannot export a {type(model).__name__} to HF: only one backbone with a "
                          f"linear, ensemble or ArmoRM head has a layout (independent ensembles: "
                          f"train with ensemble.mode=heads)")
  if model.head == "mlp":
    raise CheckpointError("head 'mlp' has no LlamaForSequenceClassification form (its score layer is "
                          "one bias-free Linear): train with --config.model.head=scalar to export "
                          "(GRM: configs/grm.py:<variant>,head=scalar)")
  cfg = model.cfg
  sd = _backbone_sd(params["backbone"], cfg)
  head = params["reward_head"]
  rm = {"kind": model.head, "task": task, "pooling": POOLING}
  if model.head == "ensemble":
    w, bias = np.asarray(head["kernel"], np.float32), np.asarray(head["bias"], np.float32)
    rm.update(aggregation="mean", members=int(w.shape[0]))
    if members:
      rm["member_bias"] = [float(b) for b in bias]
      labels = [f"member_{k}" for k in range(w.shape[0])]
    else:  # the ensemble's reward as one linear head (rmjax convert --members keeps the K)
      w, labels = w.mean(0, keepdims=True), ["reward"]
      rm.update(exported_as="mean", reward_bias=float(bias.mean()))
  else:
    w = np.asarray(head["Dense_0"]["kernel"], np.float32).T
    labels = ["reward"]
  sd["score.weight"] = np.ascontiguousarray(w.astype(next(iter(sd.values())).dtype))
  files = {}
  if task == "grm" and not cfg.tie_word_embeddings:
    lm = np.asarray(params["backbone"]["lm_head"]["kernel"]).T
    files[LM_HEAD_FILE] = {"lm_head.weight": np.ascontiguousarray(lm)}
    rm["lm_head"] = LM_HEAD_FILE
  fields = {"architectures": [SEQ_CLS], "id2label": {str(i): n for i, n in enumerate(labels)},
            "label2id": {n: i for i, n in enumerate(labels)}, "rmjax": rm}
  return sd, fields, files


def _archs(d: dict) -> list:
  return [str(a) for a in d.get("architectures") or []]


def is_reward_model(path: str) -> bool:
  """Whether DIR/config.json names a reward-model layout (sequence classifier or ArmoRM)."""
  archs = _archs(hf.read_hf_config(path))
  return ARMORM in archs or any(a.endswith("ForSequenceClassification") for a in archs)


def _head_params(w: np.ndarray, rm: dict, hidden: int, where: str) -> tuple:
  """(head kind, members, head params) for a score weight [K, D]."""
  w = np.asarray(w, np.float32)
  if w.ndim != 2 or w.shape[1] != hidden:
    raise CheckpointError(f"{where}: score.weight has shape {tuple(w.shape)}, expected [num_labels, {hidden}]")
  k = int(w.shape[0])
  if k == 1:
    return "scalar", 1, {"Dense_0": {"kernel": np.ascontiguousarray(w.T)}}
  bias = np.asarray(rm.get("member_bias") or np.zeros(k), np.float32)
  if bias.shape != (k,):
    raise CheckpointError(f"{where}: rmjax.member_bias has {bias.size} values for {k} labels")
  return "ensemble", k, {"kernel": w, "bias": bias}


def load_reward_model(path: str) -> tuple:
  """(module, params, info) of an HF reward-model directory; info: kind, members, rmjax (the
  config.json section an rmjax export writes, {} otherwise), settings (ArmoRM)."""
  d = hf.read_hf_config(path)
  archs, rm = _archs(d), dict(d.get("rmjax") or {})
  if ARMORM in archs:
    cfg, params, st = armo_ckpt.load_armorm(path)
    pattern = tuple(int(t) for t in rm.get("prompt_pattern") or ())
    model = ArmoRM(cfg, st["objectives"], pattern, gate_hidden=st["gate_hidden"],
                   gate_layers=st["gate_layers"], gate_dropout=0.0, temperature=st["temperature"])
    return model, params, {"kind": "armorm", "members": 1, "rmjax": rm, "settings": st}
  if not any(a.endswith("ForSequenceClassification") for a in archs):
    raise CheckpointError(f"{path}: config.json architectures {archs} is no reward model ({SEQ_CLS} "
                          f"or {ARMORM}); a causal LM is a backbone: pass it as model.spec")
  cfg, backbone, extra = hf.load_hf_dir(path, return_extra=True)
  if "score.weight" not in extra:
    raise CheckpointError(f"{path}: a {archs[0]} checkpoint without score.weight")
  kind, k, head = _head_params(extra["score.weight"], rm, cfg.hidden_size, path)
  model = RewardModel(cfg, head=kind, members=k)
  return model, {"backbone": backbone, "reward_head": head}, {"kind": kind, "members": k, "rmjax": rm}


def score_head(path: str) -> Optional[dict]:
  """{'kind', 'members', 'params'} of a sequence classifier's trained score head (read alone,
  without the backbone), or None when DIR holds no classifier (a causal LM, ArmoRM)."""
  d = hf.read_hf_config(path)
  if not any(a.endswith("ForSequenceClassification") for a in _archs(d)):
    return None
  t = hf.read_tensors(path, ["score.weight"])
  if "score.weight" not in t:
    raise CheckpointError(f"{path}: a sequence classifier without score.weight")
  kind, k, head = _head_params(t["score.weight"], dict(d.get("rmjax") or {}),
                               int(d.get("hidden_size", 0)), path)
  return {"kind": kind, "members": k, "params": head}


def head_fits(head: dict, params_head: Any) -> bool:
  """Whether pretrained head params have the structure and shapes of a model's head params."""
  try:
    shapes = jax.tree_util.tree_map(np.shape, nn.unbox(params_head))
    return jax.tree_util.tree_map(np.shape, head) == shapes
  except (TypeError, ValueError):
    return False


def rmjax_section(path: str) -> dict:
  """The `rmjax` section of DIR/config.json ({} for checkpoints rmjax did not write)."""
  return dict(hf.read_hf_config(path).get("rmjax") or {})
