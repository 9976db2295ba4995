"""The generic loop on the BT task: sharded == single device, exact resume after SIGKILL, NaN guard."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import bt as bt_config
from rmjax import sharding
from rmjax.errors import TrainingDiverged
from rmjax.tasks import bt
from rmjax.checkpoints.orbax import Checkpointer
from rmjax.train.loop import train
from _util import fast_config

REPO = pathlib.Path(__file__).resolve().parents[1]
# the in-process runs build the same tiny model again and again: its init compiles once
pytestmark = pytest.mark.usefixtures("jax_compile_cache")


def tiny_config(steps=5, **train_overrides):
  c = fast_config(bt_config.get_config("tiny"), steps=steps)
  for k, v in train_overrides.items():
    setattr(c.train, k, v)
  return c


def assert_tree_close(a, b, rtol=1e-5):
  """Per leaf: ||a - b|| <= rtol * ||b|| (relative error of the whole tensor)."""
  def one(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    assert np.linalg.norm(x - y) <= rtol * max(np.linalg.norm(y), 1e-12), (
        np.linalg.norm(x - y) / np.linalg.norm(y))
  jax.tree_util.tree_map(one, a, b)


def _losses(workdir):
  import json
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return np.array([json.loads(line)["loss"] for line in f])


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("single"))
  config = tiny_config()
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  _, state = train(config, wd, bt.build(config), mesh=mesh, return_state=True)
  return _losses(wd), jax.device_get(state.params)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_sharded_training_equals_single_device(shape, single_device_run, tmp_path):
  ref_losses, ref_params = single_device_run
  config = tiny_config()
  config.mesh.shape = shape
  _, state = train(config, str(tmp_path), bt.build(config), return_state=True)
  np.testing.assert_allclose(_losses(str(tmp_path)), ref_losses, rtol=1e-5)
  q = state.params["backbone"]["layers"]["self_attn"]["q_proj"]["kernel"]
  assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  assert_tree_close(jax.device_get(state.params), ref_params)


def test_gradient_accumulation_matches_full_batch(tmp_path):
  a = tiny_config(steps=2)
  b = tiny_config(steps=2)
  b.optim.accum_steps = 2
  _, sa = train(a, str(tmp_path / "a"), bt.build(a), return_state=True)
  _, sb = train(b, str(tmp_path / "b"), bt.build(b), return_state=True)
  assert_tree_close(jax.device_get(sa.params), jax.device_get(sb.params), rtol=1e-4)


def test_freeze_backbone_trains_head_only(tmp_path):
  config = tiny_config(steps=3, freeze_backbone=True)
  task = bt.build(config)
  _, state = train(config, str(tmp_path), task, return_state=True)
  from rmjax import checkpoints
  _, pre = checkpoints.load_pretrained("tiny", seed=config.seed)
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), y),
                         jax.device_get(state.params["backbone"]), pre)
  assert not np.allclose(state.params["reward_head"]["Dense_0"]["kernel"], 0.0)


class _PoisonAt:
  """Wraps a batcher: the margin of batch number `at` (1-based) becomes NaN."""

  def __init__(self, inner, at):
    self.inner, self.at, self.n = inner, at, 0

  def __next__(self):
    batch = next(self.inner)
    self.n += 1
    if self.n == self.at:
      batch = dict(batch, margin=np.full_like(batch["margin"], np.nan))
    return batch

  def state(self):
    return self.inner.state()

  def restore(self, s):
    self.inner.restore(s)


def test_nan_loss_stops_run_and_keeps_last_checkpoint(tmp_path):
  config = tiny_config(steps=6, checkpoint_every=2)
  config.loss.use_margin = True
  task = bt.build(config)
  task.train_batches = _PoisonAt(task.train_batches, at=5)
  with pytest.raises(TrainingDiverged, match=r"at step 5.*last good checkpoint is step 4"):
    train(config, str(tmp_path), task)
  ckpt = Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
  assert ckpt.latest_step() == 4
  # the checkpoint restores and training resumes from it
  config.loss.use_margin = False
  final = train(config, str(tmp_path), bt.build(config))
  assert final["step"] == 6 and np.isfinite(final["loss"])


KILL_CASES = {  # method -> (config, overrides, checkpoint dir whose first step triggers the kill)
    "bt": (f"{REPO}/configs/bt.py:tiny",
           ["--config.train.steps=9", "--config.train.checkpoint_every=3",
            "--config.data.source=synthetic:200", "--config.data.eval_source=synthetic:16",
            "--config.train.eval_every=0", "--config.train.batch_size=8"], "checkpoints"),
    "ppo": (f"{REPO}/configs/ppo.py:tiny,smoke", ["--config.train.steps=4"], "checkpoints"),
    "armorm": (f"{REPO}/configs/armorm.py:tiny,smoke,stage1=ridge", [], "stage2/checkpoints"),
}


def _cli(workdir, method, cache, extra_env=None):
  """One `rmjax train` process; `cache`: a JAX compilation cache shared by the test's three runs
  (the resumed run reuses the executables the first two compiled: ~1/4 of its CPU time)."""
  config, overrides, _ = KILL_CASES[method]
  cmd = [sys.executable, "-m", "rmjax", "train", f"--config={config}", f"--workdir={workdir}",
         "--config.train.progress=False", *overrides]
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", **(extra_env or {}))
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


@pytest.mark.parametrize("method", sorted(KILL_CASES))
def test_resume_after_sigkill_is_bit_identical(tmp_path, method):
  """kill -9 after the first checkpoint; the resumed run ends at the same bits as an
  uninterrupted one (BT, PPO, and ArmoRM, killed inside its gate stage)."""
  cache = tmp_path / "jax_cache"
  ref = _cli(tmp_path / "ref", method, cache)
  slow = _cli(tmp_path / "killed", method, cache, {"RMJAX_DEBUG_STEP_DELAY": "0.5"})
  ckpts = tmp_path / "killed" / KILL_CASES[method][2]
  deadline = time.time() + 300
  while time.time() < deadline and slow.poll() is None and not (
      ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())):
    time.sleep(0.2)
  assert slow.poll() is None, "the slowed run ended before it could be killed"
  slow.send_signal(signal.SIGKILL)
  slow.wait()
  resumed = _cli(tmp_path / "killed", method, cache)  # side by side with the rest of `ref`
  out = resumed.communicate(timeout=300)[0]
  assert ref.wait(timeout=300) == 0, ref.stdout.read()
  assert resumed.returncode == 0, out
  assert "resumed from step" in out

  def state(wd):
    ckpt = Checkpointer(str(wd / "checkpoints"), async_save=False)
    return ckpt.latest_step(), ckpt.restore_raw()
  (step_a, a), (step_b, b) = state(tmp_path / "ref"), state(tmp_path / "killed")
  assert step_a == step_b
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
  # metrics.jsonl (every stage's): each step once, the same steps as the uninterrupted run
  for path in sorted((tmp_path / "killed").rglob("metrics.jsonl")):
    steps = _metric_steps(path)
    assert len(steps) == len(set(steps)), (path, steps)
    assert steps == _metric_steps(tmp_path / "ref" / path.relative_to(tmp_path / "killed"))


def _metric_steps(path):
  import json
  return [json.loads(line)["step"] for line in pathlib.Path(path).read_text().splitlines()
          if line.strip()]
