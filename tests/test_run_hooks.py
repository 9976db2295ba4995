"""Run hooks and stages (issue 25 item 3): `Run.loop` runs throughput, eval, log and checkpoint as
`Hook`s (Levanter's `add_hook(fn, every=n)` shape) and a caller's own beside them; ArmoRM runs
its loop stages as `Run.stage`s of one run, its config validated once; its stages are functions
experiments call (`armorm.stage1`: ridge per rated objective, a BT probe for a pair-only one)."""

import json

import numpy as np

from _util import fast_config
from configs import armorm as armorm_config
from configs import bt as bt_config
from rmjax.tasks import armorm, bt
from rmjax.train import head_fit
from rmjax.train import run as run_module
from rmjax.train.loop import train
from rmjax.train.run import Hook


def test_a_callers_hook_runs_on_its_steps_and_logs_in_the_steps_row(tmp_path):
  c = fast_config(bt_config.get_config("tiny"), steps=4, train_pairs=64)
  c.train.log_every, c.data.max_length = 2, 64
  seen = []

  def fn(info):
    seen.append((info.step, info.last))
    info.row["custom"] = float(info.step)
  train(c, str(tmp_path), bt.build(c), hooks=(Hook(fn, every=3),))
  assert seen == [(3, False), (4, True)]  # every 3rd step and the last one
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r.get("custom")) for r in rows] == [(2, None), (3, 3.0), (4, 4.0)]
  assert "steps_per_s" in rows[0] and "loss" in rows[2] and "loss" not in rows[1]


def test_armorm_stages_run_under_one_validated_run(tmp_path, monkeypatch):
  calls = []
  real = run_module.validate_config
  monkeypatch.setattr(run_module, "validate_config", lambda c: (calls.append(c), real(c))[1])
  c = armorm_config.get_config("tiny,smoke,stage1=e2e")
  c.train.progress = False
  summary = armorm.SPEC.train(c, str(tmp_path))
  assert len(calls) == 1  # the run's; its stages' derived configs are not validated again
  for stage in ("stage1_e2e", "stage2"):
    assert (tmp_path / stage / "checkpoints").is_dir(), stage
    assert (tmp_path / stage / "metrics.jsonl").exists(), stage
  assert (tmp_path / "checkpoints").is_dir() and (tmp_path / "armorm.json").exists()
  assert "stage2_loss" in summary


def test_armorm_stage1_is_ridge_then_a_bt_probe_for_pair_only_objectives():
  config = armorm_config.get_config("tiny,smoke")
  o, d = len(config.objectives.names), 8
  rng = np.random.default_rng(0)
  x = rng.normal(size=(120, d)).astype(np.float32)
  ratings = (x @ rng.normal(size=(d, o))).astype(np.float32)
  ratings[:, -1] = np.nan  # the last objective: pairs only
  hc, hr = (rng.normal(size=(60, d)).astype(np.float32) for _ in range(2))
  objective = np.r_[np.full(50, o - 1), np.zeros(10, int)]  # objective 0 is rated: no probe
  w, info = armorm.stage1(config, x, ratings, hc, hr, objective)
  want, _ = head_fit.fit_ridge(x, ratings, tuple(config.armorm.ridge_alphas))
  want[:, -1], probe = head_fit.fit_bt_probe(hc[:50], hr[:50], l2=config.armorm.bt_probe_l2,
                                             steps=config.armorm.bt_probe_steps)
  np.testing.assert_array_equal(w, want)
  assert list(info) == list(config.objectives.names) and info[config.objectives.names[-1]] == probe
  assert info[config.objectives.names[0]]["n"] == 120
