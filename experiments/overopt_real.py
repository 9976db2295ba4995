"""E-b: best-of-n over-optimisation on SmolLM2-135M samples against a credible real-data gold.

Stages (each resumable in --workdir; rerun the same command to continue):
  prompts   label prompts (2 samples each: the proxy's gold-labelled pairs) and BoN prompts (a
            pool of --pool samples each), from held-out hh-rlhf first turns (rows E-a/E-c never
            use) and the held-out AlpacaEval instructions (never in the gold's training pairs).
  sample    SmolLM2-135M-Instruct at T=1 (top-p 1), at most --max_new_tokens new tokens,
            batches of --batch_size, appended to samples.jsonl a chunk at a time.
  features  the frozen-feature cache (`rmjax.inference.feature_cache`, the one E-a/E-c read)
            gains every (prompt, sample) row.
Then `experiments/overopt_real_stats.py` fits the gold and the proxies and draws the curves.

  python -m experiments.overopt_real --workdir runs/eb --cache runs/features
  RMJAX_SMOKE=1 python -m experiments.overopt_real --workdir /tmp/eb --cache /tmp/f   # plumbing:
      8 label + 4 BoN prompts, pool 8, 8 new tokens, the random `tiny` backbone
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from experiments import real_sets  # noqa: E402

N_LABEL, N_BON, POOL = 800, 40, 64


def _first_turn(e) -> str | None:
  """The first user turn of a pair's prompt, if it is a short single question."""
  turns = [c for r, c in e.prompt if r == "user"]
  return turns[0].strip() if turns and 0 < len(turns[0]) <= 400 else None


def _h(text: str) -> str:
  return hashlib.sha1(text.encode()).hexdigest()


