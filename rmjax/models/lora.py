"""LoRA / QLoRA adapters on a Linen model through qwix, from `config.model.lora`.

`model.lora = {rank, alpha, targets, dropout, quant}`; rank 0 is off. `wrap(model, lora_cfg)`
returns the model with qwix's LoRA interception (`qwix.apply_lora_to_model` + one `LoraRule`):
every targeted projection `x @ W` becomes `x @ W + alpha/rank * (x @ A) @ B`, with A [in, r]
(he-uniform) and B [r, out] (zeros, so a fresh adapter leaves the model unchanged) stored beside
the kernel as `<name>_lora_a` / `<name>_lora_b` (stacked over layers by `nn.scan` like the
kernel). `quant` ('int8', 'int4', 'nf4') stores the targeted frozen kernels quantized (QLoRA;
nf4's uint4 codes are checkpointed as uint8 by `rmjax.checkpoints.orbax` and restored as uint4);
adapters stay float.
`dropout` (training only) draws from the 'dropout' rng stream, split per layer by Llama's scan.

Targets are module names: q_proj, k_proj, v_proj, o_proj (attention) and lm_head. The MLP
(gate_proj, up_proj, down_proj) is not a target: its kernels feed the hand-written SwiGLU VJP
(`rmjax.models.matmuls.swiglu`) as plain arrays, where qwix cannot see a projection.

Only adapters (and the non-backbone groups: reward heads) are trained: `trainable` is the
optimizer's per-leaf predicate, `stop_base_grad` keeps gradients from being computed for the
base weights at all (`apply_to_task` sets both up on a loop Task). `merge` folds adapters into
the kernels for export (and `merged_view` for code that runs the plain Llama: PPO's sampler);
`adapters_off` / `split` give the base model from the same weights (GRM's and PPO's reference:
no second backbone).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Optional

import flax.linen as nn
import flax.traverse_util as traverse
import jax
import jax.numpy as jnp
import qwix
from qwix._src.core import qarray  # qwix's quantizer (QLoRA's base weights), not re-exported
from qwix._src.providers.ptq import WithAux  # a quantized param leaf, not re-exported

from rmjax.errors import ConfigError

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "lm_head")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
QUANT = ("", "nf4", "int8", "int4")
SUFFIXES = ("_lora_a", "_lora_b")
BASE = "backbone"  # the param group whose non-adapter weights are frozen under LoRA


@dataclasses.dataclass(frozen=True)
class LoraSettings:
  """Validated, hashable `model.lora` (a Linen field can hold it)."""
  rank: int
  alpha: float
  targets: tuple
  dropout: float = 0.0
  quant: str = ""

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def settings(lora_cfg) -> Optional[LoraSettings]:
  """`model.lora` (a ConfigDict, dict or None) -> LoraSettings, or None when rank is 0."""
  if not lora_cfg or not int(lora_cfg.get("rank", 0)):
    return None
  rank, alpha = int(lora_cfg["rank"]), float(lora_cfg.get("alpha", 0.0) or lora_cfg["rank"])
  targets = lora_cfg.get("targets", "q_proj,k_proj,v_proj,o_proj")
  targets = tuple(t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets)
                  if t.strip())
  dropout, quant = float(lora_cfg.get("dropout", 0.0)), str(lora_cfg.get("quant", "") or "")
  if rank < 0 or alpha <= 0:
    raise ConfigError(f"model.lora.rank must be >= 0 and alpha > 0, got rank={rank} alpha={alpha}")
  mlp = [t for t in targets if t in MLP_TARGETS]
  if mlp:
    raise ConfigError(f"model.lora.targets: {', '.join(mlp)} are not LoRA targets (the MLP runs a "
                      f"hand-written SwiGLU VJP qwix cannot see); use {', '.join(TARGETS)}")
  bad = [t for t in targets if t not in TARGETS]
  if bad or not targets:
    raise ConfigError(f"model.lora.targets: unknown {bad or 'empty'} (known: {', '.join(TARGETS)})")
  if not 0.0 <= dropout < 1.0:
    raise ConfigError(f"model.lora.dropout must be in [0, 1), got {dropout}")
  if quant not in QUANT:
    raise ConfigError(f"model.lora.quant must be one of {QUANT}, got {quant!r}")
  return LoraSettings(rank, alpha, targets, dropout, quant)


def provider(s: LoraSettings, train: bool = False) -> qwix.LoraProvider:
  """One qwix rule over the targeted module names anywhere in the tree. qwix applies LoRA
  dropout on every call once it is set, so only the training model (`train`) carries it."""
  path = r"(?:.*/)?(?:%s)" % "|".join(map(re.escape, s.targets))
  return qwix.LoraProvider([qwix.LoraRule(
      module_path=path, rank=s.rank, alpha=s.alpha, dropout=s.dropout if train else 0.0,
      weight_qtype=s.quant or None)])


def wrap(model: nn.Module, lora_cfg, train: bool = False) -> nn.Module:
  """`model` with LoRA adapters per `lora_cfg` (unchanged when rank is 0)."""
  s = lora_cfg if isinstance(lora_cfg, LoraSettings) else settings(lora_cfg)
  if s is None:
    return model
  return qwix.apply_lora_to_model(model, provider(s, train))


def from_config(config, model: nn.Module) -> nn.Module:
  """`model` wrapped per `config.model.lora` (configs saved before LoRA existed: unchanged)."""
  s = settings(config.model.get("lora"))
  if s is not None and config.train.get("freeze_backbone", False):
    raise ConfigError("model.lora trains adapters inside the backbone: unset train.freeze_backbone")
  return wrap(model, s) if s is not None else model


def train_model(model: nn.Module, lora_cfg) -> nn.Module:
  """The model a loss should run: with LoRA dropout when configured (eval/scoring keep `model`)."""
  s = settings(lora_cfg)
  if s is None or not s.dropout:
    return model
  return wrap(model, s, train=True)


# ------------------------------------------------------------------------------ param trees

def _key(k) -> str:
  return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def path_str(path) -> str:
  """'/'-joined names of a jax key path (dict keys, dataclass fields)."""
  return "/".join(_key(k) for k in path)


def is_adapter(path: str) -> bool:
  return path.rsplit("/", 1)[-1].endswith(SUFFIXES)


def trainable(frozen: tuple = (), adapters_only: bool = False) -> Callable[[str], bool]:
  """Per-leaf predicate for `rmjax.train.state.make_optimizer` (marked `by_path`): adapters,
  and (unless `adapters_only`: a bare LM policy) every leaf outside a 'backbone' subtree
  (heads) and outside the top-level `frozen`."""
  def pred(path: str) -> bool:
    parts = path.split("/")
    return is_adapter(path) or (not adapters_only and BASE not in parts and parts[0] not in frozen)
  pred.by_path = True
  return pred


def stop_base_grad(params, pred: Callable[[str], bool]):
  """`params` with a stop_gradient on every leaf `pred` rejects: the backward pass then
  computes no weight gradients for the frozen base (they are zeros, never materialised)."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: x if pred(path_str(p)) else jax.lax.stop_gradient(x), params)


