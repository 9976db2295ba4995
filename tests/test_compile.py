"""`rmjax compile`: the train steps of a config compiled for a TPU slice that is not attached
(libtpu's compile-only devices), through the CLI as a user runs it. Needs libtpu (the `tpu`
extra); skipped without it. Tiny configs: each compile takes seconds."""

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def compile_cli(tmp_path, config, *overrides, topology="v5e:2x2"):
  proc = subprocess.run(
      [sys.executable, "-m", "rmjax", "compile", f"--config={REPO}/configs/{config}",
       f"--topology={topology}", f"--workdir={tmp_path}", *overrides],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  rows = None
  if (tmp_path / "compile.json").exists():
    rows = {r["function"]: r for r in json.loads((tmp_path / "compile.json").read_text())}
  return proc, rows


def test_tiny_bt_step_fits_v5e_2x2_with_splash_attention(tmp_path):
  pytest.importorskip("libtpu", reason="TPU AOT compilation needs libtpu: pip install -e '.[tpu]'")
  proc, rows = compile_cli(tmp_path, "bt.py:tiny", "--config.model.attention=splash")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  row = rows["bt.train_step"]
  assert row["fits"] is True and row["error"] is None
  assert row["chip"] == "v5e" and row["chips"] == 4 and row["attention"] == "splash"
  assert row["batch_size"] == 32 and row["max_length"] == 128 and row["task"] == "bt"
  # the state (f32 params + Adam moments of a ~0.2M-param model) is donated and updated in place
  assert row["argument_bytes"] > 1 << 20 and row["alias_bytes"] > 1 << 20
  assert 1 << 20 < row["total_bytes"] < row["hbm_bytes"]
  assert row["model_flops"] > 0 and row["roofline_step_s"] > 0
  assert "FITS" in proc.stdout and "bt.train_step" in proc.stdout


def test_tiny_ppo_update_prefill_decode_fit_v5e_2x2(tmp_path):
  pytest.importorskip("libtpu", reason="TPU AOT compilation needs libtpu: pip install -e '.[tpu]'")
  proc, rows = compile_cli(tmp_path, "ppo.py:tiny", "--config.ppo.rollout_batch=8",
                           "--config.ppo.minibatches=2", "--config.ppo.epochs=1")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert set(rows) == {"ppo.update", "ppo.score", "ppo.prefill", "ppo.decode"}
  assert all(r["fits"] for r in rows.values())
  up = rows["ppo.update"]
  assert up["rollout_batch"] == 8 and up["alias_bytes"] > 0  # the PPOState is donated
  assert up["argument_bytes"] > 100_000  # policy + value params and their two AdamW states
  assert rows["ppo.decode"]["alias_bytes"] > 0  # the KV cache is updated in place


def test_oversized_batch_exits_2_with_one_oom_line(tmp_path):
  pytest.importorskip("libtpu", reason="TPU AOT compilation needs libtpu: pip install -e '.[tpu]'")
  proc, rows = compile_cli(tmp_path, "bt.py:tiny", f"--config.train.batch_size={1 << 20}")
  assert proc.returncode == 2, proc.stdout + proc.stderr
  lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
  assert len(lines) == 1, proc.stderr
  line = lines[0]
  assert line.startswith("rmjax: error: bt.train_step does not fit v5e:2x2"), line
  assert "HBM per chip" in line and "G of " in line and "Traceback" not in proc.stderr
  assert rows["bt.train_step"]["fits"] is False and "OOM" in proc.stdout  # table + JSON first


def test_task_without_abstract_step_is_one_line_config_error(tmp_path):
  proc, _ = compile_cli(tmp_path, "overopt.py:tiny")
  assert proc.returncode == 2, proc.stdout + proc.stderr
  lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
  assert len(lines) == 1 and "task 'overopt' has no abstract train step" in lines[0], proc.stderr
