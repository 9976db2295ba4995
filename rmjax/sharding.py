"""Meshes, the logical-axis rules table, and placement of params and batches.

One rules table maps the logical names that modules put on parameters and activations to the
mesh axes ('data', 'fsdp', 'tensor'). The mesh is built with `jax.sharding.Mesh` and Auto axis
types on purpose: Flax's logical constraints and jit in/out shardings drive the layout, and the
same code runs on 1 device or many.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rmjax.errors import ConfigError

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
  """A mesh of `shape` over the devices; one -1 entry takes what is left."""
  devices = list(jax.devices() if devices is None else devices)
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


def tree_shardings(boxed_tree: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
  """NamedShardings for a tree of `nn.LogicallyPartitioned` leaves (e.g. from eval_shape(init))."""
  def one(x):
    if isinstance(x, nn.LogicallyPartitioned):
      return logical_to_sharding(P(*x.names), x.value.shape, mesh, rules)
    return NamedSharding(mesh, P())
  return jax.tree_util.tree_map(one, boxed_tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


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
  import jax.numpy as jnp
  from rmjax.models.llama import Llama
  ids = jnp.zeros((1, 2), jnp.int32)
  boxed = jax.eval_shape(lambda: Llama(cfg).init(jax.random.PRNGKey(0), ids))["params"]
  return tree_shardings(boxed, mesh, rules)


def place(tree: Any, shardings: Any) -> Any:
  """Put host arrays (numpy or jax) onto their shardings, leaf by leaf."""
  return jax.tree_util.tree_map(lambda x, s: jax.device_put(x, s), tree, shardings)


def shard_params(params: Any, cfg, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
  """Llama params placed straight onto the shardings that the rules table gives them."""
  return place(params, llama_param_shardings(cfg, mesh, rules))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading (batch) dim over ('data', 'fsdp'); other dims replicated."""
  return NamedSharding(mesh, P(BATCH, *([None] * (ndim - 1))))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Global host batch -> arrays sharded over the batch axes (single host).

  On several hosts each process holds its slice of the global batch; use
  `jax.make_array_from_process_local_data` with the same sharding.
  """
  def one(x):
    x = np.asarray(x)
    if x.ndim and x.shape[0] % batch_divisor(mesh):
      raise ConfigError(f"batch of {x.shape[0]} rows does not divide over the mesh's data x fsdp = "
                        f"{batch_divisor(mesh)} devices")
    sharding = batch_sharding(mesh, x.ndim) if x.ndim else NamedSharding(mesh, P())
    if jax.process_count() > 1:
      return jax.make_array_from_process_local_data(sharding, x)
    return jax.device_put(x, sharding)
  return jax.tree_util.tree_map(one, batch)


def batch_divisor(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def maybe_initialize_distributed(coordinator=None, num_processes=None, process_id=None) -> bool:
  """`jax.distributed.initialize()` when a multi-host environment is declared; True if it ran."""
  if coordinator:
    jax.distributed.initialize(coordinator, num_processes, process_id)
    return True
  markers = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES",
             "MEGASCALE_COORDINATOR_ADDRESS")
  if any(os.environ.get(m) for m in markers) and int(os.environ.get("SLURM_NTASKS", "2")) > 1:
    jax.distributed.initialize()
    return True
  return False
