"""Meshes, the logical-axis rules table, and placement of params and batches.

One rules table maps the logical names that modules put on parameters and activations to the
mesh axes ('data', 'fsdp', 'tensor'). The mesh is built with `jax.sharding.Mesh` and Auto axis
types on purpose: Flax's logical constraints and jit in/out shardings drive the layout, and the
same code runs on 1 device or many.

Multi-process (multi-host) runs: `maybe_initialize_distributed` starts `jax.distributed` from
explicit flags or the TPU / SLURM / Open MPI / JAX_COORDINATOR_ADDRESS environment;
`make_mesh` orders the devices by process, so every process owns one contiguous block of rows
of the batch axes; data producers (`rmjax.data.batching.PairBatcher`) emit only that block of
every global batch and `shard_batch` assembles the global array from the process-local rows.
`check_sufficiently_sharded` warns when most parameter bytes stay replicated over fsdp/tensor.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rmjax.errors import ConfigError
from rmjax.models.init import abstract_params
from rmjax.models.llama import Llama

log = logging.getLogger(__name__)

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")

# logical name -> mesh axis (or axes, or None = replicated). First match wins.
DEFAULT_RULES: tuple = (
    ("act_batch", BATCH),
    ("batch", BATCH),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("hidden", "tensor"),
    ("objectives", None),
    ("ensemble", None),
    ("layers", None),
    ("norm", None),
)


def make_mesh(shape: Sequence[int] = (-1, 1, 1), axis_names: Sequence[str] = AXES,
              devices=None) -> Mesh:
  """A mesh of `shape` over the devices; one -1 entry takes what is left.

  Devices are ordered by process (stable, so one process keeps `jax.devices()` order): the
  row-major reshape then gives each process a contiguous block of the (data, fsdp) batch rows
  whenever the tensor axis fits inside one process (see `batch_shard`).
  """
  devices = sorted(jax.devices() if devices is None else devices, key=lambda d: d.process_index)
  shape = list(shape)
  n = len(devices)
  if len(shape) != len(axis_names):
    raise ConfigError(f"mesh shape {tuple(shape)} has {len(shape)} axes, expected {len(axis_names)} "
                      f"({', '.join(axis_names)})")
  if shape.count(-1) > 1:
    raise ConfigError(f"mesh shape {tuple(shape)}: at most one axis may be -1")
  known = math.prod(s for s in shape if s != -1)
  if known <= 0 or n % known:
    raise ConfigError(f"mesh shape {tuple(shape)} does not fit {n} device(s)")
  shape = [n // known if s == -1 else s for s in shape]
  if math.prod(shape) != n:
    raise ConfigError(f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices, have {n}")
  arr = np.asarray(devices).reshape(shape)
  return Mesh(arr, tuple(axis_names),
              axis_types=(jax.sharding.AxisType.Auto,) * len(axis_names))


def _fit(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
  """Drop mesh axes from dims they do not divide (e.g. 3 KV heads over tensor=2): replicate instead."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      out.append(None)
      continue
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    size = math.prod(mesh.shape[a] for a in names)
    out.append(axes if dim % size == 0 else None)
  return P(*out)


