"""Run a config's `get_sweep` grid: one `rmjax train` child per point, each in its own workdir.

The user's own `--config.*` overrides (and --overwrite / --strict) go to every child; an
override of a key the grid sets is refused. A child that fails stops the sweep with one line
naming the run, its exit code and its error.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from absl import flags
from ml_collections import config_flags

from rmjax.commands.common import FLAGS, config, require
from rmjax.errors import ConfigError, RmjaxError

SUMMARY = "run the config's get_sweep() grid, one train run per point under --workdir"
EXAMPLE = "rmjax sweep --config configs/bt.py:tiny --workdir /tmp/sweep --dry_run"
USES = ("config", "workdir", "dry_run")

flags.DEFINE_bool("dry_run", False, "sweep: print one command per run instead of running")


def user_overrides(argv) -> list[str]:
  """The `--config.key=value` (or `--config.key value`) arguments of the command line."""
  out, args = [], list(argv)
  for i, a in enumerate(args):
    if a.startswith("--config."):
      out.append(a if "=" in a or i + 1 >= len(args) else f"{a}={args[i + 1]}")
  return out


def run_child(cmd, name: str) -> None:
  """Run one child; its stderr is passed on live, except its one-line error, which becomes
  part of the sweep's own one-line error."""
  proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
  last = ""
  for line in proc.stderr:
    if line.startswith("rmjax: error:"):
      last = line.strip()[len("rmjax: error:"):].strip()
    else:
      sys.stderr.write(line)
  code = proc.wait()
  if code:
    raise RmjaxError(f"sweep run {name} failed (exit code {code})" + (f": {last}" if last else ""))


def main():
  if FLAGS["config"].value is None:
    raise ConfigError("--config is required for `rmjax sweep`")
  config()  # the base config with the user's overrides, validated before any child starts
  config_arg = config_flags.get_config_filename(FLAGS["config"])
  workdir = require("workdir")
  path, _, arg = config_arg.partition(":")
  spec = importlib.util.spec_from_file_location("_sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ConfigError(f"{path} declares no sweep (get_sweep)")
  runs = module.get_sweep(arg or None)
  user = user_overrides(sys.argv[1:])
  user += [f"--{name}" for name in ("overwrite", "strict") if FLAGS[name].value]
  for i, overrides in enumerate(runs):
    clash = sorted(k for k in overrides if any(u.startswith(f"--config.{k}=") for u in user))
    if clash:
      raise ConfigError(f"--config.{clash[0]} is set by the sweep grid of {path}; drop it")
    name = f"run{i:03d}"
    cmd = [sys.executable, "-m", "rmjax", "train", f"--config={config_arg}",
           f"--workdir={os.path.join(workdir, name)}", *user]
    cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
    if FLAGS.dry_run:
      print(" ".join(cmd))
    else:
      print(f"[sweep {i + 1}/{len(runs)}] {' '.join(cmd[3:])}", flush=True)
      run_child(cmd, name)
