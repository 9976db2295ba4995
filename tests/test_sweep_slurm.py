"""A real SLURM job array: a 2-point sweep of the tiny BT config submitted with
`rmjax sweep --launcher=slurm` to a single-node SLURM started on localhost by the fixture
(Debian's slurm-wlm: slurmctld + slurmd + munged, ProctrackType=proctrack/linuxproc,
TaskPlugin=task/none, select/cons_tres, no accounting), waited for, collected and resubmitted.

Skipped, with the reason, where that cluster cannot start (not root, slurm-wlm or munge not
installed, the daemons do not come up). To run it: as root,
`apt-get install -y slurm-wlm munge` (or just slurmctld slurmd slurm-client munge), then
`python -m pytest -q tests/test_sweep_slurm.py`.
"""

import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from _cli import REPO, run_cli

FAST = ["--config.train.steps=2", "--config.train.eval_every=2", "--config.train.checkpoint_every=2",
        "--config.data.source=synthetic:64", "--config.data.eval_source=synthetic:8",
        "--config.train.batch_size=8", "--config.train.progress=False"]
BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "munged", "munge")


def _free_ports(n):
  socks = [socket.socket() for _ in range(n)]
  for s in socks:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


def _which(name):
  return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def _tail(path, n=5):
  try:
    return " | ".join(open(path, errors="replace").read().strip().splitlines()[-n:])
  except OSError:
    return ""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
  """SLURM_CONF of a one-node cluster on localhost (the daemons are stopped afterwards)."""
  if os.geteuid() != 0:
    pytest.skip("the local SLURM needs root (slurmd runs jobs as their user); run as root")
  missing = [b for b in BINARIES if _which(b) is None]
  if missing or not os.path.exists("/etc/munge/munge.key"):
    pytest.skip(f"slurm-wlm / munge not installed ({', '.join(missing) or 'no munge.key'}): "
                "apt-get install -y slurm-wlm munge")
  d = tmp_path_factory.mktemp("slurm")
  host = socket.gethostname().split(".")[0]
  ctld_port, d_port = _free_ports(2)
  (d / "state").mkdir()
  (d / "spool").mkdir()
  conf = d / "slurm.conf"
  conf.write_text("\n".join([
      "ClusterName=rmjaxtest", f"SlurmctldHost={host}(127.0.0.1)", f"SlurmctldPort={ctld_port}",
      f"SlurmdPort={d_port}", "SlurmUser=root", "AuthType=auth/munge",
      f"StateSaveLocation={d}/state", f"SlurmdSpoolDir={d}/spool",
      f"SlurmctldPidFile={d}/slurmctld.pid", f"SlurmdPidFile={d}/slurmd.pid",
      f"SlurmctldLogFile={d}/slurmctld.log", f"SlurmdLogFile={d}/slurmd.log",
      "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
      "SelectTypeParameters=CR_Core", "AccountingStorageType=accounting_storage/none",
      "JobAcctGatherType=jobacct_gather/none", "JobCompType=jobcomp/none", "MpiDefault=none",
      "ReturnToService=2",
      f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} State=UNKNOWN",
      "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
  env = dict(os.environ, SLURM_CONF=str(conf))
  procs = []
  if subprocess.run([_which("munge"), "-n"], capture_output=True).returncode:  # no munged yet
    os.makedirs("/run/munge", exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    procs.append(subprocess.Popen(["runuser", "-u", "munge", "--", _which("munged"), "-F"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1)
  for daemon in ("slurmctld", "slurmd"):
    procs.append(subprocess.Popen([_which(daemon), "-D", "-f", str(conf)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
  try:
    state = ""
    for _ in range(60):
      time.sleep(0.5)
      out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
      state = out.stdout.strip()
      if state == "idle":
        break
    else:
      pytest.skip(f"the local SLURM did not come up (node state {state!r}; slurmctld: "
                  f"{_tail(d / 'slurmctld.log')}; slurmd: {_tail(d / 'slurmd.log')})")
    yield str(conf)
  finally:
    for p in reversed(procs):
      p.terminate()
      try:
        p.wait(timeout=15)
      except subprocess.TimeoutExpired:
        p.kill()


def test_slurm_job_array_trains_collects_and_resubmits(slurm, tmp_path):
  cfg = tmp_path / "bt2.py"
  cfg.write_text("from configs.bt import get_config  # noqa: F401\n\n\n"
                 "def get_sweep(arg=None):\n"
                 "  return [{'optim.lr': 1e-3}, {'optim.lr': 3e-2}]\n")
  w = tmp_path / "sweep"
  argv = ["sweep", f"--config={cfg}:tiny", f"--workdir={w}", "--launcher=slurm", *FAST]
  env = {"SLURM_CONF": slurm, "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"}
  code, out, err = run_cli(argv, env=env)
  assert code == 0, out + err
  assert "#SBATCH --array=0-1" in out and out.count(" srun ") == 2 and "submitted job array" in out
  job = json.loads((w / "sweep.json").read_text())["jobs"][0]["job_id"]
  for _ in range(480):
    listed = subprocess.run(["squeue", "-h", "-j", job], env=dict(os.environ, SLURM_CONF=slurm),
                            capture_output=True, text=True).stdout.strip()
    if not listed:
      break
    time.sleep(0.5)
  else:
    pytest.fail(f"job array {job} still queued or running after 240 s: {listed}")
  errs = {n: (w / "logs" / f"{n}.err").read_text()[-800:] for n in ("run000", "run001")
          if (w / "logs" / f"{n}.err").exists()}
  for name in ("run000", "run001"):
    assert (w / "logs" / f"{name}.exit").read_text().split()[0] == "0", errs
    assert (w / name / "checkpoints" / "2").is_dir()
  code, out, err = run_cli(["sweep", f"--workdir={w}", "--collect"], env=env)
  assert code == 0, out + err
  result = json.loads((w / "results.json").read_text())
  assert result["counts"] == {"done": 2} and result["best"] in ("run000", "run001")
  assert all(t["step"] == 2 and t["value"] is not None for t in result["points"])
  code, out, err = run_cli(argv, env=env)  # resubmitted: both done, nothing submitted
  assert code == 0, out + err
  assert "all 2 points are done or running: nothing to launch" in out
  assert len(json.loads((w / "sweep.json").read_text())["jobs"]) == 1
