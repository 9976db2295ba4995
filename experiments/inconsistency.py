"""E-a: reward-model inconsistency across seeds and datasets (Banerjee & Gopalan), on the cache.

Protocol (../shared/EXPERIMENTS.md E-a, as run; changes are listed in experiments/RESULTS.md):
for each of 4 datasets (`experiments.real_sets`: hh harmless, hh helpful, AlpacaEval GPT-4,
Auto-J; 800 train pairs each) and each head (a 576 -> 256 -> 1 MLP with dropout 0.1, and the
convex linear control), K = 10 members are trained on frozen SmolLM2-135M last-token features
(the shared feature cache) in two constructions: seed only (init, minibatch order, dropout) and
Poisson bootstrap + seed; a third, "long", repeats seed-only at 40 epochs to show whether the
disagreement shrinks with training (it must, for the convex linear head). The number of steps is chosen per dataset and head on a 10% split of
the training pairs (3 seeds, mean validation loss), never on an evaluation set. Every member
scores its dataset's 150 held-out pairs (ID) and the OOD probe: LLMBar 999 + PandaLM 887 +
RM-Bench 570 = 2,456 pairs.

  python -m experiments.inconsistency --cache runs/features --out runs/ea           # full
  RMJAX_SMOKE=1 python -m experiments.inconsistency --cache /tmp/f --out /tmp/ea      # smoke:
      24 pairs per set on the random `tiny` backbone (checks the plumbing, not the claim)

Stage 1 (train + score) writes OUT/members.npz (skipped when present: rerun to redo the
analysis only); stage 2 writes OUT/inconsistency.json, .md and .png and prints one JSON last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from experiments import real_sets  # noqa: E402

K = 10
HEADS = {"mlp": dict(hidden=256, dropout=0.1, lr=1e-3), "linear": dict(hidden=0, dropout=0.0, lr=1e-3)}
CONSTRUCTIONS = ("seed", "boot", "long")  # long: seed only, trained MAX_EPOCHS (convergence check)
BATCH, MAX_EPOCHS = 64, 40


def smoke() -> bool:
  return os.environ.get("RMJAX_SMOKE", "0") == "1"


def load_features(cache_dir: str, limit: int = 0, spec: str = "smollm2-135m",
                  max_length: int = 256) -> dict:
  """{'train'|'eval'|'ood': {set: {'c', 'r' [N, D], 'len_c', 'len_r' (chars), 'subset'}}};
  rows missing from the cache are extracted first."""
  from rmjax.inference.feature_cache import FeatureCache
  cache = FeatureCache(cache_dir, spec, max_length)
  sets = real_sets.load_sets()
  out = {}
  for part in ("train", "eval", "ood"):
    out[part] = {}
    for name, ex in sets[part].items():
      ex = ex[:limit] if limit else ex
      f = cache.pairs(ex, features=("last",))
      out[part][name] = {"c": f["chosen"]["last"], "r": f["rejected"]["last"],
                         "len_c": np.array([len(e.chosen) for e in ex]),
                         "len_r": np.array([len(e.rejected) for e in ex]),
                         "subset": np.array([e.subset or name for e in ex]),
                         "truncated": f["truncated"]}
  return out


def choose_steps(tr: dict, head: dict, seed: int = 0, folds: int = 0) -> dict:
  """Steps for the full training set, chosen by the mean validation BT loss of 3 members
  (seeds 900-902) trained on part of it: `folds=0` one 10% validation split (E-a's rule), `folds=k`
  the mean curve over k folds (E-e: one 10% split of ~500 examples is too noisy: it chose 4
  steps, 0.01 nats below the untrained loss, on one of E-e's splits)."""
  from rmjax.train.head_fit import train_member_heads
  n = len(tr["c"])
  perm = np.random.default_rng(seed).permutation(n)
  if folds:
    parts = np.array_split(perm, folds)
    fit_n = n - max(len(p) for p in parts)
    splits = [(np.concatenate([p for g, p in enumerate(parts) if g != f])[:fit_n], va)
              for f, va in enumerate(parts)]
  else:
    splits = [(perm[n // 10:], perm[:n // 10])]
    fit_n = n - n // 10
  steps_per_epoch = max(1, fit_n // BATCH)
  curves = []
  for fit, va in splits:
    _, hist = train_member_heads(tr["c"][fit], tr["r"][fit], [900, 901, 902],
                                 steps=MAX_EPOCHS * steps_per_epoch, batch_size=BATCH,
                                 val=(tr["c"][va], tr["r"][va]), **head)
    curves.append(hist["val"].mean(1))
  curve = np.mean(curves, axis=0)
  best = int(np.argmin(curve)) + 1
  epochs = best / steps_per_epoch
  out = {"epochs": round(epochs, 2), "steps": max(1, round(epochs * n / BATCH)),
         "val_loss": round(float(curve[best - 1]), 4), "val_loss_first": round(float(curve[0]), 4)}
  return dict(out, rule=f"{folds}-fold") if folds else out


def train_all(feats: dict, out_dir: str) -> str:
  """Stage 1: every member of every dataset x head x construction, scores on ID eval + probe."""
  from rmjax.train.head_fit import member_scores, train_member_heads
  path = os.path.join(out_dir, "members.npz")
  if os.path.exists(path):
    return path
  arrays, info = {}, {}
  score_sets = {**{f"eval/{k}": v for k, v in feats["eval"].items()},
                **{f"ood/{k}": v for k, v in feats["ood"].items()}}
  for d in real_sets.ID_SETS:
    tr = feats["train"][d]
    n = len(tr["c"])
    for hname, head in HEADS.items():
      t0 = time.perf_counter()
      plan = choose_steps(tr, head)
      for cons in CONSTRUCTIONS:
        seeds = [1000 * (cons == "boot") + s for s in range(K)]
        boot = (np.random.default_rng(77).poisson(1.0, (K, n)).astype(np.float32)
                if cons == "boot" else None)
        steps = MAX_EPOCHS * n // BATCH if cons == "long" else plan["steps"]
        heads, hist = train_member_heads(tr["c"], tr["r"], seeds, steps=steps,
                                         batch_size=BATCH, boot=boot, **head)
        for sname, s in score_sets.items():
          arrays[f"{d}|{hname}|{cons}|{sname}|c"] = member_scores(heads, s["c"])
          arrays[f"{d}|{hname}|{cons}|{sname}|r"] = member_scores(heads, s["r"])
        arrays[f"{d}|{hname}|{cons}|train_loss"] = hist["train"][-max(1, steps // 10):].mean(0)
      info[f"{d}|{hname}"] = dict(plan, seconds=round(time.perf_counter() - t0, 1), n_train=n)
      print(f"[inconsistency] {d} {hname}: {info[f'{d}|{hname}']}", flush=True)
  for sname, s in score_sets.items():
    for k in ("len_c", "len_r", "subset", "truncated"):
      arrays[f"meta|{sname}|{k}"] = s[k]
  arrays["info"] = np.array(json.dumps(info))
  os.makedirs(out_dir, exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)
  return path


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--cache", default="runs/features")
  p.add_argument("--out", default="runs/ea")
  p.add_argument("--report", default=None, help="where the report files go (default: --out)")
  p.add_argument("--n_boot", type=int, default=2000)
  p.add_argument("--spec", default="smollm2-135m", help="backbone of the feature cache")
  p.add_argument("--max_length", type=int, default=256)
  a = p.parse_args(argv)
  limit = 24 if smoke() else 0
  if smoke():  # the plumbing on a random tiny backbone: seconds, no real features
    a.spec, a.max_length = "tiny", 128
  t0 = time.perf_counter()
  path = os.path.join(a.out, "members.npz")
  if not os.path.exists(path):
    feats = load_features(a.cache, limit, a.spec, a.max_length)
    train_all(feats, a.out)
  from experiments import inconsistency_stats
  result = inconsistency_stats.analyse(path, n_boot=200 if smoke() else a.n_boot)
  result["seconds"] = round(time.perf_counter() - t0, 1)
  result["size"] = "smoke" if smoke() else "full"
  inconsistency_stats.write(result, a.report or a.out)
  print(json.dumps(result["summary"]))
  return result


if __name__ == "__main__":
  main()
  sys.exit(0)
