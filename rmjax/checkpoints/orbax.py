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

import logging
import os
import re
import sys
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
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


def short_reason(e: BaseException, limit: int = 160) -> str:
  """One short clause for an orbax / tensorstore / OS error: the OS error's text when there is
  one (tensorstore tags it `[os_error_code='28']`), else the first line without tensorstore's
  appended spec dump."""
  cause = e
  while cause is not None:
    if isinstance(cause, OSError) and cause.strerror:
      return cause.strerror
    code = re.search(r"os_error_code='(\d+)'", str(cause))
    if code:
      return os.strerror(int(code.group(1)))
    cause = cause.__cause__ or cause.__context__
  msg = (str(e).strip().splitlines() or [""])[0].split(" See full TensorStore details")[0]
  msg = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
  return msg if len(msg) <= limit else msg[:limit - 3] + "..."


class _QuietBackgroundFailures(logging.Filter):
  """Orbax logs a failed background save with a traceback from each of its threads (and
  tensorstore's callbacks print 'Event loop is closed' ones) before the error reaches the
  caller; `Checkpointer` reports it there in one line, so those are dropped."""

  def filter(self, record):
    return not (record.levelno >= logging.ERROR and "orbax" in record.pathname)


def _drop_closed_loop_noise(hook):
  def unraisable(u):
    if not (isinstance(u.exc_value, RuntimeError) and "Event loop is closed" in str(u.exc_value)):
      hook(u)
  unraisable.rmjax = True
  return unraisable


def _quiet_orbax() -> None:
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _QuietBackgroundFailures) for f in absl_logger.filters):
    absl_logger.addFilter(_QuietBackgroundFailures())
  if not getattr(sys.unraisablehook, "rmjax", False):
    sys.unraisablehook = _drop_closed_loop_noise(sys.unraisablehook)


