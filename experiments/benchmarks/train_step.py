"""BT reward-model train-step throughput: rmjax vs transformers + PyTorch, same weights, same run.

rmjax: `RewardModel` (backbone + scalar head) with the real BT loss and `make_train_step`
(AdamW, clipping), jitted with donation. Baseline: transformers `LlamaForSequenceClassification`
(num_labels=1) + torch AdamW + the same BT loss. Batch = `--pairs` chosen/rejected pairs, i.e.
2 x pairs sequences of `--seq` tokens (default 4 pairs = 8 x 256). The torch arm runs in its own
child process, right after the rmjax arm: in one process, XLA's and PyTorch's thread pools slowed
each other's first steps (up to 2x), and one process's peak RSS would hold both models. Prints
one JSON object last.

  python -m experiments.benchmarks.train_step --preset smollm2-135m-config
  python -m experiments.benchmarks.train_step --preset tiny
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import flax.linen as nn  # noqa: E402
import ml_collections as mlc  # noqa: E402
import numpy as np  # noqa: E402

from experiments.benchmarks import _common  # noqa: E402
from experiments.benchmarks.forward import DTYPES  # noqa: E402
from rmjax.checkpoints import hf as hf_ckpt  # noqa: E402
from rmjax.checkpoints.presets import load_pretrained  # noqa: E402
from rmjax.models.reward_model import RewardModel  # noqa: E402
from rmjax.tasks.bt import bt_loss_fn  # noqa: E402
from rmjax.train.state import TrainState, make_optimizer, make_train_step  # noqa: E402


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--preset", default="smollm2-135m-config")
  p.add_argument("--pairs", type=int, default=4, help="pairs per step (2x sequences)")
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
  p.add_argument("--remat", default="none", choices=("none", "full", "dots"))
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--torch-only", action="store_true",
                 help="(internal) the torch arm alone: prints its times and peak RSS as JSON")
  return p.parse_args(argv)


OPTIM = mlc.ConfigDict(dict(lr=1e-5, warmup_steps=0, schedule="constant", final_lr_frac=1.0,
                            weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, clip_norm=1.0,
                            accum_steps=1))


def rmjax_step_fn(cfg, params):
  """step(batch) -> loss: the real BT train step (AdamW, clipping) on `params` + a fresh head,
  jitted with donation; state kept between calls. `step.state()` -> the current TrainState."""
  model = RewardModel(cfg)
  ids = jnp.zeros((2, 8), jnp.int32)
  init = model.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids))["params"]
  full = dict(nn.unbox(init), backbone=jax.tree_util.tree_map(jnp.array, params))
  tx, schedule = make_optimizer(OPTIM, 1000)
  loss_cfg = mlc.ConfigDict(dict(label_smoothing=0.0, centering_coef=0.0, use_margin=False))
  train = jax.jit(make_train_step(bt_loss_fn(model, loss_cfg), tx, schedule), donate_argnums=0)
  holder = {"state": TrainState(step=jnp.zeros((), jnp.int32), params=full,
                                opt_state=tx.init(full), rng=jax.random.PRNGKey(1))}

  def step(batch):
    holder["state"], metrics = train(holder["state"], {k: jnp.asarray(v) for k, v in batch.items()})
    return metrics["loss"]
  step.state = lambda: holder["state"]
  return step


def torch_model(cfg, params, head=None):
  """(run(ids, mask) -> loss, torch) for transformers' LlamaForSequenceClassification with
  `params` (+ `head`, else a zero head) and AdamW: the BT step on chosen rows then rejected rows;
  None without torch."""
  try:
    import torch
    import transformers
  except ImportError:
    return None
  d = hf_ckpt.config_to_hf(cfg)
  for k in ("architectures", "model_type", "torch_dtype", "pad_token_id"):
    d.pop(k, None)
  config = transformers.LlamaConfig(**d, num_labels=1, pad_token_id=0)
  with torch.device("meta"):
    model = transformers.LlamaForSequenceClassification(config)
  sd = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in
        hf_ckpt.hf_state_dict_from_params(params, cfg).items() if k != "lm_head.weight"}
  kernel = (np.zeros((cfg.hidden_size, 1), np.float32) if head is None
            else np.array(head["Dense_0"]["kernel"], np.float32))
  sd["score.weight"] = torch.from_numpy(kernel.T.copy())
  model.load_state_dict(sd, strict=False, assign=True)
  model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
  model = model.float().train()
  for m in model.modules():  # match rmjax: no dropout
    if isinstance(m, torch.nn.Dropout):
      m.p = 0.0
  opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)

  def run(ids, mask):
    ids, mask = torch.from_numpy(np.asarray(ids)).long(), torch.from_numpy(np.asarray(mask)).long()
    n = ids.shape[0] // 2
    opt.zero_grad(set_to_none=True)
    r = model(input_ids=ids, attention_mask=mask).logits[:, 0]
    loss = -torch.nn.functional.logsigmoid(r[:n] - r[n:]).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.detach()
  return run, torch


def torch_environ() -> dict:
  """The torch arm's environment: PyTorch as its users run it, without rmjax's glibc tunable
  (rmjax/launch.py); TORCH_TUNED=1 keeps the tunable for the torch arm too."""
  env = dict(os.environ)
  if not env.get("TORCH_TUNED"):
    env.pop("GLIBC_TUNABLES", None)
    env["RMJAX_NO_REEXEC"] = "1"
  return env


def torch_run(cfg, params, head, batch):
  """(run() -> loss, thread count) for the torch arm on `batch`, or None without torch."""
  made = torch_model(cfg, params, head)
  if made is None:
    return None
  run, torch = made
  ids = np.concatenate([batch["chosen_ids"], batch["rejected_ids"]])
  mask = np.concatenate([batch["chosen_mask"], batch["rejected_mask"]])
  return (lambda: run(ids, mask)), torch.get_num_threads()


def main(argv=None):
  args = parse_args(argv)
  dtype = DTYPES[args.dtype]
  cfg, params = load_pretrained(args.preset)
  params = jax.device_get(params)
  cfg = cfg.replace(dtype=dtype, remat=args.remat)
  rng = np.random.default_rng(0)
  p, t = args.pairs, args.seq
  batch = {"chosen_ids": rng.integers(3, cfg.vocab_size, (p, t)).astype(np.int32),
           "rejected_ids": rng.integers(3, cfg.vocab_size, (p, t)).astype(np.int32),
           "chosen_mask": np.ones((p, t), np.int32), "rejected_mask": np.ones((p, t), np.int32),
           "margin": np.zeros(p, np.float32), "weight": np.ones(p, np.float32)}
  tokens = 2 * p * t
  fwd = _common.llama_forward_flops(cfg, 2 * p, t) - 2 * 2 * p * t * cfg.hidden_size * cfg.vocab_size
  flops = 3 * fwd  # forward + backward (no LM head in a reward model)
  if args.torch_only:
    run, threads = torch_run(cfg, params, None, batch)
    first = _common.time_fn(run, warmup=0, iters=1, sync=None)["median_s"]
    tt = _common.time_fn(run, warmup=args.warmup, iters=args.iters, sync=None)
    print(json.dumps({**tt, "first_call_s": first, "threads": threads,
                      "peak_rss_mib": _common.peak_rss_mib()}))
    return None
  peak = _common.matmul_peak_gflops(dtype=dtype)

  step = rmjax_step_fn(cfg, params)
  run_rmjax = lambda: step(batch)  # noqa: E731
  first = _common.time_fn(run_rmjax, warmup=0, iters=1)["median_s"]
  jt = _common.time_fn(run_rmjax, warmup=args.warmup, iters=args.iters)
  result = {
      "benchmark": "train_step",
      "config": {"preset": args.preset, "pairs": p, "seq": t, "sequences": 2 * p, "dtype": dtype,
                 "remat": args.remat, "attention": cfg.attention, "iters": args.iters,
                 "params": cfg.num_params, "gflops_per_step": round(flops / 1e9, 1)},
      "env": _common.environment(),
      "matmul_peak_gflops": round(peak, 1),
      "rmjax": {"tokens_per_s": round(tokens / jt["median_s"], 1), "step_s": round(jt["median_s"], 4),
                "times_s": jt["times_s"], "first_call_s": round(first, 2),
                "mfu": round(flops / jt["median_s"] / 1e9 / peak, 4),
                "peak_rss_mib": round(_common.peak_rss_mib(), 1)},
  }
  child = None if args.no_torch else subprocess.run(
      [sys.executable, "-m", "experiments.benchmarks.train_step", "--torch-only",
       "--preset", args.preset, "--pairs", str(p), "--seq", str(t), "--dtype", args.dtype,
       "--iters", str(args.iters), "--warmup", str(args.warmup)],
      capture_output=True, text=True, check=False, env=torch_environ())
  if child is not None and child.returncode == 0:
    tt = json.loads(child.stdout.strip().splitlines()[-1])
    result["torch"] = {"tokens_per_s": round(tokens / tt["median_s"], 1),
                       "step_s": round(tt["median_s"], 4), "times_s": tt["times_s"],
                       "first_call_s": round(tt["first_call_s"], 2),
                       "mfu": round(flops / tt["median_s"] / 1e9 / peak, 4),
                       "threads": tt["threads"], "peak_rss_mib": round(tt["peak_rss_mib"], 1),
                       "glibc_tunables": torch_environ().get("GLIBC_TUNABLES", "")}
    result["ratio_rmjax_over_torch"] = round(tt["median_s"] / jt["median_s"], 3)
  _common.emit(result)
  return result


if __name__ == "__main__":
  main()
