"""Run a config's `get_sweep` grid: one `rmjax train` child per point, each in its own workdir."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from absl import flags
from ml_collections import config_flags

from rmjax.commands.common import FLAGS, require
from rmjax.errors import ConfigError

SUMMARY = "run the config's get_sweep() grid, one train run per point under --workdir"
EXAMPLE = "rmjax sweep --config configs/bt.py:tiny --workdir /tmp/sweep --dry_run"
USES = ("config", "workdir", "dry_run")

flags.DEFINE_bool("dry_run", False, "sweep: print one command per run instead of running")


def main():
  if FLAGS["config"].value is None:
    raise ConfigError("--config is required for `rmjax sweep`")
  config_arg = config_flags.get_config_filename(FLAGS["config"])
  workdir = require("workdir")
  path, _, arg = config_arg.partition(":")
  spec = importlib.util.spec_from_file_location("_sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ConfigError(f"{path} declares no sweep (get_sweep)")
  runs = module.get_sweep(arg or None)
  for i, overrides in enumerate(runs):
    cmd = [sys.executable, "-m", "rmjax", "train", f"--config={config_arg}",
           f"--workdir={os.path.join(workdir, f'run{i:03d}')}"]
    cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
    if FLAGS.dry_run:
      print(" ".join(cmd))
    else:
      print(f"[sweep {i + 1}/{len(runs)}] {' '.join(cmd[3:])}", flush=True)
      subprocess.run(cmd, check=True)
