"""Run a config's `get_sweep` grid: one `rmjax train` per point, each in its own workdir, on this
machine (`--launcher=local`, one child after another), as one SLURM job array
(`--launcher=slurm`) or as one xpk TPU workload per point (`--launcher=xpk`); then
`--collect` gathers every point's results into one table.

The user's own `--config.*` overrides (and --overwrite / --strict) go to every point; an
override of a key the grid sets is refused. A point that is done is skipped when the sweep is
launched again; the others resume from their workdirs. Locally a child that fails stops the
sweep with one line naming the point, its exit code and its error (the table is written first).
Launcher settings (`--slurm_*`, `--xpk_*`, `--num_slices`) may also come from a
`get_launch(arg)` function in the config file returning {flag name: value}; flags given on the
command line win.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys

from absl import flags
from ml_collections import config_flags

from rmjax.commands.common import FLAGS, config, require
from rmjax.errors import ConfigError, RmjaxError
from rmjax.sweep import launchers, results

SUMMARY = ("run the config's get_sweep() grid (here, as a SLURM job array or as xpk TPU "
           "workloads), one train run per point under --workdir; --collect tabulates them")
EXAMPLE = ("rmjax sweep --config configs/bt.py:tiny --workdir /tmp/sweep --launcher=slurm "
           "--slurm_partition=gpu --dry_run")
SLURM_FLAGS = ("slurm_nodes", "slurm_tasks_per_node", "slurm_gpus_per_node", "slurm_cpus_per_task",
               "slurm_time", "slurm_partition", "slurm_account", "slurm_max_parallel", "slurm_setup")
XPK_FLAGS = ("xpk_cluster", "xpk_tpu_type", "num_slices", "xpk_docker_image",
             "xpk_base_docker_image", "xpk_project", "xpk_zone", "xpk_priority",
             "xpk_workload_prefix")
USES = ("config", "workdir", "launcher", "dry_run", "collect", "metric", *SLURM_FLAGS,
        *XPK_FLAGS)

flags.DEFINE_bool("dry_run", False, "sweep: print the commands (slurm: write and print the sbatch "
                  "script) instead of running or submitting them")
flags.DEFINE_enum("launcher", "local", ["local", "slurm", "xpk"], "sweep: where the points run: "
                  "this machine one after another, a SLURM job array, or xpk TPU workloads")
flags.DEFINE_bool("collect", False, "sweep: only gather every point's status and metrics into "
                  "results.md / .json / .png under --workdir")
flags.DEFINE_string("metric", "", "sweep: metric to rank points by, NAME[:max|:min] (unset: "
                    "train.best_metric, else eval_accuracy, eval_loss or loss)")
flags.DEFINE_integer("slurm_nodes", 1, "sweep slurm: nodes per point")
flags.DEFINE_integer("slurm_tasks_per_node", 1, "sweep slurm: processes per node (e.g. one per GPU)")
flags.DEFINE_integer("slurm_gpus_per_node", 0, "sweep slurm: GPUs per node (0: not requested)")
flags.DEFINE_integer("slurm_cpus_per_task", 0, "sweep slurm: CPUs per process (0: the default)")
flags.DEFINE_string("slurm_time", "", "sweep slurm: time limit per point, e.g. 04:00:00")
flags.DEFINE_string("slurm_partition", "", "sweep slurm: partition")
flags.DEFINE_string("slurm_account", "", "sweep slurm: account")
flags.DEFINE_integer("slurm_max_parallel", 0, "sweep slurm: at most this many points at once (0: no limit)")
flags.DEFINE_string("slurm_setup", "", "sweep slurm: a shell line run before srun (module load, "
                    "source venv/bin/activate, ...)")
flags.DEFINE_string("xpk_cluster", "", "sweep xpk: GKE cluster name")
flags.DEFINE_string("xpk_tpu_type", "", "sweep xpk: TPU type per slice, e.g. v5p-8, v5litepod-16")
flags.DEFINE_string("xpk_docker_image", "", "sweep xpk: image with rmjax installed (--docker-image)")
flags.DEFINE_string("xpk_base_docker_image", "", "sweep xpk: base image xpk adds the current "
                    "directory to (--base-docker-image)")
flags.DEFINE_string("xpk_project", "", "sweep xpk: GCP project")
flags.DEFINE_string("xpk_zone", "", "sweep xpk: zone")
flags.DEFINE_string("xpk_priority", "", "sweep xpk: workload priority (low, medium, high, ...)")
flags.DEFINE_string("xpk_workload_prefix", "", "sweep xpk: workload name prefix (default: the "
                    "--workdir's name); point i is <prefix>-<iii>")


def user_overrides(argv) -> list[str]:
  """The `--config.key=value` (or `--config.key value`) arguments of the command line."""
  out, args = [], list(argv)
  for i, a in enumerate(args):
    if a.startswith("--config."):
      out.append(a if "=" in a or i + 1 >= len(args) else f"{a}={args[i + 1]}")
  return out


def run_child(cmd, name: str, sweep_dir: str) -> None:
  """Run one child; its stderr is passed on live, except its one-line error, which becomes
  part of the sweep's own one-line error (and of the point's exit record)."""
  proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
  last = ""
  for line in proc.stderr:
    if line.startswith("rmjax: error:"):
      last = line.strip()[len("rmjax: error:"):].strip()
    else:
      sys.stderr.write(line)
  code = proc.wait()
  results.write_exit(sweep_dir, name, code, last)
  if code:
    raise RmjaxError(f"sweep run {name} failed (exit code {code})" + (f": {last}" if last else ""))


def load_module(path: str):
  spec = importlib.util.spec_from_file_location("_sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def apply_launch_block(module, arg) -> None:
  """Flags not given on the command line take the config file's get_launch(arg) values."""
  if not hasattr(module, "get_launch"):
    return
  for name, value in dict(module.get_launch(arg or None)).items():
    if name not in SLURM_FLAGS + XPK_FLAGS:
      raise ConfigError(f"get_launch() of the config names {name!r}; use one of: "
                        f"{', '.join(SLURM_FLAGS + XPK_FLAGS)}")
    if not FLAGS[name].present:
      FLAGS[name].value = value