def logical_to_sharding(logical_spec: P, shape, mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
  spec = nn.logical_to_mesh_axes(tuple(logical_spec), rules)
  return NamedSharding(mesh, _fit(spec, shape, mesh))


def tree_shardings(boxed_tree: Any, mesh: Mesh, rules=DEFAULT_RULES, *,
                   check_min_bytes: Optional[int] = None) -> Any:
  """NamedShardings for a tree of `nn.LogicallyPartitioned` leaves (e.g. from eval_shape(init)).

  Also runs `check_sufficiently_sharded` on the result (one warning line when most bytes stay
  replicated over an fsdp/tensor axis > 1) for trees of at least `check_min_bytes` bytes
  (default `AUTO_CHECK_MIN_BYTES`; pass a huge value to skip).
  """
  def one(x):
    if isinstance(x, nn.LogicallyPartitioned):
      return logical_to_sharding(P(*x.names), x.value.shape, mesh, rules)
    return NamedSharding(mesh, P())
  out = jax.tree_util.tree_map(one, boxed_tree,
                               is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  check_sufficiently_sharded(strip_boxes(boxed_tree), out, mesh,
                             min_bytes=AUTO_CHECK_MIN_BYTES if check_min_bytes is None
                             else check_min_bytes)
  return out


def strip_boxes(tree: Any) -> Any:
  """Drop `nn.LogicallyPartitioned` wrappers without applying constraints (safe on abstract
  values and inside a mesh context, unlike `nn.unbox`)."""
  return jax.tree_util.tree_map(
      lambda x: x.value if isinstance(x, nn.LogicallyPartitioned) else x, tree,
      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying their target shardings (for orbax restore / jit lowering)."""
  return jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def llama_param_shardings(cfg, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
  """Shardings of the Llama parameter tree for `cfg`, computed without allocating weights."""
  return tree_shardings(abstract_params(Llama(cfg)), mesh, rules)


def place(tree: Any, shardings: Any) -> Any:
  """Put host arrays (numpy or jax) onto their shardings, leaf by leaf."""
  return jax.tree_util.tree_map(lambda x, s: jax.device_put(x, s), tree, shardings)


def shard_params(params: Any, cfg, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
  """Llama params placed straight onto the shardings that the rules table gives them."""
  return place(params, llama_param_shardings(cfg, mesh, rules))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading (batch) dim over ('data', 'fsdp'); other dims replicated."""
  return NamedSharding(mesh, P(BATCH, *([None] * (ndim - 1))))


def batch_shard(mesh: Mesh) -> tuple:
  """(index, count): this process holds block `index` of `count` equal, contiguous blocks of
  rows of every array whose leading dim is sharded over ('data', 'fsdp') on `mesh`.

  Read off the mesh's real device placement (`devices_indices_map`), not assumed. One process:
  (0, 1). Meshes from `make_mesh` on several processes: (process_index, process_count) as long
  as the tensor axis fits inside one process (processes sharing a batch block share the index).
  Raises ConfigError when a process's rows are not one contiguous block (a hand-built mesh with
  devices interleaved across processes): process-local data could not be laid out then.
  """
  return _batch_shard(mesh, jax.process_index())


@functools.lru_cache(maxsize=64)
def _batch_shard(mesh: Mesh, process_index: int) -> tuple:
  n = batch_divisor(mesh)
  rows_of: dict = {}
  for dev, idx in batch_sharding(mesh, 1).devices_indices_map((n,)).items():
    rows_of.setdefault(dev.process_index, set()).update(range(*idx[0].indices(n)))
  blocks = {}
  for proc, rows in sorted(rows_of.items()):
    lo, hi = min(rows), max(rows) + 1
    if len(rows) != hi - lo:
      raise ConfigError(f"mesh: process {proc} holds batch shards {sorted(rows)} of {n}, not one "
                        "contiguous block; build the mesh with rmjax.sharding.make_mesh (devices "
                        "ordered by process)")
    blocks[proc] = (lo, hi)
  distinct = sorted(set(blocks.values()))
  sizes = {hi - lo for lo, hi in distinct}
  if len(sizes) != 1 or any(a[1] != b[0] for a, b in zip(distinct, distinct[1:])):
    raise ConfigError(f"mesh: the processes' batch blocks {distinct} do not split the {n} batch "
                      "shards into equal disjoint blocks")
  if process_index not in blocks:
    raise ConfigError(f"mesh holds no device of process {process_index}")
  return distinct.index(blocks[process_index]), len(distinct)


def shard_batch(batch: dict, mesh: Mesh, *, global_batch: bool = False) -> dict:
  """Host batch -> arrays sharded over the batch axes ('data', 'fsdp').

  One process: `batch` is the whole batch, put onto the mesh (`global_batch` changes nothing).
  Several processes, default: `batch` holds THIS process's rows only -- block
  `batch_shard(mesh)` of the global batch, as `PairBatcher` emits them -- and the global array
  (count x the local rows) is assembled with `jax.make_array_from_process_local_data`.
  `global_batch=True`: every process passes the same whole batch and each keeps its own rows
  (for producers that build identical batches everywhere: scoring, rollouts, embeddings).
  0-d leaves are replicated and must be equal in every process.
  """
  multi = jax.process_count() > 1
  count = batch_shard(mesh)[1] if multi and not global_batch else 1

  def one(x):
    x = np.asarray(x)
    if not x.ndim:
      sharding = NamedSharding(mesh, P())
      return (jax.make_array_from_process_local_data(sharding, x, x.shape) if multi
              else jax.device_put(x, sharding))
    rows = x.shape[0] * count
    if rows % batch_divisor(mesh):
      local = f" ({x.shape[0]} in each of {count} process blocks)" if count > 1 else ""
      raise ConfigError(f"batch of {rows} rows{local} does not divide over the mesh's data x fsdp "
                        f"= {batch_divisor(mesh)} devices")
    sharding = batch_sharding(mesh, x.ndim)
    if multi:
      return jax.make_array_from_process_local_data(sharding, x, (rows,) + x.shape[1:])
    return jax.device_put(x, sharding)
  return jax.tree_util.tree_map(one, batch)


def batch_divisor(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


# ------------------------------------------------------------------ sufficiently sharded

WEIGHT_AXES = ("fsdp", "tensor")  # mesh axes meant to split parameter bytes
AUTO_CHECK_MIN_BYTES = 1 << 20  # tree_shardings checks trees of at least this many bytes
_warned: set = set()


def _nbytes(x) -> int:
  shape = getattr(x, "shape", np.shape(x))
  dtype = getattr(x, "dtype", None) or np.asarray(x).dtype
  return int(math.prod(shape)) * np.dtype(dtype).itemsize


def sharding_report(tree: Any, shardings: Any, mesh: Mesh, axes: Sequence[str] = WEIGHT_AXES) -> dict:
  """How well `tree` (arrays or ShapeDtypeStructs) is split over the weight axes under
  `shardings` (a matching tree of NamedShardings).

  total_bytes; replicated_bytes / replicated_fraction: bytes of leaves sharded over none of the
  weight axes of size > 1 (each device holds them whole); per_device_bytes (weight-axis split
  only) vs ideal_per_device_bytes = total / prod(weight axis sizes); largest_replicated: the
  biggest such leaves as (path, shape) -- typically a dimension `_fit` had to replicate because
  the mesh axis does not divide it.
  """
  sizes = {a: mesh.shape[a] for a in axes if a in mesh.shape and mesh.shape[a] > 1}
  weight_devices = math.prod(sizes.values())
  total = replicated = per_device = 0
  largest = []
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  specs = jax.tree_util.tree_leaves(shardings)
  if len(leaves) != len(specs):
    raise ValueError(f"tree has {len(leaves)} leaves but shardings has {len(specs)}")
  for (path, x), s in zip(leaves, specs):
    nbytes = _nbytes(x)
    used = set()
    for entry in getattr(s, "spec", ()):
      if entry is not None:
        used.update((entry,) if isinstance(entry, str) else entry)
    factor = math.prod(sizes.get(a, 1) for a in used)
    total += nbytes
    per_device += nbytes / factor
    if factor == 1:
      replicated += nbytes
      largest.append((nbytes, jax.tree_util.keystr(path), tuple(getattr(x, "shape", ()))))
  largest.sort(key=lambda t: -t[0])
  return dict(total_bytes=total, replicated_bytes=replicated,
              replicated_fraction=replicated / total if total else 0.0,
              weight_axes=sizes, per_device_bytes=per_device,
              ideal_per_device_bytes=total / max(weight_devices, 1),
              largest_replicated=[(p, sh) for _, p, sh in largest[:3]])


def check_sufficiently_sharded(tree: Any, shardings: Any, mesh: Mesh, *, threshold: float = 0.5,
                               min_bytes: int = 0, axes: Sequence[str] = WEIGHT_AXES) -> dict:
  """MaxText-style check: log ONE warning line when more than `threshold` of the bytes of
  `tree` are replicated although the mesh has an fsdp/tensor axis > 1 (e.g. `_fit` silently
  replicated dimensions the axis does not divide); the same message is logged once per process.
  Trees under `min_bytes` are not judged. Returns `sharding_report(...)` plus `warned`."""
  rep = sharding_report(tree, shardings, mesh, axes)
  rep["warned"] = False
  if rep["weight_axes"] and rep["total_bytes"] >= min_bytes and rep["replicated_fraction"] > threshold:
    axes_s = ", ".join(f"{a}={n}" for a, n in rep["weight_axes"].items())
    big = "; ".join(f"{p} {list(sh)}" for p, sh in rep["largest_replicated"])
    msg = (f"sharding: {rep['replicated_fraction']:.0%} of {rep['total_bytes'] / 2**20:.1f} MiB of "
           f"parameters are replicated over {axes_s} (per device "
           f"{rep['per_device_bytes'] / 2**20:.1f} MiB vs {rep['ideal_per_device_bytes'] / 2**20:.1f}"
           f" MiB if fully sharded); largest: {big} -- a mesh axis that does not divide a "
           "dimension is replicated (sharding._fit)")
    rep["warned"] = True
    if msg not in _warned:
      _warned.add(msg)
      log.warning(msg)
  return rep


# ------------------------------------------------------------------ multi-process start-up

def distributed_env(environ=None) -> Optional[str]:
  """Which multi-process launcher the environment declares (None: a single process).

  JAX_COORDINATOR_ADDRESS (with JAX_NUM_PROCESSES / JAX_PROCESS_ID, or cluster detection);
  SLURM under srun with more than one task; Open MPI (mpirun) with more than one rank; TPU pods
  (TPU_WORKER_HOSTNAMES listing more than one host, as GKE and most launchers set it) and
  multislice (MEGASCALE_COORDINATOR_ADDRESS); RMJAX_DISTRIBUTED=1 forces
  `jax.distributed.initialize()` with JAX's own cluster detection (e.g. a GCE TPU pod whose
  environment names no worker list: JAX then asks the metadata server).
  """
  env = os.environ if environ is None else environ

  def num(name):
    try:
      return int(env.get(name) or 0)
    except ValueError:
      return 0
  if env.get("RMJAX_DISTRIBUTED", "").lower() in ("1", "true", "yes"):
    return "forced"
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return "jax"
  if num("SLURM_NTASKS") > 1 and "SLURM_PROCID" in env and "SLURM_STEP_NODELIST" in env:
    return "slurm"
  if num("OMPI_COMM_WORLD_SIZE") > 1 and "OMPI_MCA_orte_hnp_uri" in env:
    return "ompi"
  if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "tpu-multislice"
  if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]) > 1:
    return "tpu"
  return None


def maybe_initialize_distributed(coordinator=None, num_processes=None, process_id=None,
                                 local_device_ids=None, *, initialization_timeout: int = 300) -> bool:
  """`jax.distributed.initialize()` when several processes are declared; True if it ran (or had).

  Explicit: `coordinator` HOST:PORT (or env JAX_COORDINATOR_ADDRESS) with `num_processes` and
  `process_id` (or env JAX_NUM_PROCESSES / JAX_PROCESS_ID, or a detected cluster filling them).
  `local_device_ids` (list or "0,1"; env JAX_LOCAL_DEVICE_IDS) restricts this process to some
  local accelerators, e.g. several processes on one GPU host; CPU processes take their fake
  devices from XLA_FLAGS=--xla_force_host_platform_device_count=N instead.
  Otherwise the environment decides (`distributed_env`: TPU pods, SLURM, Open MPI). Must run
  before any JAX computation. num_processes=1 is a no-op.
  """
  if jax.distributed.is_initialized():
    return True
  env = os.environ
  coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS") or None
  if num_processes is None and env.get("JAX_NUM_PROCESSES"):
    num_processes = int(env["JAX_NUM_PROCESSES"])
  if process_id is None and env.get("JAX_PROCESS_ID"):
    process_id = int(env["JAX_PROCESS_ID"])
  if isinstance(local_device_ids, str):
    local_device_ids = [int(i) for i in local_device_ids.split(",") if i.strip()]
  if num_processes is not None and num_processes < 1:
    raise ConfigError(f"--num_processes must be >= 1, got {num_processes}")
  if num_processes == 1:
    return False
  kind = distributed_env()
  if coordinator is None and kind is None:
    if num_processes is not None or process_id is not None:
      raise ConfigError("--num_processes/--process_id need --coordinator HOST:PORT (or a TPU, "
                        "SLURM or Open MPI environment)")
    return False
  if coordinator is not None and kind in (None, "jax") and (num_processes is None or process_id is None):
    raise ConfigError(f"--coordinator {coordinator} needs --num_processes and --process_id")
  if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
    raise ConfigError(f"--process_id {process_id} is not in [0, --num_processes {num_processes})")
  try:  # CPU processes talk through gloo (the default in recent JAX, 'none' in older ones)
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except AttributeError:
    pass
  jax.distributed.initialize(coordinator, num_processes, process_id,
                             local_device_ids=local_device_ids,
                             initialization_timeout=initialization_timeout)
  return True
