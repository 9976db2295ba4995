"""Forward-pass throughput: rmjax (jit) vs transformers LlamaForCausalLM, same weights, same run.

Random weights of a preset architecture (default smollm2-135m-config) are initialised in rmjax and
converted to a torch state dict through `rmjax.checkpoints.hf`, so both sides compute the same
function (the logits are compared once as a sanity check). Prints one JSON object last.

  python -m experiments.benchmarks.forward                    # CPU: float32, batch 8 x 256
  python -m experiments.benchmarks.forward --dtype bf16       # GPU
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments.benchmarks import _common  # noqa: E402
from rmjax.checkpoints import hf as hf_ckpt  # noqa: E402
from rmjax.checkpoints.presets import load_pretrained  # noqa: E402
from rmjax.models.llama import Llama  # noqa: E402

DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16"}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--preset", default="smollm2-135m-config")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--iters", type=int, default=5, help="timed runs (median reported)")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
  p.add_argument("--no-torch", action="store_true", help="skip the transformers baseline")
  return p.parse_args(argv)


def torch_model(cfg, params, dtype):
  """transformers LlamaForCausalLM holding the same weights as `params` (None without torch)."""
  try:
    import torch
    import transformers
  except ImportError:
    return None, None
  d = hf_ckpt.config_to_hf(cfg)
  d.pop("architectures"), d.pop("model_type"), d.pop("torch_dtype")
  config = transformers.LlamaConfig(**d)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  with torch.device("meta"):
    model = transformers.LlamaForCausalLM(config)
  sd = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in
        hf_ckpt.hf_state_dict_from_params(params, cfg).items()}
  model.load_state_dict(sd, strict=False, assign=True)
  if cfg.tie_word_embeddings:
    model.tie_weights()
  # non-persistent buffers (rotary inv_freq) were on meta: rebuild them for real.
  model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
  torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  model = model.to(device=device, dtype=torch_dtype).eval()
  return model, device


def main(argv=None):
  args = parse_args(argv)
  dtype = DTYPES[args.dtype]
  b, t = args.batch, args.seq
  cfg, params = load_pretrained(args.preset, dtype=dtype)
  cfg = cfg.replace(dtype=dtype)
  rng = np.random.default_rng(0)
  ids_np = rng.integers(3, cfg.vocab_size, size=(b, t)).astype(np.int32)
  mask_np = np.ones((b, t), np.int32)
  tokens = b * t
  flops = _common.llama_forward_flops(cfg, b, t)

  peak = _common.matmul_peak_gflops(dtype=dtype)

  # ---- rmjax
  fwd = jax.jit(lambda p, i, m: Llama(cfg).apply({"params": p}, i, attention_mask=m))
  ids, mask = jnp.asarray(ids_np), jnp.asarray(mask_np)
  compile_t = _common.time_fn(lambda: fwd(params, ids, mask), warmup=0, iters=1)["median_s"]
  jx = _common.time_fn(lambda: fwd(params, ids, mask), warmup=args.warmup, iters=args.iters)
  jax_logits = np.asarray(fwd(params, ids, mask)[:, -4:], np.float32)
  rmjax_tps = tokens / jx["median_s"]
  result = {
      "benchmark": "forward",
      "config": {"preset": args.preset, "batch": b, "seq": t, "dtype": dtype, "iters": args.iters,
                 "warmup": args.warmup, "params": cfg.num_params, "gflops_per_step": flops / 1e9},
      "env": _common.environment(),
      "matmul_peak_gflops": round(peak, 1),
      "rmjax": {"tokens_per_s": round(rmjax_tps, 1), "step_s": round(jx["median_s"], 4),
                "times_s": jx["times_s"], "first_call_s": round(compile_t, 2),
                "mfu": round(flops / jx["median_s"] / 1e9 / peak, 4),
                "peak_rss_mib": round(_common.peak_rss_mib(), 1),
                "device_peak_mib": _common.jax_device_peak_mib()},
  }

  # ---- transformers / PyTorch baseline, same weights
  model, device = (None, None) if args.no_torch else torch_model(cfg, params, dtype)
  if model is not None:
    import torch
    sync = (lambda _: torch.cuda.synchronize()) if device == "cuda" else None
    tids = torch.from_numpy(ids_np.astype(np.int64)).to(device)
    tmask = torch.from_numpy(mask_np.astype(np.int64)).to(device)
    if device == "cuda":
      torch.cuda.reset_peak_memory_stats()

    def run_torch():
      with torch.inference_mode():
        return model(input_ids=tids, attention_mask=tmask, use_cache=False).logits

    th = _common.time_fn(run_torch, warmup=args.warmup, iters=args.iters, sync=sync)
    ref = run_torch()[:, -4:].float().cpu().numpy()
    torch_tps = tokens / th["median_s"]
    result["torch"] = {
        "tokens_per_s": round(torch_tps, 1), "step_s": round(th["median_s"], 4),
        "times_s": th["times_s"], "mfu": round(flops / th["median_s"] / 1e9 / peak, 4),
        "peak_rss_mib": round(_common.peak_rss_mib(), 1),
        "device_peak_mib": (torch.cuda.max_memory_allocated() / 2 ** 20 if device == "cuda" else None),
        "threads": torch.get_num_threads()}
    result["ratio_rmjax_over_torch"] = round(rmjax_tps / torch_tps, 3)
    result["logits_max_rel_diff"] = float(np.abs(jax_logits - ref).max() / np.abs(ref).max())
  _common.emit(result)
  return result


if __name__ == "__main__":
  main()
