"""Rollout throughput (KV-cache sampler vs transformers generate) and a PPO iteration's time split.

1. Rollout: rmjax's jitted KV-cache sampler (`rmjax.inference.generate.generate`, the one PPO calls
   through `rmjax.rl.rollout.generate_responses`) vs transformers `LlamaForCausalLM.generate`
   (its dynamic KV cache), on the same weights (rmjax init, converted with `rmjax.checkpoints.hf`)
   and the same left-padded batch of random prompts (lengths in [P/2, P]). Greedy, EOS stopping
   off on both sides, exactly N new tokens per row, so both do identical work; the generated
   tokens are compared (random weights have near-ties, so a float difference can flip one argmax
   and the rows diverge after it: `prefix_agreement` is the fraction before the first mismatch).
   New tokens/s = B * N / seconds per generate call; compile time is excluded (first call
   reported apart).
2. PPO iteration: `rmjax.tasks.ppo.Trainer` built from `configs/ppo.py:smollm2` with the model
   set to `--preset`, synthetic prompts, gold reward, batch/lengths from the flags, run as
   `ppo.run` runs it: `experience` then `update`. The phases are timed by wrapping, in this
   process only, the module functions `Trainer.experience` calls (no library change):
     rollout  `rollout.generate_responses` (sampling, tokens back on host)
     scoring  the rest of `experience`: `score_sequences` (old / ref log-probs + values, one
              jit), the reward function, `make_advantages` (shaped rewards, GAE), host glue
     update   the jitted `Trainer.update` (epochs x minibatches of PPO steps)
   The first iteration (compiles) is reported apart; the others give mean seconds per phase and
   its fraction of the iteration. Prints one JSON object last.

  python -m experiments.benchmarks.rollout                     # smollm2-135m-config, 8 x 64 + 64
  python -m experiments.benchmarks.rollout --preset tiny --ppo-iters 2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments.benchmarks import _common  # noqa: E402
from experiments.benchmarks.forward import DTYPES, torch_model  # noqa: E402
from rmjax.checkpoints.presets import load_pretrained  # noqa: E402
from rmjax.rl import rollout as rollout_lib  # noqa: E402
from rmjax.inference.generate import SamplingConfig, generate, left_pad  # noqa: E402


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--preset", default="smollm2-135m-config")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--prompt", type=int, default=64, help="left-padded prompt length P")
  p.add_argument("--new-tokens", type=int, default=64, help="new tokens N per row")
  p.add_argument("--iters", type=int, default=3, help="timed generate calls (median reported)")
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
  p.add_argument("--ppo-iters", type=int, default=3, help="timed PPO iterations after the first")
  p.add_argument("--minibatches", type=int, default=2)
  p.add_argument("--epochs", type=int, default=2)
  p.add_argument("--no-torch", action="store_true", help="skip the transformers baseline")
  p.add_argument("--no-ppo", action="store_true", help="skip the PPO iteration split")
  return p.parse_args(argv)


# ---------------------------------------------------------------- rollout throughput
def random_prompts(vocab: int, b: int, t: int, pad_id: int, seed: int = 0):
  """Left-padded random prompts (ids, mask) [B, T]; row lengths drawn from [T/2, T]."""
  rng = np.random.default_rng(seed)
  rows = [rng.integers(3, vocab, int(n)).tolist() for n in rng.integers(max(t // 2, 1), t + 1, b)]
  return left_pad(rows, pad_id, length=t)


def rmjax_rollout(cfg, params, ids, mask, n, args):
  """Time greedy `generate` (prefill + while-loop decode) for n tokens: (timing, first, tokens)."""
  sampling = SamplingConfig(max_new_tokens=n, temperature=0.0, eos_ids=(),
                            pad_id=cfg.pad_token_id or 0)
  key = jax.random.PRNGKey(0)
  run = lambda: generate(params, cfg, ids, mask, key, sampling)  # noqa: E731
  first = _common.time_fn(run, warmup=0, iters=1)["median_s"]
  t = _common.time_fn(run, warmup=args.warmup, iters=args.iters)
  out = jax.device_get(run())
  assert int(out["lengths"].min()) == n, "EOS stopping should be off"
  return t, first, np.asarray(out["tokens"])


def torch_rollout(model, device, ids, mask, n, pad_id, args):
  """Time greedy `LlamaForCausalLM.generate`, EOS stopping off: (timing, tokens [B, N])."""
  import torch
  import transformers
  model.generation_config.eos_token_id = None  # unset values fall back to it: no EOS anywhere
  gen = transformers.GenerationConfig(max_new_tokens=n, do_sample=False, use_cache=True,
                                      pad_token_id=pad_id, eos_token_id=None)
  tids = torch.from_numpy(ids.astype(np.int64)).to(device)
  tmask = torch.from_numpy(mask.astype(np.int64)).to(device)
  sync = (lambda _: torch.cuda.synchronize()) if device == "cuda" else None

  def run():
    with torch.inference_mode():
      return model.generate(input_ids=tids, attention_mask=tmask, generation_config=gen)
  t = _common.time_fn(run, warmup=args.warmup, iters=args.iters, sync=sync)
  out = run()[:, ids.shape[1]:].cpu().numpy()
  assert out.shape[1] == n, f"torch generated {out.shape[1]} tokens, expected {n}"
  return t, out


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
  """Token-wise agreement of two [B, N] outputs, and the mean fraction before a row diverges."""
  same = a == b
  prefix = np.where(same.all(-1), a.shape[1], np.argmin(same, axis=-1)) / a.shape[1]
  return {"token_agreement": round(float(same.mean()), 4),
          "prefix_agreement": round(float(prefix.mean()), 4),
          "rows_identical": round(float(same.all(-1).mean()), 4)}


# ---------------------------------------------------------------- PPO iteration split
class PhaseClock:
  """Wall seconds per phase of one PPO iteration, from wrapped module functions.

  `patch()` replaces `rollout.generate_responses`, `score_sequences`, `make_advantages` and the
  setup's reward function with versions that block on their output and add their time to the
  named phase, then restores them. Blocking costs nothing here: `experience` reads each result
  (on host, or as the next jit's input) right after the call anyway.
  """
  NAMES = ("generate_responses", "score_sequences", "make_advantages")

  def __init__(self):
    self.times: dict = {}
    self.calls: dict = {}

  def _wrap(self, name, fn):
    def timed(*a, **kw):
      t0 = time.perf_counter()
      out = _common.block(fn(*a, **kw))
      self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0
      self.calls[name] = self.calls.get(name, 0) + 1
      return out
    return timed

  @contextlib.contextmanager
  def patch(self, setup):
    saved = {n: getattr(rollout_lib, n) for n in self.NAMES}
    reward_fn = setup.reward_fn
    try:
      for n, fn in saved.items():
        setattr(rollout_lib, n, self._wrap(n, fn))
      setup.reward_fn = self._wrap("reward_fn", reward_fn)
      yield self
    finally:
      for n, fn in saved.items():
        setattr(rollout_lib, n, fn)
      setup.reward_fn = reward_fn

  def reset(self):
    self.times, self.calls = {}, {}


def ppo_config(args, dtype):
  """`configs/ppo.py:smollm2` with the preset, batch and lengths of this benchmark."""
  from configs import ppo as ppo_configs
  c = ppo_configs.get_config("smollm2")
  c.model.spec = c.model.tokenizer = args.preset
  c.model.dtype = dtype
  c.ppo.prompts = f"synthetic:{max(4 * args.batch, 64)}"
  c.ppo.eval_prompts = ""
  c.ppo.rollout_batch, c.ppo.prompt_len = args.batch, args.prompt
  c.ppo.max_new_tokens = args.new_tokens
  c.ppo.minibatches, c.ppo.epochs = args.minibatches, args.epochs
  c.reward.kind = "gold"
  return c


def ppo_iteration(trainer, state, prompts, clock):
  """One iteration exactly as `ppo.run` does it; returns (state, phase seconds, response len)."""
  clock.reset()
  t0 = time.perf_counter()
  records = next(prompts)
  rng = jax.random.fold_in(state.rng, 7)
  batch, metrics, norm, _ = trainer.experience(state, records, rng)
  t1 = time.perf_counter()
  state = state.replace(norm={k: jax.device_put(jnp.float32(v), trainer.replicated)
                              for k, v in norm.items()})
  state, um = _common.block(trainer.update(state, batch))
  t2 = time.perf_counter()
  missing = [n for n in (*PhaseClock.NAMES, "reward_fn") if clock.calls.get(n) != 1]
  if missing:
    raise RuntimeError(f"Trainer.experience no longer calls {missing} once per iteration: "
                       "update PhaseClock to the new code path")
  ct = clock.times
  rollout_s = ct["generate_responses"]
  scoring_s = (t1 - t0) - rollout_s
  phases = {"rollout_s": rollout_s, "scoring_s": scoring_s, "update_s": t2 - t1,
            "scoring_forward_s": ct["score_sequences"], "scoring_reward_fn_s": ct["reward_fn"],
            "scoring_advantages_s": ct["make_advantages"],
            "scoring_host_other_s": scoring_s - ct["score_sequences"] - ct["reward_fn"]
            - ct["make_advantages"]}
  assert np.isfinite(float(um["loss"])), "non-finite PPO loss"
  return state, phases, metrics["response_length"]


def ppo_split(args, dtype):
  """First (compiling) iteration and the mean split of `args.ppo_iters` more."""
  from rmjax import sharding as shd
  from rmjax.tasks import ppo, ppo_setup
  c = ppo_config(args, dtype)
  ppo_setup.check(c)
  mesh = shd.make_mesh(tuple(c.mesh.shape))
  with tempfile.TemporaryDirectory() as workdir:
    setup = ppo_setup.build(c, workdir, mesh)
  trainer = ppo.Trainer(c, setup, mesh)
  state = trainer.init_state(setup.policy_params, setup.value_params, jax.random.PRNGKey(1))
  prompts = ppo.PromptIterator(setup.train_prompts, c.ppo.rollout_batch, c.seed)
  clock = PhaseClock()
  rows, lengths = [], []
  with clock.patch(setup):
    state, first, _ = ppo_iteration(trainer, state, prompts, clock)
    for _ in range(max(args.ppo_iters, 1)):
      state, phases, length = ppo_iteration(trainer, state, prompts, clock)
      rows.append(phases)
      lengths.append(length)
  mean = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
  total = mean["rollout_s"] + mean["scoring_s"] + mean["update_s"]
  pc = c.ppo
  return {
      "config": {"batch": pc.rollout_batch, "prompt_len": pc.prompt_len,
                 "max_new_tokens": pc.max_new_tokens, "temperature": pc.temperature,
                 "top_p": pc.top_p, "minibatches": pc.minibatches, "epochs": pc.epochs,
                 "reward": c.reward.kind, "timed_iters": len(rows),
                 "mean_response_length": round(float(np.mean(lengths)), 2)},
      "iteration_s": round(total, 4),
      "phases_s": {k: round(v, 4) for k, v in mean.items()},
      "fractions": {k[:-2]: round(mean[k] / total, 4) for k in ("rollout_s", "scoring_s", "update_s")},
      "iteration_times_s": [round(r["rollout_s"] + r["scoring_s"] + r["update_s"], 4) for r in rows],
      "first_iteration_s": {k: round(v, 3) for k, v in first.items()
                            if k in ("rollout_s", "scoring_s", "update_s")},
      "rollout_tokens_per_s": round(pc.rollout_batch * float(np.mean(lengths)) / mean["rollout_s"], 1),
      "peak_rss_mib": round(_common.peak_rss_mib(), 1),
      "device_peak_mib": _common.jax_device_peak_mib(),
  }


# ---------------------------------------------------------------- main
def main(argv=None):
  args = parse_args(argv)
  dtype = DTYPES[args.dtype]
  b, t, n = args.batch, args.prompt, args.new_tokens
  cfg, params = load_pretrained(args.preset, dtype=dtype)
  cfg = cfg.replace(dtype=dtype)
  pad_id = cfg.pad_token_id or 0
  ids, mask = random_prompts(cfg.vocab_size, b, t, pad_id)
  tokens = b * n

  jt, first, jtok = rmjax_rollout(cfg, params, ids, mask, n, args)
  result = {
      "benchmark": "rollout",
      "config": {"preset": args.preset, "batch": b, "prompt_len": t, "new_tokens": n,
                 "prompt_tokens": int(mask.sum()), "dtype": dtype, "greedy": True,
                 "iters": args.iters, "warmup": args.warmup, "params": cfg.num_params},
      "env": _common.environment(),
      "rmjax": {"new_tokens_per_s": round(tokens / jt["median_s"], 1),
                "generate_s": round(jt["median_s"], 4), "times_s": jt["times_s"],
                "first_call_s": round(first, 2),
                "peak_rss_mib": round(_common.peak_rss_mib(), 1),
                "device_peak_mib": _common.jax_device_peak_mib()},
  }
  model, device = (None, None) if args.no_torch else torch_model(cfg, params, dtype)
  if model is not None:
    import torch
    tt, ttok = torch_rollout(model, device, ids, mask, n, pad_id, args)
    result["torch"] = {"new_tokens_per_s": round(tokens / tt["median_s"], 1),
                       "generate_s": round(tt["median_s"], 4), "times_s": tt["times_s"],
                       "threads": torch.get_num_threads(),
                       "peak_rss_mib": round(_common.peak_rss_mib(), 1)}
    result["ratio_rmjax_over_torch"] = round(tt["median_s"] / jt["median_s"], 3)
    result["agreement"] = agreement(jtok, ttok)
    del model
  del params
  if not args.no_ppo:
    result["ppo_iteration"] = ppo_split(args, dtype)
  _common.emit(result)
  return result


if __name__ == "__main__":
  main()
