"""Ensemble spread on real data: K heads on frozen SmolLM2-135M embeddings of hh-rlhf pairs.

Members differ by head-init seed (bootstrap 'none') or by seed + Poisson bootstrap of the data.
Reports accuracy, mean spread (std over members of the per-member margin) on held-out ID pairs
vs OOD pairs (LLMBar, RM-Bench), and the AUROC of that spread for predicting a wrong ordering.

  HF_HUB_OFFLINE=1 python -m experiments.ensemble_hh --n_train 500 --n_eval 200 --n_ood 150 \
      --max_length 192 --out /tmp/ensemble_hh.json

CPU note: the backbone pass is the cost (embeddings cached in --cache_dir); head training is
seconds. Prints one JSON object last.
"""

import argparse
import json
import sys
import time

import numpy as np

from experiments import data_shared


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--spec", default="smollm2-135m")
  ap.add_argument("--n_train", type=int, default=500)
  ap.add_argument("--n_eval", type=int, default=200)
  ap.add_argument("--n_ood", type=int, default=150)
  ap.add_argument("--max_length", type=int, default=192)
  ap.add_argument("--members", type=int, default=5)
  ap.add_argument("--steps", type=int, default=400)
  ap.add_argument("--lr", type=float, default=3e-3)
  ap.add_argument("--batch_size", type=int, default=8)
  ap.add_argument("--cache_dir", default="/tmp/rmjax_ensemble_hh_cache")
  ap.add_argument("--out", default="")
  a = ap.parse_args()
  try:
    train, evals, stats = data_shared.hh_rlhf_split()
    ood = data_shared.ood_sets()
  except data_shared.SharedDataMissing as e:
    print(e)
    return 0
  from rmjax import checkpoints
  from rmjax.data.batching import tokenize_pairs
  from rmjax.data.tokenize import ChatEncoder
  from rmjax.eval.uncertainty import uncertainty_report
  from rmjax.inference import embed as emb
  from rmjax.train import head_fit as ec
  from rmjax.tasks.ensemble import bootstrap_weights

  rng = np.random.default_rng(0)
  pick = lambda ex, n: [ex[i] for i in sorted(rng.choice(len(ex), min(n, len(ex)), replace=False))]
  sets = {"train": pick(train, a.n_train), "hh_eval": pick(evals, a.n_eval)}
  for name, (ex, _) in ood.items():
    sets[name] = pick(ex, a.n_ood)
  t0 = time.perf_counter()
  cfg, params = checkpoints.load_pretrained(a.spec)
  tok = checkpoints.load_tokenizer(a.spec)
  enc = ChatEncoder(tok, a.max_length)
  settings = {"spec": a.spec, "max_length": a.max_length, "params": emb.params_fingerprint(params)}
  embs = {}
  for name, ex in sets.items():
    tokd, _ = tokenize_pairs(ex, enc, on_overlong="truncate")
    rows = {side: [list(s) for s in getattr(tokd, side)] for side in ("chosen", "rejected")}
    embs[name] = emb.cached(
        a.cache_dir, name, rows["chosen"] + rows["rejected"], settings,
        lambda rows=rows, tokd=tokd: {side: emb.pooled_features(
            cfg, params, rows[side], pad_id=tokd.pad_id, batch_size=a.batch_size, progress=True)
            for side in ("chosen", "rejected")})
  t_embed = time.perf_counter() - t0
  result = {"config": vars(a), "embed_s": round(t_embed, 1),
            "sizes": {k: len(v) for k, v in sets.items()}, "runs": {}}
  for boot_kind in ("none", "poisson"):
    boot = None if boot_kind == "none" else bootstrap_weights(len(sets["train"]), a.members, boot_kind, 0)
    t0 = time.perf_counter()
    head, hist = ec.train_heads(embs["train"]["chosen"], embs["train"]["rejected"], a.members,
                                steps=a.steps, lr=a.lr, batch_size=256, seed=0, boot=boot)
    run = {"head_train_s": round(time.perf_counter() - t0, 2), "final_loss": float(hist[-1])}
    for name in sets:
      mc = np.asarray(ec.head_scores(head, embs[name]["chosen"]))
      mr = np.asarray(ec.head_scores(head, embs[name]["rejected"]))
      rep = uncertainty_report(mc, mr)
      run[name] = {k: rep[k] for k in ("n", "accuracy", "member_accuracy", "std_mean", "std_median",
                                       "auroc_std_wrong", "ece", "accuracy_certain_half",
                                       "accuracy_uncertain_half")}
    id_std = run["hh_eval"]["std_mean"]
    run["ood_over_id_std"] = {n: run[n]["std_mean"] / id_std for n in ood}
    result["runs"][f"bootstrap_{boot_kind}"] = run
  if a.out:
    with open(a.out, "w") as f:
      json.dump(result, f, indent=2)
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
