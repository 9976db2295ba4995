"""The one writer of a workdir: files, checkpoints, metrics, the NaN guard and progress.

Every method goes through `Run`: the supervised loop (`rmjax.train.loop.train`), PPO
(`rmjax.tasks.ppo`), the ArmoRM stages and the cached-feature head fits. A workdir holds

  config.json          the resolved config (never changed after the run starts)
  model_config.json    the LlamaConfig fields, plus `"rmjax": {...}` extras scoring needs
                       (e.g. ArmoRM's prompt-end token pattern)
  data_stats.json      what the data pipeline read, kept, dropped and truncated
  checkpoints/         orbax: item 'state' ({'step', 'params', optional 'opt_state', ...}) and
                       item 'data' (JSON: the data position, so a resumed run continues exactly)
  metrics.jsonl        one JSON object per logged step (process 0 writes)
  tensorboard/         the same scalars for TensorBoard

`Run.loop(state, start, step_fn)` drives any `step_fn(state, step) -> (state, metrics)`: it
stops with `TrainingDiverged` on a non-finite loss (only finite state is ever saved, and a
checkpoint whose parameters gave the non-finite loss is set aside as `diverged-<step>`, so the
newest checkpoint in the step sequence is a good one); the rest are hooks (`Hook`, Levanter's
shape): throughput and log every `train.log_every` steps, eval every `train.eval_every`,
checkpoint every `train.checkpoint_every`, each at the end too, plus any a caller adds.
`Run.stage(name)` gives a multi-stage method (ArmoRM) one run per stage under its workdir.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from rmjax.checkpoints.orbax import Checkpointer
from rmjax.checkpoints.workdir import model_config_fields, write_json_atomic
from rmjax.errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from rmjax.train.metrics_writer import MetricWriter
from rmjax.train.validate import check_workdir_writable, validate_config

def is_main() -> bool:
  return jax.process_index() == 0


@jax.jit
def all_finite(tree) -> jax.Array:
  """Whether every float in `tree` is finite, reduced on device (no host copy of the weights)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def check_workdir(config, workdir: str) -> None:
  """Refuse a workdir that holds another method's or another model's run (its config.json
  says so) before anything in it is touched (`rmjax train --overwrite` replaces such a run)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, ValueError):
    raise ConfigError(f"{path} is unreadable: not a workdir this run can resume; use another "
                      f"--workdir (or --overwrite to replace it)") from None
  for key, new in (("task", config.task), ("model.spec", config.model.spec)):
    prev = old.get("task") if key == "task" else old.get("model", {}).get("spec")
    if prev is not None and prev != new:
      raise ConfigError(f"{workdir} holds a run with {key}={prev!r}, not {new!r}: resume it with "
                        f"its own config, use another --workdir, or --overwrite to replace it")


def data_report(info: Optional[dict]) -> Optional[dict]:
  """The console summary of a run's data (`data_stats.json` has the detail): records in,
  train / eval examples (pairs; SALMON's aggregated pairs, ArmoRM's rated responses + pairs,
  PPO's prompts), dropped by reason (overlong ones included), truncated; None for data stats of
  another shape. Every method's data stats carry these keys (`data_info` builds them)."""
  if not info or "n_in" not in info:
    return None
  tok = info.get("train_tokenize", {})
  dropped = dict(info.get("dropped", {}))
  if tok.get("dropped"):
    dropped["overlong"] = dropped.get("overlong", 0) + tok["dropped"]
  return {"n_in": info["n_in"], "n_train": info.get("train_pairs"),
          "n_eval": info.get("eval_pairs"), "n_dropped": dropped,
          "n_truncated": tok.get("truncated", 0)}


def data_info(source: str, n_in: int, n_train: int, n_eval: int, dropped: dict,
              truncated: int, **detail) -> dict:
  """Data stats in the shape `data_report` reads, for methods whose data is not a pair source
  (SALMON, ArmoRM, PPO): `source` is named by `--strict`, `dropped` counts by reason (zeros
  left out), `detail` goes to data_stats.json as it is."""
  return dict(detail, source=source, n_in=int(n_in), train_pairs=int(n_train),
              eval_pairs=int(n_eval), dropped={k: int(v) for k, v in dropped.items() if v},
              train_tokenize=dict(detail.get("train_tokenize", {}), truncated=int(truncated)))


def prompt_info(pc, setup) -> dict:
  """An RL run's data stats (`data_info`): prompts read from `pc.prompts` (all trained on),
  prompts of `pc.eval_prompts` evaluated (whole `pc.rollout_batch`es; the rest are counted in
  data_stats.json), none dropped, train prompts over `pc.prompt_len` tokens (rollouts keep
  their last prompt_len tokens) counted as truncated. `setup`: `train_prompts`,
  `eval_prompts` ([{'prompt'}]) and `encode_prompt` (`rmjax.tasks.ppo_setup.build`)."""
  bs = pc.rollout_batch
  cut = sum(len(setup.encode_prompt(r["prompt"])) > pc.prompt_len for r in setup.train_prompts)
  n_eval = len(setup.eval_prompts) // bs * bs
  return data_info(pc.prompts, len(setup.train_prompts), len(setup.train_prompts), n_eval, {},
                   cut, eval_source=pc.eval_prompts,
                   eval_prompts_beyond_whole_batches=len(setup.eval_prompts) - n_eval)


def announce_data(config, info: Optional[dict]) -> Optional[dict]:
  """`data_report(info)`: checked under `--strict` (`check_strict`, naming `info['source']` or
  `data.source`), then printed as one `data report: {...}` line (process 0)."""
  report = data_report(info)
  check_strict((info or {}).get("source") or config.data.get("source", "<data>"), report)
  if report is not None and is_main():
    print(f"data report: {json.dumps(report)}", flush=True)
  return report


STRICT = False  # set by `rmjax train --strict`: a run whose data lost or cut a record fails,
# and so does a resume whose newest checkpoint is damaged (no fall-back to an older one)


def check_strict(source: str, report: Optional[dict]) -> None:
  """Under `--strict`, a DataError (exit 2) naming the source and the counts when any record was
  dropped (by reason) or truncated; nothing of the run is written yet."""
  if not STRICT or report is None:
    return
  lost = {k: v for k, v in report["n_dropped"].items() if v}
  if lost or report["n_truncated"]:
    parts = [f"{v} dropped ({k})" for k, v in sorted(lost.items())]
    parts += [f"{report['n_truncated']} truncated"] if report["n_truncated"] else []
    raise DataError(source, None, None, f"{', '.join(parts)} of {report['n_in']} records "
                    "(--strict: fix the data, or drop --strict to train on the rest)")


@dataclasses.dataclass
class StepInfo:
  """What a hook sees after a step (Levanter's StepInfo): steps done, the state, the step's
  host metrics, whether it is the last; `row` collects what the step logs, `eval` the eval
  metrics when an eval ran."""
  step: int
  state: Any
  metrics: dict
  last: bool
  row: dict = dataclasses.field(default_factory=dict)
  eval: Optional[dict] = None


@dataclasses.dataclass
class Hook:
  """`fn(info)` after every `every`-th step and after the last one (`every` 0: never), as
  Levanter's `trainer.add_hook(fn, every=n)`; `Run.loop` runs throughput, eval, log and
  checkpoint hooks and any given."""
  fn: Callable[[StepInfo], None]
  every: int = 1

  def due(self, info: StepInfo) -> bool:
    return bool(self.every) and (info.step % self.every == 0 or info.last)


class Run:
  """One run in one workdir (see the module docstring for the layout)."""

  def __init__(self, config, workdir: str, *, model_config=None, info: Optional[dict] = None,
               model_extras: Optional[dict] = None, desc: str = "train",
               checkpoints: str = "checkpoints", parent: Optional[Run] = None):
    """`parent`: this run is a stage of it (`Run.stage`): the config, the workdir and the
    data were checked (and the data report printed) there."""
    tc = config.train
    if parent is None:
      validate_config(config)
      check_workdir_writable(workdir)
      check_workdir(config, workdir)
      announce_data(config, info)  # --strict fails here, before the workdir is touched
    self.config, self.workdir, self.desc = config, workdir, desc
    self.model_config, self.info, self.model_extras = model_config, info, model_extras or {}
    os.makedirs(workdir, exist_ok=True)
    self.ckpt = Checkpointer(os.path.join(workdir, checkpoints), keep=tc.keep_checkpoints,
                             best_metric=tc.get("best_metric") or None,
                             best_mode=tc.get("best_mode", "max"),
                             async_save=tc.async_checkpoint, create=True)
    self.writer: Optional[MetricWriter] = None
    self.resumed_from: Optional[int] = None

  # ------------------------------------------------------------------ files
  def write_files(self) -> None:
    """config.json, model_config.json (+ extras) and data_stats.json, atomically (process 0)."""
    if not is_main():
      return
    write_json_atomic(os.path.join(self.workdir, "config.json"), None,
                      text=self.config.to_json_best_effort(indent=2))
    if self.model_config is not None:
      write_json_atomic(os.path.join(self.workdir, "model_config.json"),
                        model_config_fields(self.model_config, self.model_extras))
    if self.info:
      write_json_atomic(os.path.join(self.workdir, "data_stats.json"), self.info)

  # ------------------------------------------------------------ checkpoints
  def restore(self, abstract_state, data_iter=None) -> tuple[Any, int]:
    """(state, start step) from the latest intact checkpoint, restoring `data_iter`'s position;
    (None, 0) when there is none. Damaged newer ones are set aside as `damaged-<step>` with a
    one-line warning naming both steps."""
    if self.ckpt.latest_step() is None:
      return None, 0
    start, state, data, damaged = self.ckpt.restore_intact(abstract_state)
    if damaged and STRICT:  # no silent fall-back: refuse before anything is moved or written
      bad = damaged[0]
      raise CheckpointError(
          f"the newest checkpoint, {self.ckpt.directory}/{bad.step}, is damaged ({bad.reason}); "
          f"the newest intact one is step {start} (--strict: refusing to resume from an older "
          f"checkpoint; drop --strict to resume from step {start} with the damaged one set aside "
          f"as damaged-{bad.step}, or move it away yourself)")
    if damaged and is_main():
      for e in damaged:  # out of the step sequence, so this run's saves do not collide with them
        self.ckpt.set_aside(e.step, "damaged")
      print(f"warning: the newest checkpoint, step {damaged[0].step}, is damaged "
            f"({damaged[0].reason}): resuming from step {start}, the "
            f"newest intact one; the damaged one is kept as {self.ckpt.directory}/damaged-"
            f"{damaged[0].step}", file=sys.stderr, flush=True)
    self.resumed_from = start
    if data_iter is not None:
      data_iter.restore(data["data"])
    print(f"resumed from step {start} ({self.ckpt.directory})", flush=True)
    return state, start

  def save(self, step: int, state, data_iter=None, metrics: Optional[dict] = None) -> None:
    """Checkpoint `state` with the data position; only finite state is ever saved, so the
    newest checkpoint on disk is always a good one."""
    if not bool(all_finite(state)):
      self.ckpt.wait()
      last = self.ckpt.latest_step()
      kept = (f"last good checkpoint is step {last} in {self.ckpt.directory}" if last is not None
              else "no checkpoint was written")
      raise TrainingDiverged(f"non-finite parameters after step {step} (diverging update): "
                             f"training stopped, nothing saved; {kept}")
    data = {"step": int(step), "data": data_iter.state() if data_iter is not None else None}
    self.ckpt.save(step, state, data, metrics=metrics)

  def save_final(self, step: int, params) -> None:
    """A one-shot model (ArmoRM, cached-feature heads): params alone, same layout as `save`."""
    self.write_files()
    if self.ckpt.latest_step() != step:  # a rerun of a finished run has nothing to add
      self.save(step, {"step": np.int32(step), "params": params})
    self.ckpt.wait()

  # ---------------------------------------------------------------- metrics
  def log(self, step: int, row: dict, prefix: str = "") -> dict:
    if self.writer is None:
      self.writer = MetricWriter(self.workdir, tensorboard=self.config.train.tensorboard,
                                 resume_step=self.resumed_from)
    return self.writer.write(step, row, prefix=prefix)

  def check_finite(self, step: int, metrics: dict,
                   batch_note: Optional[Callable[[], str]] = None) -> None:
    """The NaN guard: a non-finite loss (or grad norm) stops the run. The loss of `step` is
    computed with the parameters of step - 1: when the batch itself was finite
    (`metrics['batch_finite']`, popped here; absent = finite) those parameters are to blame
    (finite but poisoned, e.g. weights of 1e28 after an lr=1e30 update), so a checkpoint of
    step - 1 is set aside (checkpoints/diverged-<step>) and the newest one left is a good one."""
    batch_finite = bool(metrics.pop("batch_finite", True))
    vals = [float(metrics[k]) for k in ("loss", "grad_norm") if k in metrics]
    if all(math.isfinite(v) for v in vals):
      return
    self.ckpt.wait()
    note = "" if batch_finite else " (the batch holds non-finite values)"
    if batch_finite and self.ckpt.latest_step() == step - 1 and is_main():
      moved = self.ckpt.set_aside(step - 1)
      note = f"; checkpoint {step - 1}, whose parameters gave it, moved to {moved}"
    last = self.ckpt.latest_step()
    kept = (f"last good checkpoint is step {last} in {self.ckpt.directory}" if last is not None
            else "no good checkpoint was written")
    held = batch_note() if batch_note is not None else ""
    raise TrainingDiverged(f"non-finite loss ({vals[0]}) at step {step}{note}: training "
                           f"stopped; {kept}" + (f"; the step's batch held {held}" if held else ""))

  # ------------------------------------------------------------------- loop
  def loop(self, state, start: int, step_fn: Callable[[Any, int], tuple], *,
           data_iter=None, eval_fn: Optional[Callable[[Any], dict]] = None,
           postfix: Callable[[dict], dict] = lambda m: {"loss": f"{float(m['loss']):.4f}"},
           tokens_fn: Optional[Callable[[], tuple]] = None,
           batch_note: Optional[Callable[[], str]] = None, hooks: tuple = ()) -> tuple[dict, Any]:
    """Drive `step_fn(state, step) -> (state, host metrics)` from `start` to train.steps; after
    each step the NaN guard (`batch_note()` names the last batch's records when it stops the
    run), then the hooks due: throughput, eval, `hooks` (extra `Hook`s), log, checkpoint.
    Returns (final logged metrics, final state)."""
    tc = self.config.train
    delay = float(os.environ.get("RMJAX_DEBUG_STEP_DELAY", "0"))  # test hook: slow steps down
    pbar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, desc=self.desc,
                disable=not is_main() or not tc.progress, dynamic_ncols=True)
    final: dict = {}
    due = [self.throughput_hook(start, tokens_fn, lambda m: pbar.set_postfix(**postfix(m))),
           *([self.eval_hook(eval_fn)] if eval_fn is not None else []), *hooks,
           self.log_hook(final), self.checkpoint_hook(data_iter)]
    for step in pbar:
      state, metrics = step_fn(state, step)
      done = step + 1
      self.ckpt.check()  # a background save that failed is reported now, not at the next save
      self.check_finite(done, metrics, batch_note)
      info = StepInfo(done, state, metrics, done == tc.steps)
      for hook in due:
        if hook.due(info):
          hook.fn(info)
      if delay:
        time.sleep(delay)
    pbar.close()
    return final, state

  def throughput_hook(self, start: int, tokens_fn=None, show=None) -> Hook:
    """Every `train.log_every` steps: the step's metrics plus throughput over the window since
    the previous logged step (the first window holds the compile), what a benchmark of the same
    step shape measures; `tokens_fn() -> (real, computed)` token counts so far: tokens_per_s
    counts real ones, computed_tokens_per_s padding too."""
    count = tokens_fn if tokens_fn is not None else (lambda: (0, 0))
    window = [time.perf_counter(), start, count()]

    def fn(info: StepInfo):
      now, tokens = time.perf_counter(), count()
      elapsed = now - window[0]
      info.row.update(info.metrics, steps_per_s=(info.step - window[1]) / elapsed)
      if tokens_fn is not None:
        info.row["tokens_per_s"] = (tokens[0] - window[2][0]) / elapsed
        info.row["computed_tokens_per_s"] = (tokens[1] - window[2][1]) / elapsed
      window[:] = [now, info.step, tokens]
      if show is not None:
        show(info.metrics)
    return Hook(fn, self.config.train.log_every)

  def eval_hook(self, eval_fn: Callable[[Any], dict]) -> Hook:
    """Every `train.eval_every` steps: `eval_fn(state)` into `info.eval` (the checkpoint ranks
    by it) and into the row as eval_*."""
    def fn(info: StepInfo):
      info.eval = eval_fn(info.state)
      info.row.update({f"eval_{k}": v for k, v in info.eval.items()})
    return Hook(fn, self.config.train.eval_every)

  def log_hook(self, final: dict) -> Hook:
    """After any step with a row: one JSON object per logged step, train and eval metrics
    together; `final` collects what was written (the loop's final metrics)."""
    def fn(info: StepInfo):
      if info.row:
        final.update(self.log(info.step, info.row))
    return Hook(fn)

  def checkpoint_hook(self, data_iter=None) -> Hook:
    """Every `train.checkpoint_every` steps: the state with the data position; eval metrics
    rank the best checkpoints."""
    def fn(info: StepInfo):
      best = ({f"eval_{k}": float(v) for k, v in info.eval.items()
               if isinstance(v, (int, float, np.number))} if info.eval else None)
      self.save(info.step, info.state, data_iter, metrics=best)
    return Hook(fn, self.config.train.checkpoint_every)

  def stage(self, name: str, config=None, **kw) -> Run:
    """A stage of a multi-stage method as its own run in `<workdir>/<name>` (checkpoints,
    metrics, resume), under `config` (default this run's; a stage's config is derived from it,
    so it is not validated or its data announced again)."""
    return Run(config if config is not None else self.config, os.path.join(self.workdir, name),
               desc=name, parent=self, **kw)

  def close(self) -> None:
    self.ckpt.close()
    if self.writer is not None:
      self.writer.close()
