"""Abstract, sharded inputs for ahead-of-time compilation: shapes, dtypes and shardings only.

Everything here works from `jax.eval_shape`, so an 8B-parameter train state costs nothing to
describe; the `jax.ShapeDtypeStruct`s carry their `NamedSharding`s, ready for
`jax.jit(...).lower(*structs)`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rmjax import sharding as shd
from rmjax.models.llama import Llama


def abstract_sharded(boxed_tree: Any, mesh: Mesh, rules=shd.DEFAULT_RULES) -> tuple:
  """A boxed abstract tree (e.g. `jax.eval_shape(model.init, ...)`, leaves
  `nn.LogicallyPartitioned` around ShapeDtypeStructs) -> (structs with `sharding=`, shardings).

  Unboxed leaves (step counters, optimizer counts, rng keys) are replicated.
  """
  shardings = shd.tree_shardings(boxed_tree, mesh, rules)
  return shd.with_shardings(shd.strip_boxes(boxed_tree), shardings), shardings


def abstract_from_init(init_fn: Callable, *args, mesh: Mesh, rules=shd.DEFAULT_RULES) -> tuple:
  """`abstract_sharded(jax.eval_shape(init_fn, *args), mesh)`: e.g. a whole TrainState from the
  function that would build it (boxed params -> boxed optimizer moments too)."""
  return abstract_sharded(jax.eval_shape(init_fn, *args), mesh, rules)


def llama_abstract_params(cfg, mesh: Mesh, rules=shd.DEFAULT_RULES) -> tuple:
  """(abstract sharded params, shardings) of `rmjax.models.llama.Llama(cfg)`; no weights."""
  ids = jnp.zeros((1, 2), jnp.int32)
  boxed = jax.eval_shape(lambda: Llama(cfg).init(jax.random.PRNGKey(0), ids))["params"]
  return abstract_sharded(boxed, mesh, rules)


def abstract_batch(spec: Mapping[str, tuple], mesh: Mesh) -> tuple:
  """{'input_ids': ((B, T), jnp.int32), ...} -> (structs split over ('data', 'fsdp') on the
  leading dim, shardings). Scalars (shape ()) are replicated."""
  structs, shardings = {}, {}
  for key, (shape, dtype) in spec.items():
    shape = tuple(shape)
    s = shd.batch_sharding(mesh, len(shape)) if shape else NamedSharding(mesh, P())
    structs[key] = jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=s)
    shardings[key] = s
  return structs, shardings


def shardings_of(tree: Any) -> Any:
  """The `sharding` of every ShapeDtypeStruct in `tree` (for jit's in_shardings)."""
  return jax.tree_util.tree_map(lambda x: x.sharding, tree)
