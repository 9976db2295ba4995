"""E-d: GRM's out-of-distribution gain over BT at equal data (ALGORITHMS.md 4.6; issue 28 item 3).

Three reward models on SmolLM2-135M, everything else equal (init, seed, data order, MLP head
d -> 1024 -> 1 with dropout 0.1, LoRA r 32 on q/k/v/o, packing, AdamW cosine, 1 epoch):
  bt      the BT task (= GRM with alpha 0: same loss and gradients, tests/test_grm.py) with the
          same MLP head and clip 5; it skips GRM's LM logits (a 49K-vocabulary log-softmax per token)
  grm     GRM-SFT, alpha 0.01, beta 0.1 (the paper's)
  frozen  the same MLP head on the frozen backbone (head-only training on cached features; the
          head is all that trains, so it gets 5 epochs at lr 1e-3, fixed before any evaluation)

Data (experiments/real_sets.py, the E-a/E-c split by prompt hash, seed 0): the first 750 train
pairs of hh-rlhf harmless and of helpful (1,500), the 150 + 150 held-out pairs of each as the ID
set (300). OOD, never trained on: LLMBar natural + adversarial (419 -> 400), RM-Bench chat +
safety concise-vs-concise (570 -> 300), PandaLM majority label, ties dropped (887 -> 300), Auto-J
pairwise, ties dropped (983 -> 200): a seeded sample, the same for every run. JudgeBench is left
out (median pair ~1,200 tokens: noise at 256).

Every set is scored by `Scorer.score_pairs` (the training truncation rule: the prompt cut once per
pair). Reported: accuracy with 95% bootstrap CIs, the length baseline per set, the paired
differences grm - bt and grm - frozen per set and pooled over OOD, the regulariser's value over
training. Each run is a normal rmjax workdir (`rmjax eval --workdir` works on it) and resumes where
it stopped; scoring is cached per run in <workdir>/<run>/scores.json.

  python -m experiments.grm_ood --workdir runs/grm_ood                          # E-d, reduced CPU run
  python -m experiments.grm_ood --workdir /tmp/ed --variant tiny --train_pairs 32 --id_pairs 16 \
      --ood llmbar:16 --steps 4                                                  # smoke
Writes <workdir>/results.json and margins.json (every run's per-pair margins, so an arm run later
can be paired with these), also under --results, and prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

RUNS = ("bt", "grm", "frozen")
DEFAULT_OOD = "llmbar:400,rm_bench:300,pandalm:300,autoj:200"
LLMBAR_KEEP = ("natural", "adversarial_")


# ------------------------------------------------------------------------------------- data

def ood_examples(name: str):
  """All pairs of one OOD set, filtered as the docstring says."""
  from experiments import real_sets
  from rmjax.data import load_source
  if name == "autoj":
    return load_source(real_sets.SPECS["autoj"])[0]
  ex, _ = load_source(real_sets.SPECS[name])
  if name == "llmbar":
    ex = [e for e in ex if (e.subset or "").startswith(LLMBAR_KEEP)]
  if name == "rm_bench":
    ex = [e for e in ex if e.subset.split("/")[0] in real_sets.RM_BENCH_DOMAINS
          and e.source.endswith("#c0r0")]
  return ex


def sample(examples, n: int, seed: int):
  if not n or n >= len(examples):
    return list(examples)
  keep = np.sort(np.random.default_rng(seed).permutation(len(examples))[:n])
  return [examples[i] for i in keep]


def build_sets(args) -> dict:
  """{'train': [...], 'id': [...], 'ood': {name: [...]}, 'sizes': {...}}."""
  from experiments import real_sets
  from rmjax.data import load_source
  half = args.train_pairs // 2
  train, held = [], []
  for name in ("hh_harmless", "hh_helpful"):
    ex, _ = load_source(real_sets.SPECS[name])
    tr, ev = real_sets.split_pairs(ex, n_train=half, n_eval=args.id_pairs // 2)
    train += tr[:half]
    held += ev[:args.id_pairs // 2]
  ood, sizes = {}, {}
  for item in [s for s in args.ood.split(",") if s]:
    name, _, n = item.partition(":")
    full = ood_examples(name)
    if not full:
      raise SystemExit(f"--ood: set {name!r} has no pairs after filtering")
    ood[name] = sample(full, int(n or 0), args.seed)
    sizes[name] = {"available": len(full), "used": len(ood[name])}
  sizes.update(train=len(train), id=len(held))
  return {"train": train, "id": held, "ood": ood, "sizes": sizes}


# ----------------------------------------------------------------------------------- configs

def make_config(args, run: str, train_path: str):
  from configs import bt as bt_config, common, grm as grm_config
  variant = args.variant
  steps = math.ceil(args.train_pairs / args.batch_size) if not args.steps else args.steps
  if run == "grm":
    c = grm_config.get_config(f"{variant},reg=sft,alpha={args.alpha}")
  else:
    c = bt_config.get_config(variant)
  common.finetune_recipe(c, rank=args.rank, lr=args.lr, max_length=args.max_length)
  if run == "frozen":  # the recipe's head on the frozen backbone: no adapters, no packing
    c.model.lora.rank = 0
    c.data.packing = False
    c.train.freeze_backbone = True
    c.optim.lr = args.frozen_lr
    steps *= args.frozen_epochs
  c.data.source, c.data.eval_source, c.data.eval_fraction = train_path, "", 0.0
  c.optim.warmup_steps = max(1, int(0.03 * steps))
  c.train.steps, c.train.batch_size = steps, args.batch_size
  c.train.eval_every = 0
  c.train.checkpoint_every = max(1, steps // 4)  # resumable, four saves a run whatever its length
  c.train.log_every = max(1, steps // 40)
  c.train.progress = False
  c.train.tensorboard = False
  c.seed = args.seed
  return c


# ------------------------------------------------------------------------------- train, score

def train(config, workdir: str) -> dict:
  """Trains (or resumes) one run; a run whose final checkpoint exists is not touched again."""
  from rmjax import tasks
  if os.path.isdir(os.path.join(workdir, "checkpoints", str(config.train.steps))):
    rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl")) if l.strip()]
    return {"seconds": None, "final": rows[-1] if rows else {}}
  t0 = time.time()
  final = tasks.get(config.task).train(config, workdir)
  return {"seconds": round(time.time() - t0, 1),
          "final": {k: v for k, v in final.items() if not isinstance(v, dict)}}


def score(workdir: str, sets: dict, max_length: int) -> dict:
  """{set: margins} for the latest checkpoint of `workdir`, cached in scores.json."""
  from rmjax import tasks
  from rmjax.checkpoints.workdir import read_config
  from rmjax.inference.scorer import Scorer
  path = os.path.join(workdir, "scores.json")
  if os.path.exists(path):
    return json.load(open(path))
  scorer = Scorer(workdir, tasks.get(read_config(workdir).task), batch_size=16,
                  max_length=max_length)
  out = {}
  for name, ex in [("id", sets["id"])] + list(sets["ood"].items()):
    c, r = scorer.score_pairs([e.prompt for e in ex], [e.chosen for e in ex],
                              [e.rejected for e in ex], progress=False)
    out[name] = (np.asarray(c["reward"], np.float64) - np.asarray(r["reward"], np.float64)).tolist()
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(out, f)
  os.replace(tmp, path)
  return out


def lm_logps(workdir: str, examples, max_length: int) -> dict:
  """The regulariser's value after training: each ID pair's summed chosen-response log-prob under
  the run's backbone and its retained LM head (GRM's L_reg reads exactly this; the frozen run's
  backbone is the base model, so its value is the starting point), cached in lm_logps.json."""
  import flax.linen as nn
  import jax
  from rmjax import lm_losses, sharding as shd, tasks
  from rmjax.checkpoints.workdir import read_config
  from rmjax.data.batching import PairBatcher, tokenize_pairs
  from rmjax.inference.scorer import Scorer
  from rmjax.tasks import grm
  path = os.path.join(workdir, "lm_logps.json")
  if os.path.exists(path):
    return json.load(open(path))
  scorer = Scorer(workdir, tasks.get(read_config(workdir).task), max_length=max_length)
  model = grm.make_model(scorer.config, scorer.cfg, keep_lm_logits=True)

  @jax.jit
  def chosen(params, batch):
    logits = model.apply({"params": params}, batch["chosen_ids"], batch["chosen_mask"])["logits"]
    return lm_losses.response_logprobs(logits, batch["chosen_ids"], batch["chosen_mask"],
                                       batch["prompt_len"])

  tok, _ = tokenize_pairs(examples, scorer.encoder, on_overlong="truncate", progress=False)
  batcher = PairBatcher(tok, 8, shuffle=False, drop_remainder=False,
                        buckets=tuple(scorer.config.data.buckets))
  values = np.full(len(examples), np.nan)
  with jax.set_mesh(scorer.mesh), nn.logical_axis_rules(shd.DEFAULT_RULES):
    for batch in batcher.eval_batches():
      real = np.asarray(batch["weight"]) > 0
      lp = np.asarray(jax.device_get(chosen(scorer.params, batch)))
      values[np.asarray(batch["index"])[real]] = lp[real]
  assert not np.isnan(values).any(), "a pair was not scored"
  out = {"chosen_logps": values.tolist()}
  with open(path + ".tmp", "w") as f:
    json.dump(out, f)
  os.replace(path + ".tmp", path)
  return out


def metric_curve(workdir: str, key: str) -> list:
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl")) if l.strip()]
  return [(r["step"], r[key]) for r in rows if key in r and "step" in r]


# ------------------------------------------------------------------------------------ report

def compare(sets: dict, margins: dict) -> dict:
  """Per set and pooled OOD: accuracy + CI per run, length baseline, paired differences."""
  from rmjax.eval import stats
  rnd = lambda d: {k: round(float(v), 4) for k, v in d.items()}
  runs = list(margins)
  out, pooled = {}, {r: [] for r in runs}
  names = ["id"] + list(sets["ood"])
  for name in names:
    ex = sets["id"] if name == "id" else sets["ood"][name]
    correct = {r: stats.pair_correct(margins[r][name]) for r in runs}
    rec = {"n": len(ex), "length_baseline": round(stats.length_baseline(
        [len(e.chosen) for e in ex], [len(e.rejected) for e in ex]), 4)}
    rec.update({r: rnd(stats.bootstrap_ci(correct[r])) for r in runs})
    rec.update(diffs(correct, rnd))
    out[name] = rec
    if name != "id":
      for r in runs:
        pooled[r].append(correct[r])
  if len(names) > 1:
    cat = {r: np.concatenate(pooled[r]) for r in runs}
    lb = np.concatenate([stats.pair_correct([len(e.chosen) - len(e.rejected) for e in ex])
                         for ex in sets["ood"].values()])
    out["ood_pooled"] = {"n": int(len(lb)), "length_baseline": round(float(lb.mean()), 4),
                         **{r: rnd(stats.bootstrap_ci(cat[r])) for r in runs}, **diffs(cat, rnd)}
  return out


def lm_report(lm: dict) -> dict:
  """Mean summed chosen log-prob on the ID pairs per run (95% CI); GRM minus BT and each minus the
  frozen (= base) model, paired by pair."""
  from rmjax.eval import stats
  rnd = lambda d: {k: round(float(v), 2) for k, v in d.items()}
  out = {r: rnd(stats.bootstrap_ci(np.asarray(v))) for r, v in lm.items()}
  for a, b in (("grm", "bt"), ("bt", "frozen"), ("grm", "frozen")):
    if a in lm and b in lm:
      out[f"{a}_minus_{'base' if b == 'frozen' else b}"] = rnd(stats.paired_diff_ci(lm[a], lm[b]))
  return out


def diffs(correct: dict, rnd) -> dict:
  from rmjax.eval import stats
  out = {}
  for a, b in (("grm", "bt"), ("grm", "frozen"), ("bt", "frozen")):
    if a in correct and b in correct:
      out[f"{a}_minus_{b}"] = rnd(stats.paired_diff_ci(correct[a], correct[b]))
  return out


def table(report: dict, runs) -> str:
  lines = ["| set | n | length | " + " | ".join(runs) + " | grm - bt (95% CI) |",
           "|---|---|---|" + "---|" * len(runs) + "---|"]
  for name, rec in report.items():
    cells = [f"{rec[r]['value']:.3f} [{rec[r]['lo']:.3f}, {rec[r]['hi']:.3f}]" for r in runs]
    d = rec.get("grm_minus_bt")
    dd = f"{d['value']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]" if d else "-"
    lines.append(f"| {name} | {rec['n']} | {rec['length_baseline']:.3f} | " + " | ".join(cells)
                 + f" | {dd} |")
  return "\n".join(lines)


def plot(report: dict, curves: dict, runs, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4))
  names = list(report)
  w = 0.8 / len(runs)
  for i, r in enumerate(runs):
    v = np.array([report[n][r]["value"] for n in names])
    err = np.array([[report[n][r]["value"] - report[n][r]["lo"] for n in names],
                    [report[n][r]["hi"] - report[n][r]["value"] for n in names]])
    ax.bar(np.arange(len(names)) + i * w, v, w, yerr=err, label=r, capsize=2)
  ax.scatter(np.arange(len(names)) + 0.4 - w / 2, [report[n]["length_baseline"] for n in names],
             marker="_", s=400, color="k", label="longer wins", zorder=3)
  ax.axhline(0.5, color="grey", lw=0.5)
  ax.set_xticks(np.arange(len(names)) + 0.4 - w / 2, names)
  ax.set_ylim(0.3, 0.8)
  ax.set_ylabel("accuracy (95% CI)")
  ax.legend(fontsize=8)
  for r, pts in curves.items():
    if pts:
      bx.plot(*zip(*pts), label=r)
  bx.set_xlabel("step")
  bx.set_ylabel("mean summed chosen log-prob (LM head)")
  bx.set_title("the regulariser's value during training")
  bx.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--workdir", required=True)
  p.add_argument("--variant", default="smollm2", choices=("tiny", "smollm2"))
  p.add_argument("--runs", default=",".join(RUNS))
  p.add_argument("--train_pairs", type=int, default=1500)
  p.add_argument("--id_pairs", type=int, default=300)
  p.add_argument("--ood", default=DEFAULT_OOD, help="NAME:N,... of llmbar, rm_bench, pandalm, autoj")
  p.add_argument("--steps", type=int, default=0, help="0: one epoch")
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--max_length", type=int, default=256)
  p.add_argument("--rank", type=int, default=32)
  p.add_argument("--lr", type=float, default=1e-4)
  p.add_argument("--alpha", type=float, default=0.01)
  p.add_argument("--frozen_lr", type=float, default=1e-3)
  p.add_argument("--frozen_epochs", type=int, default=5)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--results", default="", help="also write results.json/md/png here")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  runs = [r for r in args.runs.split(",") if r]
  if set(runs) - set(RUNS):
    raise SystemExit(f"--runs: unknown {sorted(set(runs) - set(RUNS))} (known: {', '.join(RUNS)})")

  from rmjax.data import shared_data_root
  from rmjax.data.pairs import write_pairs
  if shared_data_root() is None:
    print(json.dumps({"skipped": "shared data not found (../shared/data or $RMJAX_SHARED_DATA)"}))
    return 0
  sets = build_sets(args)
  os.makedirs(args.workdir, exist_ok=True)
  train_path = os.path.join(args.workdir, "train.jsonl")
  if not os.path.exists(train_path):
    write_pairs(train_path + ".tmp.jsonl", sets["train"])
    os.replace(train_path + ".tmp.jsonl", train_path)
  print(json.dumps({"sizes": sets["sizes"]}), flush=True)
  margins, trained, curves, lm = {}, {}, {}, {}
  for run in runs:
    wd = os.path.join(args.workdir, run)
    config = make_config(args, run, train_path)
    trained[run] = train(config, wd)
    t0 = time.time()
    margins[run] = score(wd, sets, args.max_length)
    trained[run]["score_seconds"] = round(time.time() - t0, 1)
    curves[run] = metric_curve(wd, "chosen_logps")
    lm[run] = lm_logps(wd, sets["id"], args.max_length)["chosen_logps"]
    acc = {k: round(float(np.mean(np.asarray(v) > 0) + 0.5 * np.mean(np.asarray(v) == 0)), 3)
           for k, v in margins[run].items()}
    print(f"[{run}] {json.dumps({**trained[run], 'accuracy': acc})}", flush=True)
  report = compare(sets, margins)
  report_lm = lm_report(lm)
  out = {"args": vars(args), "sizes": sets["sizes"], "runs": trained, "report": report,
         "chosen_logps": curves, "lm_chosen_logps": report_lm,
         "table": table(report, runs)}
  dests = [args.workdir] + ([args.results] if args.results else [])
  for d in dests:
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "results.json"), "w") as f:
      json.dump(out, f, indent=1, default=float)
    with open(os.path.join(d, "results.md"), "w") as f:
      f.write(out["table"] + "\n")
    with open(os.path.join(d, "margins.json"), "w") as f:  # per pair: a later arm can be paired
      json.dump({r: {k: [round(float(x), 5) for x in v] for k, v in m.items()}
                 for r, m in margins.items()}, f)
    plot(report, curves, runs, os.path.join(d, "grm_ood.png"))
  print(out["table"])
  print(json.dumps({k: v for k, v in out.items() if k != "chosen_logps"}, default=float))
  return 0


if __name__ == "__main__":
  sys.exit(main())
