"""Train a reward model (or PPO policy) from a config; resumes when --workdir holds a run."""

from __future__ import annotations

import json
import os
import time

from absl import flags

from rmjax import sharding, tasks
from rmjax.commands.common import FLAGS, config

SUMMARY = "train a reward model / policy from a config (resumes an existing --workdir)"
EXAMPLE = "rmjax train --config configs/bt.py:tiny --workdir /tmp/bt --config.train.steps=50"
USES = ("config", "workdir", "show_config", "coordinator", "num_processes", "process_id")

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
  sharding.maybe_initialize_distributed(coordinator=FLAGS.coordinator,
                                        num_processes=FLAGS.num_processes,
                                        process_id=FLAGS.process_id)
  workdir = FLAGS.workdir or os.path.join(
      "workdirs", f"{cfg.task}-{time.strftime('%Y%m%d-%H%M%S')}")
  final = tasks.get(cfg.task).train(cfg, workdir)
  print(json.dumps({"workdir": os.path.abspath(workdir), "final": final}, default=float))
  print(f"results: {os.path.abspath(workdir)} (metrics.jsonl, checkpoints/, tensorboard/)")