def build_points(workdir: str, config_arg: str) -> tuple[list[dict], list[str]]:
  """Each grid point {name, overrides, workdir, train argv (without the python)} and the user's
  overrides; refuses a user override of a key the grid sets."""
  path, _, arg = config_arg.partition(":")
  module = load_module(path)
  if not hasattr(module, "get_sweep"):
    raise ConfigError(f"{path} declares no sweep (get_sweep)")
  apply_launch_block(module, arg)
  user = user_overrides(sys.argv[1:])
  user += [f"--{name}" for name in ("overwrite", "strict") if FLAGS[name].value]
  points = []
  for i, overrides in enumerate(module.get_sweep(arg or None)):
    clash = sorted(k for k in overrides if any(u.startswith(f"--config.{k}=") for u in user))
    if clash:
      raise ConfigError(f"--config.{clash[0]} is set by the sweep grid of {path}; drop it")
    name = f"run{i:03d}"
    wd = os.path.join(workdir, name)
    train = ["-m", "rmjax", "train", f"--config={config_arg}", f"--workdir={wd}", *user]
    train += [f"--config.{k}={v}" for k, v in overrides.items()]
    points.append({"name": name, "overrides": dict(overrides), "workdir": wd, "train": train})
  return points, user


def read_sweep_file(workdir: str) -> dict:
  try:
    with open(os.path.join(workdir, results.SWEEP_FILE)) as f:
      return json.load(f)
  except FileNotFoundError:
    return {}
  except (OSError, ValueError) as e:
    raise ConfigError(f"{workdir}/{results.SWEEP_FILE} is unreadable ({e})") from None


