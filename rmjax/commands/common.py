"""Flags and helpers shared by several commands (the workdir, data, batch and checkpoint step)."""

from __future__ import annotations

import os
import sys

from absl import flags
from ml_collections import config_flags

import configs
from rmjax.errors import ConfigError
from rmjax.tasks.runs import validate_config

FLAGS = flags.FLAGS
CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:variant], e.g. "
                                         "configs/bt.py:tiny", lock_config=True)
flags.DEFINE_string("workdir", None, "run directory (config, checkpoints, metrics, eval)")
flags.DEFINE_string("data", None, "input data: a JSONL/JSON/Parquet path or a source spec "
                    "(shared:NAME, hub:NAME[:SPLIT], json:PATH, synthetic:N)")
flags.DEFINE_integer("batch_size", 16, "score/eval batch size (rows per forward)")
flags.DEFINE_integer("step", None, "checkpoint step to load (default: the latest)")
flags.DEFINE_bool("debug", False, "show the traceback of an unexpected error")
flags.DEFINE_bool("strict", False, "fail (exit 2) instead of dropping, skipping or truncating "
                  "any input record (train: also instead of resuming from an older checkpoint "
                  "when the newest is damaged)")
flags.DEFINE_bool("overwrite", False, "train: replace a run of another method or model in "
                  "--workdir (without it such a workdir is refused)")


def default_config_path(family: str = "bt", arg: str = "tiny") -> str:
  return os.path.join(os.path.dirname(configs.__file__), f"{family}.py") + f":{arg}"


def config_load_error() -> str | None:
  """Why --config could not be loaded (a missing or unreadable file), or None. ml_collections
  defers that error to the first use of the config; this names it up front."""
  error = vars(CONFIG.value).get("_error") if CONFIG.value is not None else None
  if error is None:
    return None
  path = config_flags.get_config_filename(FLAGS["config"])
  reason = str(error).strip().splitlines()[-1].strip() if str(error).strip() else type(error).__name__
  return f"--config {path}: cannot load the config file ({reason})"


def config():
  """The parsed --config (locked), or the built-in default configs/bt.py:tiny, validated (values,
  ranges, enums: `rmjax.train.validate`, reached through `rmjax.tasks.runs`) before any command
  builds anything from it."""
  value = CONFIG.value
  if value is None:
    FLAGS["config"].parse(default_config_path())
    value = CONFIG.value
  error = config_load_error()
  if error:
    raise ConfigError(error)
  validate_config(value)
  return value


def require(name: str):
  value = FLAGS[name].value
  if not value:
    command = sys.argv[1] if len(sys.argv) > 1 else "train"
    raise ConfigError(f"--{name} is required for `rmjax {command}`")
  return value


def positive_batch_size() -> int:
  if FLAGS.batch_size < 1:
    raise ConfigError(f"--batch_size must be >= 1, got {FLAGS.batch_size}")
  return FLAGS.batch_size
