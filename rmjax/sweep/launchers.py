"""Hand a sweep's points to the schedulers researchers run: one SLURM job array (`sbatch`), or one
`xpk workload create` per point (GKE TPU pods, as MaxText launches them).

Each point is one `rmjax train` in its own workdir; a resubmitted sweep hands over only the
points that are not done (their trains resume from their workdirs).
"""

from __future__ import annotations

import re
import shlex

from rmjax.errors import ConfigError


def array_spec(indices: list[int]) -> str:
  """SLURM's --array list: [0, 1, 2, 5] -> '0-2,5'."""
  parts, start = [], None
  for i, x in enumerate(indices):
    if start is None:
      start = x
    if i + 1 == len(indices) or indices[i + 1] != x + 1:
      parts.append(str(start) if start == x else f"{start}-{x}")
      start = None
  return ",".join(parts)


def sbatch_script(*, commands: dict, logs: str, chdir: str, job_name: str, nodes: int = 1,
                  tasks_per_node: int = 1, gpus_per_node: int = 0, cpus_per_task: int = 0,
                  time: str = "", partition: str = "", account: str = "", max_parallel: int = 0,
                  setup: str = "", header: str = "") -> str:
  """One sbatch script for a job array: array task i runs `commands[i]` (a train argv) under
  one `srun` over the allocation (nodes x tasks per node processes: JAX's distributed runtime
  reads SLURM's environment), then records the exit code in `logs/run<i>.exit`."""
  if nodes < 1 or tasks_per_node < 1 or gpus_per_node < 0 or cpus_per_task < 0:
    raise ConfigError(f"slurm: --slurm_nodes ({nodes}) and --slurm_tasks_per_node "
                      f"({tasks_per_node}) must be >= 1, GPUs and CPUs >= 0")
  indices = sorted(commands)
  array = array_spec(indices) + (f"%{max_parallel}" if max_parallel > 0 else "")
  opts = [("job-name", job_name), ("array", array), ("nodes", nodes),
          ("ntasks-per-node", tasks_per_node), ("gpus-per-node", gpus_per_node or None),
          ("cpus-per-task", cpus_per_task or None), ("time", time or None),
          ("partition", partition or None), ("account", account or None), ("chdir", chdir),
          ("output", f"{logs}/run%3a.out"), ("error", f"{logs}/run%3a.err")]
  lines = ["#!/bin/bash", *(f"# {l}" for l in header.splitlines()),
           *(f"#SBATCH --{k}={v}" for k, v in opts if v is not None), "", "set -u"]
  if setup:
    lines.append(setup)
  lines += ['name="run$(printf %03d "$SLURM_ARRAY_TASK_ID")"', 'case "$SLURM_ARRAY_TASK_ID" in']
  for i in indices:
    lines.append(f"  {i}) srun --kill-on-bad-exit=1 {shlex.join(commands[i])} ;;")
  lines += ['  *) echo "no sweep point for array task $SLURM_ARRAY_TASK_ID" >&2; false ;;',
            "esac", "rc=$?", f'echo "$rc" > {shlex.quote(logs)}/"$name".exit', 'exit "$rc"', ""]
  return "\n".join(lines)


def parse_job_id(sbatch_stdout: str) -> str:
  """`sbatch --parsable` prints `jobid[;cluster]`."""
  return sbatch_stdout.strip().splitlines()[-1].split(";")[0].strip()


WORKLOAD_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")  # xpk's own check, at most 40 chars


def workload_name(prefix: str, index: int) -> str:
  name = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-") or "rmjax"
  if not name[0].isalpha():
    name = "s-" + name
  name = f"{name[:40 - 4].rstrip('-')}-{index:03d}"
  if not WORKLOAD_NAME.fullmatch(name):
    raise ConfigError(f"xpk: workload name {name!r} from --xpk_workload_prefix {prefix!r} is not "
                      "a valid xpk name (lowercase letters, digits, '-', at most 40)")
  return name


def xpk_command(*, train: list[str], workload: str, cluster: str, tpu_type: str,
                num_slices: int = 1, docker_image: str = "", base_docker_image: str = "",
                project: str = "", zone: str = "", priority: str = "") -> list[str]:
  """`xpk workload create ...` for one point: its train command runs on every host of the
  slice(s) (JAX finds the TPU pod / multislice peers from the environment)."""
  missing = [f for f, v in (("--xpk_cluster", cluster), ("--xpk_tpu_type", tpu_type)) if not v]
  if missing:
    raise ConfigError(f"--launcher=xpk needs {' and '.join(missing)} (or a get_launch() block "
                      "in the config file)")
  if bool(docker_image) == bool(base_docker_image):
    raise ConfigError("--launcher=xpk needs exactly one of --xpk_docker_image (an image with "
                      "rmjax installed) and --xpk_base_docker_image (xpk adds this directory)")
  if num_slices < 1:
    raise ConfigError(f"--num_slices must be >= 1, got {num_slices}")
  cmd = ["xpk", "workload", "create", f"--cluster={cluster}", f"--workload={workload}",
         f"--tpu-type={tpu_type}", f"--num-slices={num_slices}"]
  cmd += [f"--docker-image={docker_image}"] if docker_image else [
      f"--base-docker-image={base_docker_image}"]
  cmd += [f"--{k}={v}" for k, v in (("project", project), ("zone", zone), ("priority", priority)) if v]
  return cmd + [f"--command={shlex.join(train)}"]
