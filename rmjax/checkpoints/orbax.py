"""Orbax checkpoints of the train state plus the data iterator's position.

Each step directory holds two items: 'state' (the state pytree -- a TrainState, a PPOState, or
{'step', 'params'} for one-shot models -- restored straight onto its shardings) and 'data'
(JSON: {'step', 'data': the data iterator position}). The manager keeps the last
`keep` checkpoints and, when a metric is named, also the best `keep_best` by that metric.

Readers get a one-line `CheckpointError` for a step that does not exist (naming the steps that
do) and for a truncated, zeroed or partly deleted checkpoint; only the writer (`create=True`,
`rmjax.train.run.Run`) creates the directory.

Dtypes tensorstore cannot write are stored as a wider one that holds the same values
(`STORED_AS`): the uint4 codes of nf4 QLoRA base weights (`rmjax.models.lora`) as uint8. A
restore onto an abstract tree casts them back to the target's dtype on its shardings, so a
resumed run or a scorer gets the very codes that were saved; `restore_raw` (no target) returns
them as stored.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint._src.metadata import array_metadata_store
from orbax.checkpoint._src.serialization.type_handler_registry import GLOBAL_TYPE_HANDLER_REGISTRY
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from rmjax.errors import CheckpointError, RmjaxError

STORED_AS = {np.dtype(jnp.uint4): np.dtype(np.uint8)}  # unwritable dtype -> the one on disk

# Replica-parallel saving splits every replicated array across its replicas with one jitted
# slice per device and shape: a tiny model's first save on 8 CPU devices compiled 72 of them
# (~3 s, in every process). Below 1 MiB per replica the split saves no write time, so small
# arrays are written whole by one replica (orbax's default handler otherwise: same metadata store).
GLOBAL_TYPE_HANDLER_REGISTRY.add(  # `register_type_handler` would log a warning in every process
    jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=1 << 20,
                                              array_metadata_store=array_metadata_store.Store()),
    override=True, ignore_warnings=True)


def _stored_dtype(x):
  return STORED_AS.get(np.dtype(x.dtype)) if hasattr(x, "dtype") else None


def to_stored(tree):
  """`tree` with every leaf of a `STORED_AS` dtype cast to its stored dtype (values kept)."""
  return jax.tree_util.tree_map(
      lambda x: x.astype(_stored_dtype(x)) if _stored_dtype(x) is not None else x, tree)


def stored_abstract(abstract):
  """The restore target of an abstract tree: `STORED_AS` leaves as their stored dtype (same
  shape and sharding)."""
  return jax.tree_util.tree_map(
      lambda x: (jax.ShapeDtypeStruct(x.shape, _stored_dtype(x), sharding=x.sharding)
                 if _stored_dtype(x) is not None else x), abstract)


def from_stored(tree, abstract):
  """Restored `tree` with its `STORED_AS` leaves cast back to `abstract`'s dtype and placed
  on its sharding."""
  def back(x, ref):
    if _stored_dtype(ref) is None:
      return x
    out = jnp.asarray(x).astype(ref.dtype)
    return jax.device_put(out, ref.sharding) if getattr(ref, "sharding", None) is not None else out
  return jax.tree_util.tree_map(back, tree, abstract)


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with the rmjax item layout."""

  def __init__(self, directory: str, *, keep: int = 3, best_metric: Optional[str] = None,
               best_mode: str = "max", keep_best: int = 1, async_save: bool = True,
               create: bool = False):
    policies = [pp.LatestN(n=keep)]
    if best_metric:
      policies.append(pp.BestN(get_metric_fn=lambda m: m[best_metric], reverse=(best_mode == "min"),
                               n=keep_best, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=pp.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, create=create)
    self.directory = os.path.abspath(directory)
    if not create and not os.path.isdir(self.directory):
      raise CheckpointError(f"{self.directory}: no checkpoints (not a directory)")
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data"))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data: dict, metrics: Optional[dict] = None) -> None:
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(to_stored(state)),
                                                    data=ocp.args.JsonSave(data)),
                      metrics=metrics)

  def _step(self, step: Optional[int]) -> int:
    """`step`, or the latest; a step that is not on disk is a CheckpointError naming those that are."""
    steps = self.all_steps()
    if step is None:
      if not steps:
        raise CheckpointError(f"no checkpoint in {self.directory}")
      return self.latest_step()
    if step not in steps:
      have = ", ".join(map(str, sorted(steps))) or "none"
      raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; available "
                            f"steps: {have}")
    return step

  def _restore(self, step: Optional[int], args):
    step = self._step(step)
    try:
      return self.manager.restore(step, args=args)
    except RmjaxError:
      raise
    except Exception as e:  # noqa: BLE001 -- a damaged checkpoint: name it, in one line
      msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
      raise CheckpointError(f"checkpoint {os.path.join(self.directory, str(step))} cannot be "
                            f"restored (damaged, or written for another model config): "
                            f"{type(e).__name__}: {msg}") from e

  def restore(self, abstract_state: Any, step: Optional[int] = None):
    """(state, data) at `step` (latest by default); arrays land on `abstract_state`'s shardings
    (and dtypes: `STORED_AS` leaves are cast back)."""
    out = self._restore(step, ocp.args.Composite(
        state=ocp.args.StandardRestore(stored_abstract(abstract_state)),
        data=ocp.args.JsonRestore()))
    return from_stored(out["state"], abstract_state), out["data"]

  def restore_params(self, abstract_params: Any, step: Optional[int] = None):
    """Params alone (for scoring/eval), without building an optimizer state."""
    target = stored_abstract(abstract_params)
    out = self._restore(step, ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item={"params": target},
            restore_args=jax.tree_util.tree_map(
                lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape,
                                               dtype=x.dtype), {"params": target}),
            partial_restore=True)))
    return from_stored(out["state"]["params"], abstract_params)

  def restore_raw(self, step: Optional[int] = None):
    """The saved 'state' tree as host arrays, with no target structure (tests, inspection);
    leaves in their stored dtypes (`STORED_AS`)."""
    out = self._restore(step, ocp.args.Composite(state=ocp.args.PyTreeRestore()))
    return jax.tree_util.tree_map(np.asarray, out["state"])

  def set_aside(self, step: int) -> str:
    """Move the checkpoint of `step` out of the step sequence (to `diverged-<step>` beside it:
    e.g. one whose parameters turned out to diverge), kept for inspection; returns its path."""
    self.wait()
    src = os.path.join(self.directory, str(step))
    dst = os.path.join(self.directory, f"diverged-{step}")
    if os.path.exists(dst):
      dst = f"{dst}-{os.getpid()}"
    os.replace(src, dst)
    self.manager.reload()
    return dst

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
