"""Train a reward model (or PPO policy) from a config; resumes when --workdir holds a run.

The config is validated and the workdir checked before anything is built: a workdir holding a
run of another method or model is refused, or with `--overwrite` replaced -- the new run trains
in `<workdir>.overwrite` (a rerun resumes there) and is swapped in only when it has finished,
so a failed run never leaves the old one damaged.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import jax
from absl import flags

from rmjax import sharding, tasks
from rmjax.commands.common import FLAGS, config
from rmjax.errors import ConfigError
from rmjax.train.lock import WorkdirLock
from rmjax.train import run as train_run
from rmjax.train.run import check_workdir
from rmjax.train.validate import check_workdir_writable

SUMMARY = "train a reward model / policy from a config (resumes an existing --workdir)"
EXAMPLE = "rmjax train --config configs/bt.py:tiny --workdir /tmp/bt --config.train.steps=50"
USES = ("config", "workdir", "overwrite", "show_config", "coordinator", "num_processes",
        "process_id", "strict")

flags.DEFINE_bool("show_config", False, "train: print the resolved, locked config and exit")
flags.DEFINE_string("coordinator", None, "multi-process: coordinator address HOST:PORT "
                    "(jax.distributed; TPU pods and SLURM are detected without flags)")
flags.DEFINE_integer("num_processes", None, "multi-process: number of processes")
flags.DEFINE_integer("process_id", None, "multi-process: this process's index")


def staging_dir(workdir: str) -> str:
  """Where `--overwrite` trains until the new run is done (a rerun resumes there)."""
  return os.path.abspath(workdir).rstrip("/") + ".overwrite"


def replace_workdir(workdir: str, staged: str) -> None:
  """Swap a finished staged run into `workdir`; the old run is removed only after the swap."""
  old = os.path.abspath(workdir).rstrip("/") + f".old-{os.getpid()}"
  os.replace(workdir, old)
  os.replace(staged, workdir)
  shutil.rmtree(old, ignore_errors=True)


def main():
  cfg = config()
  if FLAGS.show_config:
    print(cfg)
    return
  workdir = FLAGS.workdir or os.path.join(
      "workdirs", f"{cfg.task}-{time.strftime('%Y%m%d-%H%M%S')}")
  train_run.STRICT = FLAGS.strict  # a dropped or truncated record fails the run (exit 2)
  spec = tasks.get(cfg.task)
  check_workdir_writable(workdir)
  replace = False
  try:
    check_workdir(cfg, workdir)
  except ConfigError:
    if not FLAGS.overwrite:
      raise
    replace = True
  sharding.maybe_initialize_distributed(coordinator=FLAGS.coordinator,
                                        num_processes=FLAGS.num_processes,
                                        process_id=FLAGS.process_id)
  # one writer per workdir (process 0 writes for all processes), taken before anything is read
  with WorkdirLock(workdir, enabled=jax.process_index() == 0):
    target = workdir
    if replace:  # the old run stays untouched until the new one has finished in a staging folder
      target = staging_dir(workdir)
      try:
        check_workdir(cfg, target)  # a staged run of this config resumes; of another, restarts
      except ConfigError:
        shutil.rmtree(target)
      print(f"--overwrite: training in {target}; it replaces {workdir} when done", flush=True)
    final = spec.train(cfg, target)
    if target != workdir and jax.process_index() == 0:
      replace_workdir(workdir, target)
  print(json.dumps({"workdir": os.path.abspath(workdir), "final": final}, default=float))
  print(f"results: {os.path.abspath(workdir)} (metrics.jsonl, checkpoints/, tensorboard/)")
