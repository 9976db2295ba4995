"""Config validation before anything is built: values, ranges and enums of the keys the loop and
the common model / data code read, each error naming its key.

Why up front: a bad value found after the model is loaded, the data tokenised or a workdir
written costs minutes and may leave files behind (`checkpoint_every=0` used to fail with a
ZeroDivisionError after the first step; `max_length=1` deep inside the tokenizer). Keys a config
family does not have are skipped, so every family (pair methods, PPO, ArmoRM...) shares the one
check; method-specific keys stay with their methods.
"""

from __future__ import annotations

import math
import os
from typing import Any

from rmjax.errors import ConfigError

MIN_MAX_LENGTH = 16  # a chat-rendered prompt header plus a few response tokens
DTYPES = ("float32", "bfloat16", "float16")
ENUMS = {  # key -> allowed values
    "model.dtype": DTYPES,
    "model.param_dtype": DTYPES,
    "model.attention": ("xla", "dot_product", "splash", "auto"),
    "model.remat": ("none", "full", "dots"),
    "model.head": ("scalar", "mlp", "ensemble"),
    "optim.schedule": ("cosine", "linear", "constant"),
    "data.on_overlong": ("truncate", "drop", "fail"),
    "data.on_identical": ("drop", "keep", "fail"),
    "train.best_mode": ("max", "min"),
}
AT_LEAST = {  # key -> minimum (integers)
    "train.steps": 1, "train.batch_size": 1, "train.log_every": 1, "train.checkpoint_every": 1,
    "train.keep_checkpoints": 1, "train.eval_every": 0, "optim.accum_steps": 1,
    "optim.warmup_steps": 0, "data.max_length": MIN_MAX_LENGTH, "data.limit": 0,
    "data.max_eval_examples": 0, "data.pack_length": 0,
}
FINITE_AT_LEAST = {  # key -> (minimum, strict): finite floats
    "optim.lr": (0.0, True), "optim.weight_decay": (0.0, False), "optim.clip_norm": (0.0, False),
    "optim.eps": (0.0, False), "optim.final_lr_frac": (0.0, False),
}
UNIT = ("optim.b1", "optim.b2", "data.eval_fraction")  # finite, in [0, 1]
MISSING = object()


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
      raise _bad(key, f"must be 0 (= 2 x max_length) or >= 2 x data.max_length = {need}", value)
  check("data.pack_length", pack_length)
  return errors


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
