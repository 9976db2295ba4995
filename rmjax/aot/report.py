"""Compile a function for a TPU topology and report what one chip would need: a row per function.

`compile_function` lowers `fn` onto a mesh of compile-only TPU devices (`rmjax.aot.topology`)
with abstract sharded arguments (`rmjax.aot.steps`) and runs the real TPU compiler. A program
that does not fit in HBM fails to compile with RESOURCE_EXHAUSTED; that becomes a row with
fits=False and the compiler's figures on one line, never an exception.

Memory (per chip, from `compiled.memory_analysis()`): arguments + outputs - aliased + temporaries,
the sum MaxText's train_compile prints; `peak_bytes` is the compiler's own peak of live buffers,
which can be well below that sum (a v5e 8B train step: 16.9 GiB summed, 11.2 GiB peak, and it
compiled for 15.75 GiB usable). `alias_bytes` is the part of the outputs written into
donated argument buffers (`donate_argnums`): a train step that donates its state holds one copy of
params and optimizer state, not two. Executable code and the compiler's reserved HBM are not in
the total (code is reported apart); `fits` is the compiler's verdict.

FLOPs (from `compiled.cost_analysis()`) are per chip: the partitioned program one device runs,
2 per multiply-add; loop bodies (nn.scan layers) are counted once, flagged by `has_loops`.
"""

from __future__ import annotations

import re
import time
from typing import Any, Iterable, Optional, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh

from rmjax import sharding as shd
from rmjax.aot.chips import chip_of
from rmjax.checkpoints.workdir import write_json_atomic

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _bytes(num: str, unit: str) -> int:
  return int(float(num) * _UNITS[unit[:1].upper() if unit else ""])


def is_oom(err: BaseException) -> bool:
  text = str(err)
  return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text


def oom_summary(err: BaseException) -> tuple:
  """(one-line message, figures) from the compiler's RESOURCE_EXHAUSTED text. The message keeps
  the headline and the HBM usage breakdown, not the list of largest allocations; figures has
  'required_bytes' / 'temp_bytes' / 'available_bytes' where the text gives them."""
  text = str(err)
  kept = []
  for line in text.splitlines():
    if re.match(r"\s*(Largest program allocations|Buffer \d+:|Program hbm requirement)", line):
      break
    if line.strip():
      kept.append(" ".join(line.split()))
  message = "; ".join(kept)
  message = message[:400] + ("..." if len(message) > 400 else "")
  figures = {}
  num = r"([\d.]+)\s*([KMGT]?)i?B?"
  m = re.search(rf"Used {num} of {num} hbm", text)
  if m:
    figures["required_bytes"] = _bytes(m.group(1), m.group(2))
    figures["available_bytes"] = _bytes(m.group(3), m.group(4))
  m = re.search(rf"required for HLO temporaries \({num}\) exceeds available HBM \({num}\)", text)
  if m:
    figures["temp_bytes"] = _bytes(m.group(1), m.group(2))
    figures["available_bytes"] = _bytes(m.group(3), m.group(4))
  return message, figures


def _mesh_text(mesh: Mesh) -> str:
  return ",".join(f"{k}={v}" for k, v in mesh.shape.items())


def _cost(compiled) -> dict:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # not every backend implements it
    return {}
  if isinstance(cost, (list, tuple)):  # older jax: one dict per partition
    cost = cost[0] if cost else {}
  return dict(cost or {})