def select_prompts(n_label: int = N_LABEL, n_bon: int = N_BON) -> dict:
  """{'label': [str], 'bon': [str]}: disjoint, deterministic (sha1 order), half hh half AlpacaEval
  for BoN; label prompts are the rest of the held-out pool (hh first turns + AlpacaEval)."""
  sets = real_sets.load_sets()
  used = set()
  for part in ("train", "eval"):
    for name in ("hh_harmless", "hh_helpful"):
      used |= {_first_turn(e) for e in sets[part][name]}
  hh = set()
  for name in ("hh_harmless", "hh_helpful"):
    ex, _ = real_sets.load(name)  # the parse load_sets() already made (cached per process)
    hh |= {t for t in map(_first_turn, ex) if t and t not in used}
  train_instr = {e.prompt[0][1].strip() for e in sets["train"]["alpaca_eval"]}
  alpaca = {e.prompt[0][1].strip() for e in sets["eval"]["alpaca_eval"]} - train_instr
  # every AlpacaEval instruction of the held-out side, not only those drawn into the eval pairs
  ex, _ = real_sets.load("alpaca_eval")
  alpaca |= {e.prompt[0][1].strip() for e in ex
             if real_sets.prompt_hash_fraction(e, real_sets.SEED) < 0.2} - train_instr
  hh, alpaca = sorted(hh, key=_h), sorted(alpaca, key=_h)
  bon = hh[:n_bon // 2] + alpaca[:n_bon - n_bon // 2]
  rest = hh[n_bon // 2:] + alpaca[n_bon - n_bon // 2:]
  label = sorted(rest, key=_h)[:n_label]
  return {"label": label, "bon": bon, "pool_sizes": {"hh": len(hh), "alpaca_eval": len(alpaca)}}


def smoke() -> bool:
  return os.environ.get("RMJAX_SMOKE", "0") == "1"


def sample(workdir: str, prompts: dict, pool: int, max_new_tokens: int, batch_size: int,
           seed: int = 0, chunk: int = 256, spec: str = "smollm2-135m") -> list:
  """Rows {'kind', 'prompt', 'i' (prompt index), 'j' (sample index), 'text', 'finished',
  'n_tokens'} in samples.jsonl; resumes after the last complete chunk."""
  import jax
  from rmjax import checkpoints
  from rmjax.inference.generate import SamplingConfig, generate_text
  jobs = ([("label", i, j, p) for i, p in enumerate(prompts["label"]) for j in range(2)]
          + [("bon", i, j, p) for i, p in enumerate(prompts["bon"]) for j in range(pool)])
  path = os.path.join(workdir, "samples.jsonl")
  done = []
  if os.path.exists(path):
    with open(path) as f:
      done = [json.loads(line) for line in f if line.strip()]
  done = done[:len(done) - len(done) % chunk] if len(done) < len(jobs) else done
  with open(path, "w") as f:  # drop a partial chunk
    f.writelines(json.dumps(r) + "\n" for r in done)
  if len(done) >= len(jobs):
    return done
  cfg, params = checkpoints.load_pretrained(spec)
  tok = checkpoints.load_tokenizer(spec)
  sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0)
  t0 = time.perf_counter()
  for c in range(len(done) // chunk, -(-len(jobs) // chunk)):
    part = jobs[c * chunk:(c + 1) * chunk]
    outs = generate_text(params, cfg, tok, [p for *_, p in part], sampling,
                         jax.random.fold_in(jax.random.PRNGKey(seed), c), batch_size=batch_size,
                         progress=False)
    rows = [{"kind": k, "i": i, "j": j, "prompt": p, "text": o["text"].strip() or ".",
             "finished": o["finished"], "n_tokens": len(o["token_ids"])}
            for (k, i, j, p), o in zip(part, outs)]
    with open(path, "a") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
      f.flush()
      os.fsync(f.fileno())
    done += rows
    dt = time.perf_counter() - t0
    print(f"[sample] {len(done)}/{len(jobs)} samples, {dt:.0f} s", flush=True)
  return done


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", default="runs/eb")
  ap.add_argument("--cache", default="runs/features")
  ap.add_argument("--label_prompts", type=int, default=N_LABEL)
  ap.add_argument("--bon_prompts", type=int, default=N_BON)
  ap.add_argument("--pool", type=int, default=POOL)
  ap.add_argument("--max_new_tokens", type=int, default=48)
  ap.add_argument("--batch_size", type=int, default=32)
  ap.add_argument("--spec", default="smollm2-135m")
  ap.add_argument("--max_length", type=int, default=256)
  a = ap.parse_args(argv)
  if smoke():
    # batch 48 = every sample of the smoke in one generate call: one compiled prefill + decode
    # (batches of 8 prompts of different lengths compiled six of each: most of the smoke's time)
    a.label_prompts, a.bon_prompts, a.pool, a.max_new_tokens, a.batch_size = 8, 4, 8, 8, 48
    a.spec, a.max_length = "tiny", 128
  os.makedirs(a.workdir, exist_ok=True)
  ppath = os.path.join(a.workdir, "prompts.json")
  if not os.path.exists(ppath):
    prompts = select_prompts(a.label_prompts, a.bon_prompts)
    with open(ppath + ".tmp", "w") as f:
      json.dump(prompts, f, indent=1)
    os.replace(ppath + ".tmp", ppath)
  prompts = json.load(open(ppath))
  print(f"[prompts] label {len(prompts['label'])}, bon {len(prompts['bon'])}, "
        f"pool sizes {prompts['pool_sizes']}", flush=True)
  t0 = time.perf_counter()
  rows = sample(a.workdir, prompts, a.pool, a.max_new_tokens, a.batch_size, spec=a.spec)
  t_sample = time.perf_counter() - t0
  from rmjax.inference.feature_cache import FeatureCache
  cache = FeatureCache(a.cache, a.spec, a.max_length)
  t0 = time.perf_counter()
  got = cache.responses([(r["prompt"], r["text"]) for r in rows])
  out = {"samples": len(rows), "sample_s": round(t_sample, 1),
         "features_s": round(time.perf_counter() - t0, 1),
         "truncated_rows": int(got["truncated"].sum()),
         "unfinished_samples": sum(not r["finished"] for r in rows)}
  print(json.dumps(out))
  return out


if __name__ == "__main__":
  main()
