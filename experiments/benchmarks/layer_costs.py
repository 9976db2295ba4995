"""Per-block cost of one decoder layer: forward and forward+backward, in process CPU seconds.

Where a train step's time goes, block by block (attention, MLP, RMSNorm, whole layer) on one
layer of the chosen preset. CPU time of the process (all XLA threads) is used instead of wall
time because it moves little when other jobs share the machine. Prints one JSON object last.

  python -m experiments.benchmarks.layer_costs                 # smollm2-135m-config, 8 x 256
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from experiments.benchmarks import _common  # noqa: E402
from rmjax.checkpoints.presets import preset_config  # noqa: E402
from rmjax.models import llama  # noqa: E402


def cpu_seconds(fn, *args, iters: int = 4) -> float:
  """Smallest process CPU time of `iters` calls, after one untimed (compiling) call."""
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(iters):
    t0 = time.process_time()
    jax.block_until_ready(fn(*args))
    best = min(best, time.process_time() - t0)
  return best


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--preset", default="smollm2-135m-config")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--iters", type=int, default=4)
  args = p.parse_args(argv)
  cfg = preset_config(args.preset)
  b, t = args.batch, args.seq
  x = jax.random.normal(jax.random.PRNGKey(0), (b, t, cfg.hidden_size))
  mask = jnp.ones((b, t), bool)
  pos = jnp.broadcast_to(jnp.arange(t), (b, t))
  blocks = {
      "attention": (llama.Attention(cfg), (pos, mask, pos, None)),
      "mlp": (llama.MLP(cfg), ()),
      "rmsnorm": (llama.RMSNorm(cfg.rms_norm_eps), ()),
      "layer": (llama.DecoderLayer(cfg), (None, pos, mask, pos)),
  }
  result = {"benchmark": "layer_costs",
            "config": {"preset": args.preset, "batch": b, "seq": t, "iters": args.iters},
            "env": _common.environment(), "cpu_s": {}}
  for name, (mod, rest) in blocks.items():
    params = nn.unbox(mod.init(jax.random.PRNGKey(1), x, *rest)["params"])

    def out(p, x, mod=mod, rest=rest):
      y = mod.apply({"params": p}, x, *rest)
      return y[0] if isinstance(y, tuple) else y
    fwd = jax.jit(lambda p, x, out=out: out(p, x).sum())
    grad = jax.jit(jax.grad(lambda p, x, out=out: (out(p, x) * x).sum(), argnums=(0, 1)))
    f, g = cpu_seconds(fwd, params, x, iters=args.iters), cpu_seconds(grad, params, x, iters=args.iters)
    result["cpu_s"][name] = {"forward": round(f, 4), "forward_backward": round(g, 4),
                             "ratio": round(g / f, 2)}
    print(name, result["cpu_s"][name], flush=True)
  _common.emit(result)
  return result


if __name__ == "__main__":
  main()