def split(params) -> tuple[dict, dict]:
  """(params without adapters, {flat path tuple: adapter}) of a nested param dict."""
  flat = traverse.flatten_dict(params)
  adapters = {k: v for k, v in flat.items() if str(k[-1]).endswith(SUFFIXES)}
  rest = traverse.unflatten_dict({k: v for k, v in flat.items() if k not in adapters})
  return rest, adapters


def join(params, adapters: dict) -> dict:
  flat = traverse.flatten_dict(params)
  flat.update(adapters)
  return traverse.unflatten_dict(flat)


def count(params) -> dict:
  """{'adapter': n, 'total': n} parameter counts (quantized leaves count their stored values)."""
  leaves = jax.tree_util.tree_leaves_with_path(nn.unbox(params))
  n = lambda keep: sum(int(x.size) for p, x in leaves if keep(path_str(p)))  # noqa: E731
  return {"adapter": n(is_adapter), "total": n(lambda _: True)}


def _dequantized(x):
  return qwix.dequantize(x.array) if isinstance(x, WithAux) else x


def merge(params, lora_cfg) -> dict:
  """Params of the plain (un-wrapped) model: each adapted kernel W -> W + alpha/r * A @ B
  (batched over stacked layers), quantized kernels dequantized first; adapters dropped."""
  s = lora_cfg if isinstance(lora_cfg, LoraSettings) else settings(lora_cfg)
  flat = traverse.flatten_dict(nn.unbox(params))
  out = {}
  for k, v in flat.items():
    name = str(k[-1])
    if name.endswith(SUFFIXES):
      continue
    v = _dequantized(v)
    a, b = flat.get(k[:-1] + (name + "_lora_a",)), flat.get(k[:-1] + (name + "_lora_b",))
    if a is not None and b is not None:
      delta = jnp.matmul(a.astype(jnp.float32), b.astype(jnp.float32)) * s.scale
      if delta.shape != v.shape:
        raise ValueError(f"{'/'.join(map(str, k))}: adapter product {delta.shape} does not "
                         f"match the kernel {v.shape}")
      v = (v.astype(jnp.float32) + delta).astype(v.dtype)
    out[k] = v
  return traverse.unflatten_dict(out)