def write_sweep_file(workdir: str, record: dict) -> None:
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, results.SWEEP_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1)
  os.replace(tmp, os.path.join(workdir, results.SWEEP_FILE))


def slurm_active(record: dict) -> dict | None:
  """{point name: state} of the sweep's array tasks squeue still lists; None without squeue or
  SLURM jobs."""
  jobs = [str(j["job_id"]) for j in record.get("jobs", []) if j.get("launcher") == "slurm"]
  if not jobs or shutil.which("squeue") is None:
    return None
  active, answered = {}, False
  for job in jobs:  # one at a time: squeue refuses a whole list for one job it has forgotten
    proc = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%K %T"],
                          capture_output=True, text=True, check=False)
    answered = answered or "nvalid job id" in proc.stderr or not proc.returncode
    for line in proc.stdout.splitlines() if not proc.returncode else []:
      task, _, state = line.strip().partition(" ")
      if task.isdigit():
        active[f"run{int(task):03d}"] = state
  return active if answered else None  # no answer at all (controller down): files only


def collect_and_report(workdir: str, points: list[dict], record: dict) -> dict:
  result = results.collect(workdir, points, FLAGS.metric, slurm_active(record))
  paths = results.write_results(workdir, result)
  print(results.markdown(result))
  print("results: " + ", ".join(paths.values()), flush=True)
  return result


def pending(workdir: str, points: list[dict], record: dict) -> list[dict]:
  """The points to (re)launch: not done, not running, not queued; the others are named."""
  statuses = {t["name"]: t for t in results.collect(
      workdir, points, FLAGS.metric, slurm_active(record))["points"]}
  todo = []
  for p in points:
    st = statuses[p["name"]]
    if st["status"] in ("done", "running", "queued"):
      print(f"[sweep] {p['name']} {st['status']}: skipped", flush=True)
    else:
      todo.append(p)
  return todo


