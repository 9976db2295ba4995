"""Shared benchmark helpers: timing, the measured matmul peak (for MFU), FLOP counts, memory.

Every benchmark measures its baseline and the matmul peak in the same process and run, because
these machines are noisy: figures are only compared side by side.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any, Callable, Optional

from rmjax import launch

# A benchmark runs in the process environment `rmjax train` runs in (rmjax/launch.py): re-exec
# once with it before jax or torch load. RMJAX_NO_REEXEC=1 measures without it.
_main = sys.modules.get("__main__")
_spec = getattr(_main, "__spec__", None)
if _spec is not None and _spec.name.startswith("experiments.benchmarks."):
  launch.reexec_tuned(_spec.name)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


def block(x: Any) -> Any:
  """Wait for every jax array in `x` (other leaves pass through)."""
  return jax.block_until_ready(x)


def time_fn(fn: Callable[[], Any], warmup: int = 2, iters: int = 5,
            sync: Optional[Callable[[Any], Any]] = block) -> dict:
  """Run `fn` `warmup` times untimed, then `iters` times; wall seconds per call.

  `sync` makes asynchronous work finish before the clock stops (jax: block_until_ready;
  torch on GPU: a cuda synchronize). Returns median, min, max and all times.
  """
  for _ in range(warmup):
    out = fn()
    if sync is not None:
      sync(out)
  times = []
  for _ in range(max(iters, 1)):
    t0 = time.perf_counter()
    out = fn()
    if sync is not None:
      sync(out)
    times.append(time.perf_counter() - t0)
  return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
          "times_s": [round(t, 4) for t in times]}


def matmul_peak_gflops(n: Optional[int] = None, dtype: str = "float32", iters: int = 5) -> float:
  """Achieved GFLOP/s of one jitted [n, n] @ [n, n] matmul: the roofline MFU is measured against.

  n defaults to 2048 on CPU (a ~17 GFLOP product) and 8192 on accelerators.
  """
  if n is None:
    n = 2048 if jax.default_backend() == "cpu" else 8192
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(k1, (n, n), jnp.dtype(dtype))
  b = jax.random.normal(k2, (n, n), jnp.dtype(dtype))
  f = jax.jit(lambda x, y: x @ y)
  t = time_fn(lambda: f(a, b), warmup=2, iters=iters)
  return 2 * n ** 3 / t["median_s"] / 1e9


def llama_forward_flops(cfg, batch: int, seq: int) -> float:
  """Matmul FLOPs of one Llama forward over [batch, seq] (projections, MLP, LM head, attention).

  The attention term counts the full (unmasked) T x S score and value products, which is what
  both implementations compute.
  """
  d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
  q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
  per_layer = d * (q + 2 * kv) + q * d + 3 * d * f
  tokens = batch * seq
  dense = 2 * tokens * (cfg.num_hidden_layers * per_layer + d * v)
  attention = 4 * batch * seq * seq * q * cfg.num_hidden_layers
  return float(dense + attention)


def peak_rss_mib() -> float:
  """Peak resident memory of this process so far: Linux's VmHWM (the high-water mark of this
  process image; getrusage's ru_maxrss survives exec, so a child forked from a big process would
  report its parent's size), else ru_maxrss (macOS bytes)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def jax_device_peak_mib() -> Optional[float]:
  """Peak bytes in use on the first accelerator (None on CPU, where RSS is the figure)."""
  dev = jax.devices()[0]
  if dev.platform == "cpu":
    return None
  stats = dev.memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2 ** 20


def glibc_tunables() -> str:
  """The GLIBC_TUNABLES this process runs with ('' when unset)."""
  return os.environ.get("GLIBC_TUNABLES", "")


def environment() -> dict:
  """What ran the benchmark: backend, device, versions."""
  dev = jax.devices()[0]
  env = {"backend": jax.default_backend(), "device": getattr(dev, "device_kind", str(dev)),
         "device_count": jax.device_count(), "jax": jax.__version__,
         "python": platform.python_version(), "glibc_tunables": glibc_tunables()}
  try:
    import torch
    env["torch"] = torch.__version__
  except ImportError:
    pass
  return env


def emit(result: dict) -> None:
  """Print the result as the last line: one JSON object."""
  print(json.dumps(result, sort_keys=False), flush=True)