def merged_view(lora_cfg, pred: Optional[Callable[[str], bool]] = None) -> Callable:
  """params -> the plain model's params with the adapters folded in (`merge`), differentiable
  in the adapters; with `pred` the leaves it rejects get no gradient (`stop_base_grad`). For
  code that runs the plain model (PPO's sampler and forwards): the merged kernels are a
  transient of the targeted projections, never a second persistent backbone."""
  s = lora_cfg if isinstance(lora_cfg, LoraSettings) else settings(lora_cfg)
  return lambda p: merge(stop_base_grad(p, pred) if pred else p, s)


def adapters_off(params) -> dict:
  """The same params with every B zeroed: the LoRA model then computes the base model exactly
  (its delta is x @ A @ 0), sharing the base weights (only adapter-sized zeros are new)."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.zeros_like(x) if path_str(p).endswith("_lora_b") else x, params)


def _float_view(params, shardings):
  """Quantized (QLoRA) leaves as float stand-ins for a loader written for the plain tree:
    (params with ShapeDtypeStructs, shardings with the quantized values' shardings)."""
  is_q = lambda x: isinstance(x, WithAux)  # noqa: E731
  p = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.array.scale.dtype) if is_q(x) else x,
      params, is_leaf=is_q)
  s = jax.tree_util.tree_map(lambda x: x.array.qvalue if is_q(x) else x, shardings, is_leaf=is_q)
  return p, s


def _quantize_like(w, ref: WithAux) -> WithAux:
  """`w` quantized with `ref`'s recipe; a kernel stacked over scanned layers is quantized per
  layer (the recipe was made inside the scan, for one layer), like `ref`'s scales."""
  fn = lambda v: qarray.quantize(v, ref.how)  # noqa: E731
  lead = ref.array.qvalue.ndim - len(jax.eval_shape(fn, jax.ShapeDtypeStruct(
      ref.shape[-2:], w.dtype)).qvalue.shape)
  for _ in range(lead):
    fn = jax.vmap(fn)
  return ref.replace(array=fn(jnp.asarray(w).reshape(ref.shape)))


def loader(load: Callable, lora_cfg) -> Callable:
  """Wrap a task's `load_pretrained(params, shardings)` written for the plain tree: it loads
  the base weights, the fresh adapters are kept, and QLoRA's targeted kernels are quantized
  (with the abstract quantized leaves' recipe) and placed on their shardings."""
  def load_lora(params, shardings):
    rest, adapters = split(params)
    rest_s, _ = split(shardings)
    if settings(lora_cfg).quant:
      view, view_s = _float_view(rest, rest_s)
      loaded = load(view, view_s)
      flat, ref, sh = (traverse.flatten_dict(t) for t in (loaded, rest, rest_s))
      for k, x in ref.items():
        if isinstance(x, WithAux):
          flat[k] = jax.tree_util.tree_map(jax.device_put, _quantize_like(flat[k], x), sh[k])
      loaded = traverse.unflatten_dict(flat)
    else:
      loaded = load(rest, rest_s)
    return join(loaded, adapters)
  return load_lora


def apply_to_task(task, config, frozen: tuple = ()) -> Any:
  """A loop Task made LoRA-aware when `config.model.lora.rank` > 0 (else `task` unchanged):
  per-leaf trainable mask, base-weight gradients stopped, adapters kept through the pretrained
  load, and the adapter count in the run info."""
  s = settings(config.model.get("lora"))
  if s is None:
    return task
  pred = trainable(frozen)
  loss_fn = task.loss_fn
  return dataclasses.replace(
      task, trainable=pred, loss_fn=lambda p, b, r: loss_fn(stop_base_grad(p, pred), b, r),
      load_pretrained=loader(task.load_pretrained, config.model.lora) if task.load_pretrained
      else None,
      info=dict(task.info, lora=dict(dataclasses.asdict(s), targets=",".join(s.targets))))
