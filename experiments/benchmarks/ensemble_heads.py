"""K-head ensemble train step vs single-head train step on the same backbone, same run.

Both steps are the loop's `make_train_step` (AdamW, clipping) over RewardModel on the
SmolLM2-135M architecture (random weights, 'smollm2-135m-config'): BT loss on a scalar head vs
K per-member BT losses on the stacked `ensemble` head (one einsum). The K heads add K x D
parameters and a [B, D] x [D, K] product to a 135M-parameter forward/backward, so the ratio
should be ~1 (target <= 1.05). Timings alternate single / ensemble calls so machine noise hits
both alike. Prints one JSON object last.

  HF_HUB_OFFLINE=1 python -m experiments.benchmarks.ensemble_heads --batch 8 --seq 256
"""

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from experiments.benchmarks import _common


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--preset", default="smollm2-135m-config")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq", type=int, default=256)
  ap.add_argument("--members", type=int, default=5)
  ap.add_argument("--iters", type=int, default=5)
  ap.add_argument("--warmup", type=int, default=1)
  a = ap.parse_args()

  from configs import ensemble as ensemble_config
  from rmjax.checkpoints.presets import PRESET_CONFIGS
  from rmjax.models.reward_model import RewardModel
  from rmjax.tasks.bt import bt_loss_fn
  from rmjax.tasks.ensemble import ensemble_loss_fn
  from rmjax.train.state import TrainState, make_optimizer, make_train_step

  cfg = PRESET_CONFIGS[a.preset]
  config = ensemble_config.get_config("tiny")
  loss_cfg = mlc.ConfigDict(dict(label_smoothing=0.0, centering_coef=0.0, use_margin=False))
  rng = np.random.default_rng(0)
  b, t = a.batch, a.seq
  batch = {"chosen_ids": rng.integers(3, cfg.vocab_size, (b, t)).astype(np.int32),
           "rejected_ids": rng.integers(3, cfg.vocab_size, (b, t)).astype(np.int32),
           "chosen_mask": np.ones((b, t), np.int32), "rejected_mask": np.ones((b, t), np.int32),
           "margin": np.zeros((b,), np.float32), "weight": np.ones((b,), np.float32),
           "index": np.arange(b, dtype=np.int32), "prompt_len": np.full((b,), 8, np.int32)}
  batch = jax.device_put(batch)

  def setup(head, members):
    model = RewardModel(cfg, head=head, members=members)
    ids = jnp.zeros((2, 8), jnp.int32)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids))["params"])
    tx, sched = make_optimizer(config.optim, 100)
    loss = bt_loss_fn(model, loss_cfg) if head == "scalar" else ensemble_loss_fn(model, loss_cfg)
    step = jax.jit(make_train_step(loss, tx, sched))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.PRNGKey(1))
    return step, state

  runs = {"single": setup("scalar", 1), "ensemble": setup("ensemble", a.members)}
  states = {k: v[1] for k, v in runs.items()}
  times = {k: [] for k in runs}
  compile_s = {}
  for it in range(a.warmup + a.iters):
    for k, (step, _) in runs.items():
      t0 = time.perf_counter()
      states[k], m = step(states[k], batch)
      jax.block_until_ready(m)
      dt = time.perf_counter() - t0
      if it == 0:
        compile_s[k] = round(dt, 2)
      if it >= a.warmup:
        times[k].append(dt)
  med = {k: statistics.median(v) for k, v in times.items()}
  tokens = 2 * b * t
  flops = 3 * _common.llama_forward_flops(cfg, 2 * b, t)  # forward + backward ~ 3x forward
  peak = _common.matmul_peak_gflops()
  result = {
      "benchmark": "ensemble_heads", "preset": a.preset, "batch": b, "seq": t,
      "members": a.members, "dtype": "float32", "iters": a.iters,
      "single_step_s": round(med["single"], 4), "ensemble_step_s": round(med["ensemble"], 4),
      "ratio_ensemble_over_single": round(med["ensemble"] / med["single"], 4),
      "target_ratio": 1.05,
      "single_tokens_per_s": round(tokens / med["single"], 1),
      "ensemble_tokens_per_s": round(tokens / med["ensemble"], 1),
      "mfu_single": round(flops / med["single"] / 1e9 / peak, 3),
      "mfu_ensemble": round(flops / med["ensemble"] / 1e9 / peak, 3),
      "matmul_peak_gflops": round(peak, 1), "first_call_s": compile_s,
      "times_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
      "peak_rss_mib": round(_common.peak_rss_mib(), 1), "env": _common.environment()}
  _common.emit(result)


if __name__ == "__main__":
  main()
