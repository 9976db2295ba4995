"""Config validation before anything is built: values, ranges and enums of the keys the loop and
the common model / data code read, each error naming its key.

Why up front: a bad value found after the model is loaded, the data tokenised or a workdir
written costs minutes and may leave files behind (`checkpoint_every=0` used to fail with a
ZeroDivisionError after the first step; `max_length=1` deep inside the tokenizer). Keys a config
family does not have are skipped, so every family (pair methods, PPO, ArmoRM...) shares the one
check; method-specific keys stay with their methods, except GRM's `loss.reg` and the
`model.lora` combinations a method cannot run (`lora_errors`), which would otherwise surface only
after a backbone loads. Enums come from the modules that act on them (`ENUMS`).
"""

from __future__ import annotations

import math
import os
from typing import Any

from rmjax import lm_losses
from rmjax.data import batching
from rmjax.errors import ConfigError
from rmjax.models import attention, llama, lora, reward_model
from rmjax.train import state

MIN_MAX_LENGTH = 16  # a chat-rendered prompt header plus a few response tokens
# Each enum is read from the module that acts on the value, so a new backend, head or schedule is
# accepted here once its owner has it. Two are this module's own: no code dispatches on them by
# name (jnp.dtype takes any dtype; the checkpointer treats any best_mode but "min" as "max").
DTYPES = ("float32", "bfloat16", "float16")
ENUMS = {  # key -> allowed values
    "model.dtype": DTYPES,
    "model.param_dtype": DTYPES,
    "model.attention": attention.BACKENDS,
    "model.remat": llama.REMAT,
    "model.head": reward_model.HEADS,
    "optim.schedule": state.SCHEDULES,
    "data.on_overlong": batching.ON_OVERLONG,
    "loss.reg": lm_losses.REGULARISERS,  # GRM's L_reg
    "train.best_mode": ("max", "min"),
}
AT_LEAST = {  # key -> minimum (integers)
    "train.steps": 1, "train.batch_size": 1, "train.log_every": 1, "train.checkpoint_every": 1,
    "train.keep_checkpoints": 1, "train.eval_every": 0, "optim.accum_steps": 1,
    "optim.warmup_steps": 0, "data.max_length": MIN_MAX_LENGTH, "data.limit": 0,
    "data.max_eval_examples": 0, "data.pack_length": 0, "data.pack_length_multiple": 0,
}
FINITE_AT_LEAST = {  # key -> (minimum, strict): finite floats
    "optim.lr": (0.0, True), "optim.weight_decay": (0.0, False), "optim.clip_norm": (0.0, False),
    "optim.eps": (0.0, False), "optim.final_lr_frac": (0.0, False),
}
UNIT = ("optim.b1", "optim.b2", "data.eval_fraction")  # finite, in [0, 1]
MISSING = object()
# model.lora targets (rmjax.models.lora): the attention projections and the LM head, not the MLP
LORA_QUANT, LORA_TARGETS, LORA_MLP = lora.QUANT, lora.TARGETS, lora.MLP_TARGETS

def _get(config, key: str) -> Any:
  node = config
  for part in key.split("."):
    if not hasattr(node, "get"):
      return MISSING
    node = node.get(part, MISSING)
    if node is MISSING:
      return MISSING
  return node


def _bad(key: str, what: str, value) -> ConfigError:
  return ConfigError(f"config key {key}: {what}, got {value!r}")


def _number(key: str, value, integer: bool) -> float:
  ok = isinstance(value, int) if integer else isinstance(value, (int, float))
  if isinstance(value, bool) or not ok:
    raise _bad(key, "must be an integer" if integer else "must be a number", value)
  return value


