"""The report files of an experiment: strict JSON (NaN -> null, private `_` keys dropped), Markdown
and a figure, each written atomically (tmp, then rename) under one directory."""

from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np


def ci(d: dict, nd: int = 3) -> str:
  """'value [lo, hi]' of a {'value', 'lo', 'hi'} interval; 'n/a' when undefined."""
  v, lo, hi = (d.get(k) for k in ("value", "lo", "hi"))
  if v is None or not np.isfinite(v):
    return "n/a"
  return f"{v:.{nd}f} [{lo:.{nd}f}, {hi:.{nd}f}]"


def json_safe(x):
  """Numbers as plain floats / ints (non-finite -> None), arrays as lists, `_`-keys left out."""
  if isinstance(x, dict):
    return {str(k): json_safe(v) for k, v in x.items() if not str(k).startswith("_")}
  if isinstance(x, (list, tuple)):
    return [json_safe(v) for v in x]
  if isinstance(x, (np.floating, float)):
    return None if not np.isfinite(x) else round(float(x), 5)
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.ndarray):
    return json_safe(x.tolist())
  return x


def write(result: dict, out_dir: str, stem: str, markdown: Callable[[dict], str],
          figure: Callable[[dict, str], None]) -> None:
  """OUT/STEM.json, OUT/STEM.md and OUT/STEM.png."""
  os.makedirs(out_dir, exist_ok=True)
  for name, text in ((f"{stem}.json", json.dumps(json_safe(result), indent=1)),
                     (f"{stem}.md", markdown(result))):
    tmp = os.path.join(out_dir, name + ".tmp")
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, os.path.join(out_dir, name))
  figure(result, os.path.join(out_dir, f"{stem}.png"))
