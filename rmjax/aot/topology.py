"""Devices and meshes of a TPU slice that is not attached: compile-only devices from libtpu.

`topology_devices('v5e:4x4')` asks libtpu (through `jax.experimental.topologies`) for the 16
devices of a v5e 4x4 slice; jit programs lowered onto a mesh of them are compiled by the real
TPU compiler on this (CPU) host, which is how `rmjax.aot.report` learns per-chip memory and FLOPs
without a TPU. This is MaxText's train_compile.py recipe (get_topology_desc + Mesh), with
multi-slice meshes whose 'data' axis crosses slices over DCN.

Names: '<gen>:<AxB>' for v5e/v6e, '<gen>:<AxBxC>' for v4/v5p (chips along each torus axis), or
Cloud accelerator types 'v5e-16' / 'v5litepod-16' (chips) and 'v4-8' / 'v5p-8' (TensorCores).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
import re
import sys
from typing import Sequence

from jax.sharding import Mesh

from rmjax import sharding as shd
from rmjax.aot.chips import CHIPS, Chip, chip_of
from rmjax.errors import ConfigError

__all__ = ["CHIPS", "Chip", "chip_of", "parse_topology", "topology_devices", "topology_mesh"]

TPU_EXTRA_HINT = "install the tpu extra: pip install -e '.[tpu]'"

# accelerator-type sizes -> torus shapes (2D: chips; 3D: chips = TensorCores / 2)
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
              256: "16x16"}
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
              256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
_TOPOLOGY_RE = re.compile(r"^([a-z0-9]+):(\d+(?:x\d+)+)(_twisted|_untwisted)?$")
_ACCEL_RE = re.compile(r"^([a-z0-9]+)-(\d+)$")


def parse_topology(name: str) -> tuple:
  """'v5e:4x4' | 'v5e-16' -> (Chip, dims tuple, libtpu topology string)."""
  text = str(name).strip().lower()
  chip = chip_of(text)  # ConfigError for an unknown generation
  m = _TOPOLOGY_RE.match(text)
  if m:
    dims, suffix = tuple(int(d) for d in m.group(2).split("x")), m.group(3) or ""
  else:
    a = _ACCEL_RE.match(text)
    size = int(a.group(2)) if a else None
    table = _SHAPES_2D if chip.dims == 2 else _SHAPES_3D
    chips = size if chip.dims == 2 or size is None else size // 2
    if chips not in table:
      raise ConfigError(f"unknown TPU topology {name!r}: use '<gen>:<shape>' such as "
                        f"{'v5e:4x4' if chip.dims == 2 else 'v5p:2x2x1'} "
                        f"(known generations: {', '.join(CHIPS)})")
    dims, suffix = tuple(int(d) for d in table[chips].split("x")), ""
  if len(dims) != chip.dims or min(dims) < 1:
    raise ConfigError(f"TPU topology {name!r}: {chip.name} slices have {chip.dims} dimensions "
                      f"(e.g. {'v5e:4x4' if chip.dims == 2 else 'v5p:2x2x1'})")
  return chip, dims, f"{chip.libtpu_prefix}:{'x'.join(map(str, dims))}{suffix}"


def _require_libtpu():
  if importlib.util.find_spec("libtpu") is None:
    raise ConfigError(f"compiling for a TPU topology needs libtpu, which is not installed: "
                      f"{TPU_EXTRA_HINT}")
  # Compile-only use never touches a chip: skip the GCE metadata query, and do not take libtpu's
  # single-process lockfile, so this also runs beside a process that holds local TPUs.
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


@contextlib.contextmanager
def _quiet_stderr():
  """Silence file descriptor 2 (libtpu's C++ start-up chatter about GCE metadata, worker
  hostnames and host bounds, which does not apply to compile-only devices); Python exceptions
  raised inside still propagate."""
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, "w") as null:
      os.dup2(null.fileno(), 2)
      yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)


@functools.lru_cache(maxsize=None)
def _devices(libtpu_name: str, chip_config: str, host_bounds: tuple, num_slices: int) -> tuple:
  from jax.experimental.topologies import get_topology_desc
  try:
    with _quiet_stderr():
      desc = get_topology_desc(topology_name=libtpu_name, platform="tpu",
                               chip_config_name=chip_config, chips_per_host_bounds=host_bounds,
                               num_slices=num_slices)
  except Exception as e:  # libtpu's JaxRuntimeError / RuntimeError: one line for the user
    first = " ".join(str(e).split())[:300]
    if "not installed" in first:
      raise ConfigError(f"JAX cannot load libtpu ({first}): {TPU_EXTRA_HINT}") from None
    raise ConfigError(f"TPU topology {libtpu_name!r} (x{num_slices} slices): {first}") from None
  return tuple(desc.devices)


def topology_devices(name: str, num_slices: int = 1) -> list:
  """Compile-only devices of `num_slices` slices of topology `name` (one device per chip)."""
  if int(num_slices) < 1:
    raise ConfigError(f"num_slices must be >= 1, got {num_slices}")
  chip, dims, libtpu_name = parse_topology(name)
  _require_libtpu()
  dims3 = tuple(dims) + (1,) * (3 - len(dims))
  host_bounds = tuple(min(d, b) for d, b in zip(dims3, (2, 2, 1)))
  return list(_devices(libtpu_name, chip.chip_config, host_bounds, int(num_slices)))


def topology_mesh(name: str, mesh_shape: Sequence[int] = (-1, 1, 1), num_slices: int = 1,
                  axis_names: Sequence[str] = shd.AXES) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh over the compile-only devices of `name`.

  Devices are laid out along the physical torus (`mesh_utils.create_device_mesh`) when it can,
  else in libtpu's order. With several slices the first axis ('data') spans the slices (DCN) and
  must be a multiple of `num_slices`; the other axes stay inside a slice (ICI).
  """
  from jax.experimental import mesh_utils
  devices = topology_devices(name, num_slices)
  try:  # validates the shape and resolves a -1 entry
    shape = shd.make_mesh(mesh_shape, axis_names, devices=devices).devices.shape
  except ConfigError as e:
    raise ConfigError(f"{name} x{num_slices} slice(s) = {len(devices)} chips: {e}") from None
  if num_slices > 1:
    if shape[0] % num_slices:
      raise ConfigError(f"mesh {tuple(shape)} over {num_slices} slices of {name}: the "
                        f"'{axis_names[0]}' axis ({shape[0]}) must be a multiple of {num_slices}")
    ici = (shape[0] // num_slices,) + tuple(shape[1:])
    dcn = (num_slices,) + (1,) * (len(shape) - 1)
    arr = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, allow_split_physical_axes=True)
  else:
    try:
      arr = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError):
      arr = None
  if arr is None or math.prod(arr.shape) != len(devices):
    return shd.make_mesh(shape, axis_names, devices=devices)
  return shd.make_mesh(shape, axis_names, devices=list(arr.reshape(-1)))
