"""`rmjax sweep` launchers and `--collect`: the sbatch script and xpk commands against golden files
(tests/golden/), the results table of a partial sweep built from fabricated workdirs, and a
resubmitted sweep skipping the points that are done. A real SLURM job array runs in
tests/test_sweep_slurm.py."""

import fcntl
import json
import os
import socket
import sys

from _cli import REPO, run_cli

CFG = f"--config={REPO}/configs/bt.py:tiny"
GOLDEN = REPO / "tests" / "golden"
SLURM = ["--launcher=slurm", "--config.train.steps=7", "--slurm_nodes=2", "--slurm_tasks_per_node=8",
         "--slurm_gpus_per_node=8", "--slurm_partition=gpu", "--slurm_account=acct",
         "--slurm_time=01:00:00", "--slurm_setup=source venv/bin/activate"]
XPK = ["--launcher=xpk", "--config.train.steps=7", "--xpk_cluster=tpu-cluster", "--xpk_tpu_type=v5p-8",
       "--num_slices=2", "--xpk_docker_image=gcr.io/proj/rmjax:latest", "--xpk_zone=us-east5-a",
       "--xpk_workload_prefix=bt-lr"]


def generic(text, workdir):
  """Machine paths replaced by placeholders, as the golden files hold them."""
  return (text.replace(f"--chdir={os.getcwd()}\n", "--chdir={CWD}\n")
          .replace(sys.executable, "{PYTHON}").replace(str(workdir), "{W}").replace(str(REPO), "{REPO}"))


def sweep(*args):
  code, out, err = run_cli(["sweep", *map(str, args)])
  assert code == 0, out + err
  return out


