"""Train a reward model (or PPO policy) from a config; resumes when --workdir holds a run.

The config is validated and the workdir checked before anything is built: a workdir holding a
run of another method or model is refused, or with `--overwrite` replaced -- the new run trains
in `<workdir>.overwrite` (a rerun resumes there) and is swapped in only when it has finished,
so a failed run never leaves the old one damaged.
"""

from __future__ import annotations

import json
import os
import time

from absl import flags

from rmjax.commands.common import FLAGS, config
from rmjax.tasks import runs

SUMMARY = "train a reward model / policy from a config (resumes an existing --workdir)"
EXAMPLE = "rmjax train --config configs/bt.py:tiny --workdir /tmp/bt --config.train.steps=50"
USES = ("config", "workdir", "overwrite", "show_config", "coordinator", "num_processes",
        "process_id", "strict")

flags.DEFINE_bool("show_config", False, "train: print the resolved, locked config and exit")
flags.DEFINE_string("coordinator", None, "multi-process: coordinator address HOST:PORT "
                    "(jax.distributed; TPU pods and SLURM are detected without flags)")
flags.DEFINE_integer("num_processes", None, "multi-process: number of processes")
flags.DEFINE_integer("process_id", None, "multi-process: this process's index")


def main():
  cfg = config()
  if FLAGS.show_config:
    print(cfg)
    return
  workdir = FLAGS.workdir or os.path.join(
      "workdirs", f"{cfg.task}-{time.strftime('%Y%m%d-%H%M%S')}")
  final = runs.train(cfg, workdir, overwrite=FLAGS.overwrite, strict=FLAGS.strict,
                     distributed=dict(coordinator=FLAGS.coordinator,
                                      num_processes=FLAGS.num_processes,
                                      process_id=FLAGS.process_id))
  print(json.dumps({"workdir": os.path.abspath(workdir), "final": final}, default=float))
  print(f"results: {os.path.abspath(workdir)} (metrics.jsonl, checkpoints/, tensorboard/)")
