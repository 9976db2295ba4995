"""The files of a workdir that readers need (`rmjax score / eval / convert`, notebooks), and the
atomic JSON writer. The writer of a workdir is `rmjax.train.run.Run`."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Optional

import ml_collections as mlc

from rmjax.errors import CheckpointError, ConfigError
from rmjax.models.llama import LlamaConfig

MODEL_EXTRAS_KEY = "rmjax"  # model_config.json: what scoring needs beyond the LlamaConfig


def strict_json(obj: Any) -> tuple[Any, int]:
  """(obj as plain JSON types with every NaN / inf replaced by None, how many were replaced).
  Python's json writes bare NaN, which is not JSON: strict readers (jq, JavaScript, Go) fail."""
  count = 0

  def clean(x):
    nonlocal count
    if isinstance(x, dict):
      return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
      return [clean(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):  # numpy scalars and arrays
      return clean(x.tolist())
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
      count += 1
      return None
    return x
  return clean(obj), count


def dumps_strict(obj: Any, **kw) -> str:
  """Strict JSON of obj (`strict_json`); a dict records how many values became null under
  'n_nonfinite_as_null'."""
  clean, n = strict_json(obj)
  if n and isinstance(clean, dict):
    clean["n_nonfinite_as_null"] = n
  return json.dumps(clean, allow_nan=False, default=str, **kw)


def write_json_atomic(path: str, obj: Any, text: Optional[str] = None) -> None:
  """Write strict JSON (`dumps_strict`) or `text` to a temp file beside `path`, then rename:
  never a half file."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text if text is not None else dumps_strict(obj, indent=2))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the file from other users
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def _read_json(path: str, what: str) -> dict:
  """A workdir JSON file as a dict; absent, unreadable or not an object -> one-line error."""
  if not os.path.isfile(path) and what == "config":
    raise ConfigError(f"{path} not found: --workdir must be a directory written by `rmjax train`")
  if not os.path.isfile(path):
    raise CheckpointError(f"{path} not found: the workdir holds no {what} (`rmjax train` writes it)")
  try:
    with open(path, encoding="utf-8") as f:
      obj = json.load(f)
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise CheckpointError(f"{path}: unreadable {what} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
  if not isinstance(obj, dict):
    raise CheckpointError(f"{path}: a {what} must be a JSON object, got {type(obj).__name__}")
  return obj


def read_config(workdir: str) -> mlc.ConfigDict:
  """The run's resolved config (workdir/config.json)."""
  return mlc.ConfigDict(_read_json(os.path.join(workdir, "config.json"), "config"))


def read_model_config(workdir: str) -> tuple[LlamaConfig, dict]:
  """(LlamaConfig, scoring extras) from workdir/model_config.json."""
  path = os.path.join(workdir, "model_config.json")
  fields = _read_json(path, "model config")
  extras = fields.pop(MODEL_EXTRAS_KEY, {})
  try:
    return LlamaConfig(**fields), extras
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"{path}: not a model config this rmjax reads ({e})") from None


def model_config_fields(cfg: LlamaConfig, extras: Optional[dict] = None) -> dict:
  fields = cfg.to_dict()
  if extras:
    fields[MODEL_EXTRAS_KEY] = dict(extras)
  return fields