def launch_slurm(workdir: str, config_arg: str, todo: list[dict], record: dict) -> None:
  logs = os.path.join(os.path.abspath(workdir), "logs")
  script = launchers.sbatch_script(
      commands={int(p["name"][3:]): [sys.executable, *p["train"]] for p in todo}, logs=logs,
      chdir=os.getcwd(), job_name=f"rmjax-sweep-{os.path.basename(os.path.abspath(workdir))}",
      header=f"rmjax sweep of {config_arg}: {len(todo)} of {len(record['points'])} points"
             + ("" if len(todo) == len(record["points"]) else " (the others are done or running)"),
      nodes=FLAGS.slurm_nodes, tasks_per_node=FLAGS.slurm_tasks_per_node,
      gpus_per_node=FLAGS.slurm_gpus_per_node, cpus_per_task=FLAGS.slurm_cpus_per_task,
      time=FLAGS.slurm_time, partition=FLAGS.slurm_partition, account=FLAGS.slurm_account,
      max_parallel=FLAGS.slurm_max_parallel, setup=FLAGS.slurm_setup)
  os.makedirs(logs, exist_ok=True)
  path = os.path.join(workdir, "sweep.sbatch")
  with open(path, "w") as f:
    f.write(script)
  print(script, end="")
  if FLAGS.dry_run:
    print(f"# written to {path}; submit it with: sbatch {path}", flush=True)
    return
  if shutil.which("sbatch") is None:
    raise ConfigError("--launcher=slurm: sbatch is not on PATH (run on a SLURM login node, or "
                      f"--dry_run to only write {path})")
  for p in todo:
    results.clear_exit(workdir, p["name"])
  proc = subprocess.run(["sbatch", "--parsable", path], capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RmjaxError(f"sbatch {path} failed (exit code {proc.returncode}): "
                     f"{' '.join(proc.stderr.split())[:300]}")
  job = launchers.parse_job_id(proc.stdout)
  record.setdefault("jobs", []).append({"launcher": "slurm", "job_id": job,
                                        "points": [p["name"] for p in todo]})
  write_sweep_file(workdir, record)
  print(f"submitted job array {job}: {', '.join(p['name'] for p in todo)}; see where it stands "
        f"with: rmjax sweep --collect --workdir {workdir}", flush=True)


def launch_xpk(workdir: str, todo: list[dict], record: dict) -> None:
  prefix = FLAGS.xpk_workload_prefix or os.path.basename(os.path.abspath(workdir))
  cmds = [launchers.xpk_command(
      train=["python3", *p["train"]], workload=launchers.workload_name(prefix, int(p["name"][3:])),
      cluster=FLAGS.xpk_cluster, tpu_type=FLAGS.xpk_tpu_type, num_slices=FLAGS.num_slices,
      docker_image=FLAGS.xpk_docker_image, base_docker_image=FLAGS.xpk_base_docker_image,
      project=FLAGS.xpk_project, zone=FLAGS.xpk_zone, priority=FLAGS.xpk_priority) for p in todo]
  if FLAGS.dry_run:
    for cmd in cmds:
      print(shlex.join(cmd))
    return
  if shutil.which("xpk") is None:
    raise ConfigError("--launcher=xpk: xpk is not on PATH (pip install xpk), or use --dry_run "
                      "to print the commands")
  for p, cmd in zip(todo, cmds):
    results.clear_exit(workdir, p["name"])
    print(f"[sweep] {p['name']}: {shlex.join(cmd)}", flush=True)
    code = subprocess.run(cmd, check=False).returncode
    if code:
      raise RmjaxError(f"xpk workload create for sweep point {p['name']} failed (exit code {code})")
    record.setdefault("jobs", []).append({"launcher": "xpk", "job_id": cmd[4].split("=", 1)[1],
                                          "points": [p["name"]]})
    write_sweep_file(workdir, record)


def main():
  if FLAGS["config"].value is None and not FLAGS.collect:
    raise ConfigError("--config is required for `rmjax sweep`")
  workdir = require("workdir")
  record = read_sweep_file(workdir)
  if FLAGS["config"].value is None:  # --collect of a launched sweep: its sweep.json has the grid
    if not record:
      raise ConfigError(f"--collect: {workdir} holds no {results.SWEEP_FILE} (no sweep was "
                        "launched there); pass the sweep's --config too")
    collect_and_report(workdir, record["points"], record)
    return
  config()  # the base config with the user's overrides, validated before any child starts
  config_arg = config_flags.get_config_filename(FLAGS["config"])
  points, user = build_points(workdir, config_arg)
  if FLAGS.collect:
    collect_and_report(workdir, points, record)
    return
  if FLAGS.launcher == "local" and FLAGS.dry_run:
    for p in points:
      print(shlex.join([sys.executable, *p["train"]]))
    return
  record = {**record, "config": config_arg, "user_overrides": user, "launcher": FLAGS.launcher,
            "points": [{"name": p["name"], "overrides": p["overrides"],  # collect from anywhere
                        "workdir": p["workdir"] if FLAGS.launcher == "xpk" else os.path.abspath(
                            p["workdir"])} for p in points]}
  if not FLAGS.dry_run:
    write_sweep_file(workdir, record)
  todo = pending(workdir, points, record)
  if not todo:
    print(f"[sweep] all {len(points)} points are done or running: nothing to launch", flush=True)
  elif FLAGS.launcher == "slurm":
    launch_slurm(workdir, config_arg, todo, record)
  elif FLAGS.launcher == "xpk":
    launch_xpk(workdir, todo, record)
  else:
    try:
      for p in todo:
        print(f"[sweep {int(p['name'][3:]) + 1}/{len(points)}] {shlex.join(p['train'][2:])}",
              flush=True)
        run_child([sys.executable, *p["train"]], p["name"], workdir)
    finally:
      collect_and_report(workdir, points, record)
