"""The files of a workdir that readers need (`rmjax score / eval / convert`, notebooks), and the
atomic JSON writer. The writer of a workdir is `rmjax.train.run.Run`."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Optional

import ml_collections as mlc

from rmjax.errors import ConfigError
from rmjax.models.llama import LlamaConfig

MODEL_EXTRAS_KEY = "rmjax"  # model_config.json: what scoring needs beyond the LlamaConfig


def write_json_atomic(path: str, obj: Any, text: Optional[str] = None) -> None:
  """Write JSON (or `text`) to a temp file beside `path`, then rename: never a half file."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
  with os.fdopen(fd, "w") as f:
    f.write(text if text is not None else json.dumps(obj, indent=2, default=float))
  os.replace(tmp, path)


def read_config(workdir: str) -> mlc.ConfigDict:
  """The run's resolved config (workdir/config.json)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ConfigError(f"{path} not found: --workdir must be a directory written by `rmjax train`")
  with open(path) as f:
    return mlc.ConfigDict(json.load(f))


def read_model_config(workdir: str) -> tuple[LlamaConfig, dict]:
  """(LlamaConfig, scoring extras) from workdir/model_config.json."""
  path = os.path.join(workdir, "model_config.json")
  if not os.path.exists(path):
    raise ConfigError(f"{path} not found: --workdir must be a directory written by `rmjax train`")
  with open(path) as f:
    fields = json.load(f)
  extras = fields.pop(MODEL_EXTRAS_KEY, {})
  return LlamaConfig(**fields), extras


def model_config_fields(cfg: LlamaConfig, extras: Optional[dict] = None) -> dict:
  fields = cfg.to_dict()
  if extras:
    fields[MODEL_EXTRAS_KEY] = dict(extras)
  return fields