def _key(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _shapes(tree) -> dict:
  """{'a/b/c': shape} of a tree's array leaves."""
  return {"/".join(_key(k) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree) if hasattr(leaf, "shape")}


def first_mismatch(saved: dict, model: dict, partial: bool = False) -> Optional[str]:
  """The first param path whose shape differs between two `_shapes` dicts, or that one lacks
  (`partial`: the model may take a subset of the saved params)."""
  for path in sorted(set(saved) | set(model)):
    if path not in saved:
      return f"{path} is missing in the checkpoint (model: {model[path]})"
    if path not in model and not partial:
      return f"{path} {saved[path]} is not in the model"
    if path in model and saved[path] != model[path]:
      return f"{path} has shape {saved[path]} in the checkpoint, {model[path]} in the model"
  return None


class DamagedCheckpoint(CheckpointError):
  """A checkpoint step that cannot be read (truncated, zeroed, partly deleted)."""

  def __init__(self, where: str, step: int, reason: str, hint: str = ""):
    super().__init__(f"checkpoint {where} cannot be restored: damaged ({reason}){hint}")
    self.step, self.reason = step, reason


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
    self._pending: Optional[int] = None  # the step of an async save not yet known to be done
    if create:
      _quiet_orbax()

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data: dict, metrics: Optional[dict] = None) -> None:
    """Save `step` (in the background with async saves). A failed save -- this one or the
    previous one still in flight -- is a one-line `CheckpointError` naming the workdir, the step
    and the OS error; the checkpoints already written stay intact."""
    self.wait()
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(to_stored(state)), data=ocp.args.JsonSave(data)),
                        metrics=metrics)
    except Exception as e:  # noqa: BLE001 -- ENOSPC, EIO, EACCES...: one line, at the save
      raise self._save_failed(step, e) from e
    self._pending = step
    self.check()

  def check(self) -> None:
    """Raise the error of a background save that has already failed (does not wait)."""
    if self._pending is None:
      return
    try:
      self.manager.check_for_errors()
    except Exception as e:  # noqa: BLE001
      raise self._save_failed(self._pending, e) from e

  def _save_failed(self, step: int, e: Exception) -> CheckpointError:
    self._pending = None
    steps = sorted(int(d) for d in os.listdir(self.directory) if d.isdigit() and int(d) != step) \
        if os.path.isdir(self.directory) else []
    kept = (f"the newest checkpoint, step {steps[-1]}, is intact" if steps
            else "no checkpoint was written")
    folder = os.path.dirname(self.directory)
    return CheckpointError(f"{folder}: saving the checkpoint of step {step} failed "
                           f"({short_reason(e)}); {kept}")

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

  def _restore(self, step: Optional[int], args, abstract_params=None, partial: bool = False):
    """`manager.restore`, after checking `abstract_params` (when given) against the saved
    params' shapes: a `CheckpointError` naming the first mismatching path, or a
    `DamagedCheckpoint` for one that cannot be read (naming the older steps when the latest
    was asked for)."""
    latest, step = step is None, self._step(step)
    where = os.path.join(self.directory, str(step))
    try:
      if abstract_params is not None:
        md = ocp.PyTreeCheckpointHandler().metadata(epath.Path(where) / "state")
        saved = _shapes(getattr(md, "tree", md))
        saved = {k[len("params/"):]: v for k, v in saved.items() if k.startswith("params/")}
        mismatch = first_mismatch(saved, _shapes(abstract_params), partial)
        if mismatch:
          raise CheckpointError(f"checkpoint {where} cannot be restored: it does not match the "
                                f"model: {mismatch}")
      return self.manager.restore(step, args=args)
    except RmjaxError:
      raise
    except Exception as e:  # noqa: BLE001 -- a damaged checkpoint: name it, in one line
      older = sorted((s for s in self.all_steps() if s < step), reverse=True) if latest else []
      hint = f"; older checkpoints: {', '.join(map(str, older))} (choose one with --step)" \
          if older else ""
      raise DamagedCheckpoint(where, step, short_reason(e), hint) from e

  def restore(self, abstract_state: Any, step: Optional[int] = None):
    """(state, data) at `step` (latest by default); arrays land on `abstract_state`'s shardings
    (and dtypes: `STORED_AS` leaves are cast back)."""
    out = self._restore(step, ocp.args.Composite(
        state=ocp.args.StandardRestore(stored_abstract(abstract_state)),
        data=ocp.args.JsonRestore()), abstract_params=(
            abstract_state.get("params") if isinstance(abstract_state, dict)
            else getattr(abstract_state, "params", None)))
    return from_stored(out["state"], abstract_state), out["data"]

  def restore_intact(self, abstract_state: Any):
    """(step, state, data, damaged) from the newest checkpoint that restores, `damaged` the
    `DamagedCheckpoint` errors of the newer ones; all damaged -> the newest one's error."""
    damaged = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state, data = self.restore(abstract_state, step)
      except DamagedCheckpoint as e:
        damaged.append(e)
        continue
      return step, state, data, damaged
    raise damaged[0]

  def restore_params(self, abstract_params: Any, step: Optional[int] = None):
    """Params alone (for scoring/eval), without building an optimizer state."""
    target = stored_abstract(abstract_params)
    out = self._restore(step, ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item={"params": target},
            restore_args=jax.tree_util.tree_map(
                lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape,
                                               dtype=x.dtype), {"params": target}),
            partial_restore=True)), abstract_params=abstract_params, partial=True)
    return from_stored(out["state"]["params"], abstract_params)

  def restore_raw(self, step: Optional[int] = None):
    """The saved 'state' tree as host arrays, with no target structure (tests, inspection);
    leaves in their stored dtypes (`STORED_AS`)."""
    out = self._restore(step, ocp.args.Composite(state=ocp.args.PyTreeRestore()))
    return jax.tree_util.tree_map(np.asarray, out["state"])

  def set_aside(self, step: int, why: str = "diverged") -> str:
    """Move the checkpoint of `step` out of the step sequence (to `<why>-<step>` beside it:
    e.g. one whose parameters turned out to diverge, or a damaged one), kept for inspection;
    returns its path."""
    self.wait()
    src = os.path.join(self.directory, str(step))
    dst = os.path.join(self.directory, f"{why}-{step}")
    if os.path.exists(dst):
      dst = f"{dst}-{os.getpid()}"
    os.replace(src, dst)
    self.manager.reload()
    return dst

  def wait(self) -> None:
    """Wait for a background save; its failure is a one-line `CheckpointError` (see `save`)."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._save_failed(self._pending, e) from e
    self._pending = None

  def close(self) -> None:
    self.wait()
    self.manager.close()