def compile_function(name: str, fn, abstract_args: Sequence[Any], in_shardings, out_shardings,
                     mesh: Mesh, chip, donate_argnums=(), rules=shd.DEFAULT_RULES,
                     model_flops: Optional[float] = None) -> dict:
  """Compile `fn(*abstract_args)` for `mesh` and return its row (see the module docstring).

  `chip`: a `Chip` or a generation / topology name ('v5e', 'v5e:4x4'). `model_flops`: the step's
  useful global FLOPs (e.g. `rmjax.aot.flops.llama_flops`); when given, the roofline uses them.
  Row keys: function, chip, chips, mesh, fits, argument_bytes, output_bytes, alias_bytes,
  temp_bytes, code_bytes, peak_bytes, total_bytes, hbm_bytes (nominal), hbm_available_bytes (what
  an OOM message says the compiler could use), compile_s, flops (per chip),
  bytes_accessed (per chip), has_loops, model_flops (global), roofline_step_s, mfu_at_roofline,
  error.

  roofline_step_s is a lower bound on the step time from one chip's peak bf16 FLOP/s and HBM
  bandwidth: max(flops, model_flops / chips) / peak and bytes_accessed / bandwidth (compute and
  HBM traffic; no communication). mfu_at_roofline = (model_flops / chips / peak) / roofline_step_s:
  the MFU a step running at that bound would reach (below 1 when the program is HBM-bound or
  computes more than the model needs: remat, replicated work); without model_flops, the
  compiler's flops stand in for them.
  """
  chip = chip_of(chip)
  chips = int(mesh.devices.size)
  row: dict = {"function": name, "chip": chip.name, "chips": chips, "mesh": _mesh_text(mesh),
               "fits": False, "argument_bytes": None, "output_bytes": None, "alias_bytes": None,
               "temp_bytes": None, "code_bytes": None, "peak_bytes": None, "total_bytes": None,
               "hbm_bytes": chip.hbm_bytes, "hbm_available_bytes": None, "compile_s": None, "flops": None,
               "bytes_accessed": None, "has_loops": None,
               "model_flops": float(model_flops) if model_flops else None,
               "roofline_step_s": None, "mfu_at_roofline": None, "error": None}
  t0 = time.perf_counter()
  try:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings,
                       donate_argnums=donate_argnums)
      compiled = jitted.lower(*abstract_args).compile()
  except Exception as e:  # noqa: BLE001 - only the compiler's out-of-memory verdict is a result
    if not is_oom(e):
      raise
    row["compile_s"] = round(time.perf_counter() - t0, 2)
    message, figures = oom_summary(e)
    row["error"] = message
    # the compiler's own figure of what it needed (a lower bound when it names temporaries only)
    row["total_bytes"] = figures.get("required_bytes") or figures.get("temp_bytes")
    row["temp_bytes"] = figures.get("temp_bytes")
    row["hbm_available_bytes"] = figures.get("available_bytes")
    return row
  row["compile_s"] = round(time.perf_counter() - t0, 2)

  mem = compiled.memory_analysis()
  if mem is not None:
    arg, out = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
    alias, temp = int(mem.alias_size_in_bytes), int(mem.temp_size_in_bytes)
    row.update(argument_bytes=arg, output_bytes=out, alias_bytes=alias, temp_bytes=temp,
               code_bytes=int(mem.generated_code_size_in_bytes),
               total_bytes=arg + out - alias + temp)
    peak = getattr(mem, "peak_memory_in_bytes", None)
    row["peak_bytes"] = int(peak) if peak else None
  # The compiler's verdict: it refuses (RESOURCE_EXHAUSTED) what does not fit its HBM budget.
  # total_bytes can exceed HBM on a program that compiled (the temporaries' allocation is not
  # all live beside the arguments; peak_bytes is the compiler's live peak), so it is no verdict.
  row["fits"] = True

  cost = _cost(compiled)
  if cost.get("flops") is not None:
    row["flops"] = float(cost["flops"])
  if cost.get("bytes accessed") is not None:
    row["bytes_accessed"] = float(cost["bytes accessed"])
  try:
    row["has_loops"] = bool(re.search(r"\bwhile\(", compiled.as_text() or ""))
  except Exception:  # noqa: BLE001
    row["has_loops"] = None

  useful = row["model_flops"] / chips if row["model_flops"] else row["flops"]
  if useful:
    compute_s = max(row["flops"] or 0.0, useful) / chip.peak_bf16_flops
    memory_s = (row["bytes_accessed"] or 0.0) / chip.hbm_bandwidth
    bound = max(compute_s, memory_s)
    row["roofline_step_s"] = bound
    row["mfu_at_roofline"] = (useful / chip.peak_bf16_flops) / bound if bound else None
  return row


def _size(x) -> str:
  """Bytes as K/M/G (binary units, 3 significant digits)."""
  if x is None:
    return "-"
  for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
    if abs(x) >= scale:
      return f"{x / scale:.3g}{unit}"
  return f"{int(x)}B"


def format_table(rows: Iterable[dict]) -> str:
  """A fixed-width text table, one line per row, FITS or OOM in the verdict column (sizes per
  chip, binary K/M/G); an OOM row ends with the compiler's one-line message."""
  head = ("function", "chip", "chips", "mesh", "verdict", "total", "peak", "args", "out", "alias", "temp", "HBM",
          "compile_s", "TFLOP/chip", "roofline_ms", "MFU@roof", "error")
  lines = []
  for r in rows:
    tflop = "-" if r.get("flops") is None else f"{r['flops'] / 1e12:.3f}" + ("*" if r.get("has_loops") else "")
    roof = "-" if r.get("roofline_step_s") is None else f"{r['roofline_step_s'] * 1e3:.2f}"
    mfu = "-" if r.get("mfu_at_roofline") is None else f"{r['mfu_at_roofline']:.2f}"
    lines.append((str(r.get("function")), str(r.get("chip")), str(r.get("chips")), str(r.get("mesh")),
                  "FITS" if r.get("fits") else "OOM", _size(r.get("total_bytes")), _size(r.get("peak_bytes")),
                  _size(r.get("argument_bytes")), _size(r.get("output_bytes")),
                  _size(r.get("alias_bytes")), _size(r.get("temp_bytes")), _size(r.get("hbm_bytes")),
                  "-" if r.get("compile_s") is None else f"{r['compile_s']:.1f}", tflop, roof, mfu,
                  r.get("error") or ""))
  widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(head)]
  fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
  out = [fmt(head), fmt(tuple("-" * w for w in widths))] + [fmt(l) for l in lines]
  if any(r.get("has_loops") for r in rows):
    out.append("* loop bodies (scanned layers) counted once by the compiler's cost analysis")
  return "\n".join(out)


def write_json(rows: Sequence[dict], path: str) -> str:
  """Write `rows` as a JSON list to `path` atomically (temp file in the same folder + rename)."""
  write_json_atomic(path, list(rows))
  return path