def fabricate(wd, *, steps=10, step=None, losses=(), accs=(), ckpt=None):
  """A train workdir as `rmjax train` leaves it: config.json, metrics.jsonl, checkpoints/."""
  wd.mkdir(parents=True)
  (wd / "config.json").write_text(json.dumps({"task": "bt", "train": {"steps": steps}}))
  rows = [{"step": 5 * (i + 1), "loss": l, "eval_accuracy": a} for i, (l, a) in
          enumerate(zip(losses, accs))]
  (wd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  if ckpt is not None:
    (wd / "checkpoints" / str(ckpt)).mkdir(parents=True)


def test_slurm_and_xpk_dry_run_match_golden(tmp_path):
  w = tmp_path / "sweep"
  out = sweep(CFG, f"--workdir={w}", "--dry_run", *SLURM)
  script = (w / "sweep.sbatch").read_text()
  assert out.startswith(script) and f"sbatch {w}/sweep.sbatch" in out
  assert generic(script, w) == (GOLDEN / "sweep_slurm.sbatch").read_text()
  assert "#SBATCH --array=0-3" in script and script.count(" srun ") == 4
  assert not (w / "sweep.json").exists()  # nothing submitted
  out = sweep(CFG, f"--workdir={w}", "--dry_run", *XPK)
  assert generic(out, w) == (GOLDEN / "sweep_xpk.txt").read_text()
  lines = out.splitlines()
  assert len(lines) == 4 and all("--config.train.steps=7" in l for l in lines)


def test_collect_partial_sweep_and_resubmit_skips_done(tmp_path):
  w = tmp_path / "sweep"
  fabricate(w / "run000", losses=(0.6, 0.5), accs=(0.6, 0.7), ckpt=10)     # done
  fabricate(w / "run001", losses=(0.6, 0.4), accs=(0.8, 0.75), ckpt=10)    # done, best
  fabricate(w / "run002", losses=(0.7,), accs=(0.9,), ckpt=5)              # failed
  (w / "logs").mkdir()
  (w / "logs" / "run002.exit").write_text("2\nnon-finite loss (nan) at step 6\n")
  fabricate(w / "run003", losses=(0.65,), accs=(0.95,))                    # running
  lock = open(w / "run003" / ".rmjax.lock", "w")
  lock.write(f"{os.getpid()} {socket.gethostname()}\n")
  lock.flush()
  fcntl.flock(lock, fcntl.LOCK_EX)
  try:
    out = sweep(CFG, f"--workdir={w}", "--collect")
    result = json.loads((w / "results.json").read_text())
    assert [t["status"] for t in result["points"]] == ["done", "done", "failed", "running"]
    assert result["metric"] == "eval_accuracy" and result["mode"] == "max"
    assert result["best"] == "run001" and result["best_finished"]  # running/failed not ranked
    assert result["points"][1]["best_step"] == 5 and result["points"][1]["value"] == 0.75
    assert result["points"][1]["overrides"] == {"optim.lr": 3e-4, "loss.label_smoothing": 0.1}
    assert "non-finite loss" in result["points"][2]["reason"]
    assert (w / "results.png").stat().st_size > 1000
    md = (w / "results.md").read_text()
    assert md in out + "\n" and "| **run001** | 0.0003 | 0.1 | done | 10/10 |" in md
    assert "best: run001" in md and "failed (exit code 2: non-finite loss" in md
    assert "\nfailed: run002 (exit code 2: non-finite loss (nan) at step 6)\n" in md
    # a loss metric ranks by its minimum
    sweep(CFG, f"--workdir={w}", "--collect", "--metric=loss")
    assert json.loads((w / "results.json").read_text())["best"] == "run001"
    # resubmitting: run000 / run001 done and run003 running are skipped, run002 resumes
    out = sweep(CFG, f"--workdir={w}", "--dry_run", *SLURM)
    assert "#SBATCH --array=2\n" in out and out.count(" srun ") == 1 and "run002" in out
    assert "run000 done: skipped" in out and "run003 running: skipped" in out
  finally:
    lock.close()
  os.remove(w / "run003" / ".rmjax.lock")
  for name in ("run002", "run003"):  # all done: a local sweep runs nothing, and says so
    (w / name / "checkpoints" / "10").mkdir(parents=True)
  out = sweep(CFG, f"--workdir={w}")
  assert "all 4 points are done or running: nothing to launch" in out
  assert json.loads((w / "sweep.json").read_text())["points"][3]["name"] == "run003"
  out = sweep(f"--workdir={w}", "--collect")  # the grid from sweep.json, no --config
  assert json.loads((w / "results.json").read_text())["counts"] == {"done": 4}


def test_launcher_errors_are_one_line(tmp_path):
  code, _, err = run_cli(["sweep", CFG, f"--workdir={tmp_path}", "--launcher=xpk", "--dry_run"])
  assert code == 2 and "--xpk_cluster and --xpk_tpu_type" in err and len(err.splitlines()) == 1
  code, _, err = run_cli(["sweep", f"--workdir={tmp_path}", "--collect"])
  assert code == 2 and "no sweep.json" in err


def test_slurm_submission_queue_states_and_config_launch_block(tmp_path):
  """Submission through `sbatch` and queue states from `squeue` (both faked on PATH: a real
  cluster runs in test_sweep_slurm.py), and launcher settings from the config's get_launch()."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/sbatch.args\necho "4242;c1"\n')
  (bin_dir / "squeue").write_text('#!/bin/sh\nprintf "0 RUNNING\\n1 PENDING\\n"\n')
  for f in bin_dir.iterdir():
    f.chmod(0o755)
  cfg = tmp_path / "bt_launch.py"
  cfg.write_text("from configs.bt import get_config, get_sweep  # noqa: F401\n\n\n"
                 "def get_launch(arg=None):\n"
                 "  return {'slurm_partition': 'cfgpart', 'slurm_time': '02:00:00'}\n")
  w = tmp_path / "sweep"
  fabricate(w / "run002", losses=(0.5,), accs=(0.7,), steps=5, ckpt=5)
  env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
  argv = ["sweep", f"--config={cfg}:tiny", f"--workdir={w}", "--launcher=slurm",
          "--slurm_time=01:00:00"]
  code, out, err = run_cli(argv, env=env)
  assert code == 0, out + err
  assert "#SBATCH --partition=cfgpart" in out and "#SBATCH --time=01:00:00" in out  # flag wins
  assert "#SBATCH --array=0-1,3\n" in out and "submitted job array 4242" in out
  assert (tmp_path / "sbatch.args").read_text().split() == ["--parsable", f"{w}/sweep.sbatch"]
  assert json.loads((w / "sweep.json").read_text())["jobs"][0]["job_id"] == "4242"
  code, out, err = run_cli(["sweep", f"--workdir={w}", "--collect"], env=env)
  assert code == 0, out + err
  result = json.loads((w / "results.json").read_text())
  assert [t["status"] for t in result["points"]] == ["running", "queued", "done", "not started"]
  code, out, err = run_cli(argv, env=env)  # resubmitted: only the point the queue lacks
  assert code == 0, out + err
  assert "#SBATCH --array=3\n" in out and "run001 queued: skipped" in out