def config_errors(config) -> list[ConfigError]:
  """Every problem found in `config` (an empty list when it is fine)."""
  errors = []

  def check(key, fn):
    value = _get(config, key)
    if value is MISSING:
      return
    try:
      fn(key, value)
    except ConfigError as e:
      errors.append(e)

  def enum(allowed):
    def fn(key, value):
      if value not in allowed:
        raise _bad(key, f"must be one of {', '.join(allowed)}", value)
    return fn

  def at_least(low):
    def fn(key, value):
      if _number(key, value, integer=True) < low:
        raise _bad(key, f"must be >= {low}", value)
    return fn

  def finite_at_least(low, strict):
    def fn(key, value):
      v = float(_number(key, value, integer=False))
      if not math.isfinite(v) or v < low or (strict and v == low):
        raise _bad(key, f"must be a finite number {'>' if strict else '>='} {low}", value)
    return fn

  def unit(key, value):
    v = float(_number(key, value, integer=False))
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
      raise _bad(key, "must be a finite number in [0, 1]", value)

  def mesh(key, value):
    if (not isinstance(value, (tuple, list)) or not value
        or not all(isinstance(s, int) and not isinstance(s, bool) and (s >= 1 or s == -1)
                   for s in value)):
      raise _bad(key, "must be a tuple of positive integers (one may be -1)", value)

  for key, allowed in ENUMS.items():
    check(key, enum(allowed))
  for key, low in AT_LEAST.items():
    check(key, at_least(low))
  for key, (low, strict) in FINITE_AT_LEAST.items():
    check(key, finite_at_least(low, strict))
  for key in UNIT:
    check(key, unit)
  check("mesh.shape", mesh)

  def pack_length(key, value):  # a pair's chosen + rejected share one packed row
    need = 2 * int(_get(config, "data.max_length"))
    if _get(config, "data.packing") is True and value and _number(key, value, True) < need:
      raise _bad(key, f"must be 0 (= 3 x max_length) or >= 2 x data.max_length = {need}", value)
  check("data.pack_length", pack_length)
  errors.extend(lora_errors(config))
  return errors


def lora_errors(config) -> list[ConfigError]:
  """`model.lora` values, and the combinations no method can run: a frozen backbone (the
  adapters live inside it), QLoRA or a random frozen value backbone in PPO, ArmoRM (its stages
  take no adapters: the config would silently train in full), ensemble modes that do not fit."""
  rank = _get(config, "model.lora.rank")
  if rank is MISSING:
    return []
  lc = config.model.lora
  if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
    return [_bad("model.lora.rank", "must be an integer >= 0 (0 = LoRA off)", rank)]
  out = []
  mode = _get(config, "ensemble.mode")
  if rank == 0:
    if mode == "lora":
      out.append(_bad("ensemble.mode", "'lora' needs model.lora.rank > 0", mode))
    return out
  alpha, dropout = lc.get("alpha", 0.0), lc.get("dropout", 0.0)
  quant, targets = lc.get("quant", "") or "", lc.get("targets", "")
  if (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha)
      or alpha < 0):
    out.append(_bad("model.lora.alpha", "must be a finite number >= 0 (0 = rank)", alpha))
  if (isinstance(dropout, bool) or not isinstance(dropout, (int, float))
      or not 0.0 <= dropout < 1.0):
    out.append(_bad("model.lora.dropout", "must be a number in [0, 1)", dropout))
  if quant not in LORA_QUANT:
    out.append(_bad("model.lora.quant", "must be '' (off) or one of "
                    + ", ".join(q for q in LORA_QUANT if q), quant))
  names = [t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets)
           if str(t).strip()]
  bad = [t for t in names if t not in LORA_TARGETS]
  if bad or not names:
    why = (" (the MLP's SwiGLU VJP is hand-written: qwix cannot see it)"
           if set(bad) & set(LORA_MLP) else "")
    out.append(_bad("model.lora.targets", f"must name some of {', '.join(LORA_TARGETS)}{why}",
                    targets))
  if _get(config, "train.freeze_backbone") is True:
    out.append(_bad("train.freeze_backbone", "must be False with model.lora.rank > 0 (the "
                    "adapters train inside the backbone)", True))
  task = _get(config, "task")
  if task == "ppo" and quant:
    out.append(_bad("model.lora.quant", "QLoRA is not supported for PPO (its sampler runs the "
                    "merged float weights); use ''", quant))
  if task == "ppo" and _get(config, "ppo.value_init") == "random":
    out.append(_bad("ppo.value_init", "'random' with model.lora.rank > 0 would freeze a random "
                    "value backbone (only adapters and the head train); use 'policy'", "random"))
  if task == "armorm":
    out.append(_bad("model.lora.rank", "must be 0 for task armorm (its stages take no adapters)",
                    rank))
  if mode == "independent":
    out.append(_bad("ensemble.mode", "'independent' with model.lora.rank > 0 would freeze K "
                    "backbone copies; use 'lora' (K adapter sets on one backbone) or 'heads'",
                    mode))
  return out


def validate_config(config) -> None:
  """Raise one ConfigError naming every bad key (the first few), or return."""
  errors = config_errors(config)
  if errors:
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    raise ConfigError("; ".join(str(e) for e in errors[:3]) + more)


def check_workdir_writable(workdir: str) -> None:
  """A workdir (or the nearest existing folder above it) that this process cannot write to is
  refused before anything is built."""
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"--workdir {workdir}: exists and is not a directory")
  probe = path
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.access(probe, os.W_OK | os.X_OK):
    raise ConfigError(f"--workdir {workdir}: {probe} is not writable")
