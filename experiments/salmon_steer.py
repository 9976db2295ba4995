"""SALMON principle steering at SmolLM2 scale (issue 7, ALGORITHMS.md 3.10 (b)).

Claim checked: an RM trained on aggregated principle-conditioned data prefers the shorter of two
otherwise equal responses under SALMON's 'Concise' principle and the longer under its
`negative_definition`, on held-out pairs, far more often than chance.

Data (no generation needed): AlpacaEval instructions with their text-davinci-003 reference
outputs (../shared/data/alpaca_eval_prompts). Per prompt, short = the first sentence(s) of the
reference, long = short + ONE extra sentence: a content-free filler sentence or the reference's
own next sentence (`--pad`). The pair differs only in that sentence. A known-rule judge (the
`length:N` judge of tests/test_salmon.py, on real text) scores Concise by the word-count
difference (+noise per order) and every other dimension as a tie (0: it never decides a label,
as an order-inconsistent judge would not). These records (the format `rmjax collect` writes) go
through the normal `rmjax train` path: configs/salmon.py:smollm2 -> salmon.build (aggregation of
ALGORITHMS.md 3.5: K principles, negation w.p. 1/2, 10% label noise, A/B swap) -> loop.train.

Held out: prompts by hash (none seen in training), filler sentences from a disjoint pool, plus
MT-Bench first turns with their GPT-4 reference answers (another source). Reported: the loop's
eval accuracy on clean aggregated held-out pairs, and on held-out pairs the fraction where the RM
prefers the shorter under [Concise], the longer under [not Concise], and the shorter under a
control set of unrelated principles (never a training label).

  # GPU default: full fine-tune, the 8 SALMON dimensions, K ~ Geom(0.2) <= 8
  python experiments/salmon_steer.py --workdir /tmp/salmon_steer
  # reduced CPU run (head-only, frozen backbone, one dimension, short inputs)
  HF_HUB_OFFLINE=1 python experiments/salmon_steer.py --workdir /tmp/salmon_steer_cpu \
      --freeze_backbone --head mlp --lr 1e-3 --steps 80 --batch_size 8 --dims Concise \
      --n_train 400 --n_heldout 48 --n_mt 16 --n_eval_agg 64 --query_len 32 --response_len 80 \
      --max_length 192
The reduced run took 761 s on 2 shared cores (626 s of it 80 head-only steps, ~8 s each: the
loop re-runs the frozen backbone every step) and steers only partly (see experiments/RESULTS.md);
more steps, or a larger batch, are the first thing to give it.

Prints one JSON object last (also <workdir>/steer_results.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

SALMON_DIMS = ("Concise", "Honest and Accurate", "Ethical", "Specific",
               "Educational and Engaging", "Methodical", "Creative", "Comprehensive")
CONTROL_DIMS = ("Honest and Accurate", "Ethical", "Specific")
# Content-free sentences; the held-out pool shares none with the training pool.
FILLERS_TRAIN = (
    "I hope this information is useful to you.",
    "Let me know if you would like more details on this.",
    "This is a common question that many people ask.",
    "There are many different ways to think about this topic.",
    "It is worth keeping this in mind going forward.",
    "Of course, individual situations can vary somewhat.",
    "Thank you for asking such an interesting question.",
    "Please feel free to reach out with any follow-up questions.",
)
FILLERS_HELDOUT = (
    "Many people find this subject quite fascinating.",
    "I am happy to explain any part of this in more depth.",
    "That is a short summary of the main point here.",
    "It is always good to think carefully about questions like this.",
    "Hopefully that answers what you were wondering about.",
    "Everyone approaches this a little differently, of course.",
)


# ------------------------------------------------------------------------------------------------
# Pairs that differ only in one extra sentence
# ------------------------------------------------------------------------------------------------

def sentences(text: str) -> list:
  """First paragraph's sentences, then the rest (so 'next sentence' may cross a paragraph)."""
  return [s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if s.strip()]


def _words(text: str) -> int:
  return len(text.split())


def make_pair(output: str, rng, pad: str, fillers, short_words=(6, 30), extra_words=(5, 22)):
  """(short, long, kind) from a reference output, or None when it has no usable first sentence.
  short: sentences from the start until >= short_words[0] words (<= short_words[1]);
  long: short + the next sentence ('next'), a filler ('filler'), or either at random ('mix')."""
  sents = sentences(output)
  short, i = "", 0
  while i < len(sents) and _words(short) < short_words[0]:
    short, i = (short + " " + sents[i]).strip(), i + 1
  if not short_words[0] <= _words(short) <= short_words[1] or not short[-1:] in ".!?":
    return None
  nxt = sents[i] if i < len(sents) and extra_words[0] <= _words(sents[i]) <= extra_words[1] else None
  kind = pad if pad != "mix" else ("next" if rng.random() < 0.5 else "filler")
  if kind == "next" and nxt is None:
    kind = "filler"
  extra = nxt if kind == "next" else fillers[int(rng.integers(len(fillers)))]
  return short, short + " " + extra, kind


def judge_scores(out1: str, out2: str, dims, rng, noise: float = 0.3) -> dict:
  """Known rule: Concise = (words(out2) - words(out1)) / 2 + noise per order (> 0 prefers
  output_1, the shorter); other dimensions tie (0, 0) as the pair differs in nothing they judge."""
  d = (_words(out2) - _words(out1)) / 2.0
  return {k: ([float(d + noise * rng.standard_normal()), float(d + noise * rng.standard_normal())]
              if k == "Concise" else [0.0, 0.0]) for k in dims}


def _hash01(text: str) -> float:
  return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def load_sources(n_mt: int) -> tuple[list, list]:
  """(AlpacaEval [(instruction, reference)], MT-Bench [(first turn, GPT-4 first answer)])."""
  from rmjax.data.pairs import iter_records
  from rmjax.data.sources import shared_data_root
  root = shared_data_root(required=True)
  alpaca = [(o["instruction"], o["output"]) for f in sorted((root / "alpaca_eval_prompts").iterdir())
            for _, o in iter_records(str(f))]
  mt = []
  if n_mt:
    qs = {o["question_id"]: o["turns"][0] for _, o in iter_records(str(root / "mt_bench" / "question.jsonl.gz"))}
    for _, o in iter_records(str(root / "mt_bench" / "reference_answer_gpt-4.jsonl.gz")):
      if o["question_id"] in qs:
        mt.append((qs[o["question_id"]], o["choices"][0]["turns"][0]))
  return alpaca, mt


def build_pairs(items, source, pad, fillers, seed, limit, tok, response_len):
  """Pairs {id, prompt, short, long, kind, source}; drops pairs whose long response would be cut
  by the RM's response truncation (the extra sentence must be seen)."""
  out = []
  for instr, ref in items:
    rng = np.random.default_rng([seed, int(_hash01(instr) * 2**31)])
    got = make_pair(ref, rng, pad, fillers)
    if got is None:
      continue
    if len(tok.encode(got[1], add_special_tokens=False)) > response_len:
      continue
    out.append({"id": hashlib.sha1(instr.encode()).hexdigest()[:16], "prompt": instr,
                "short": got[0], "long": got[1], "kind": got[2], "source": source})
    if len(out) == limit:
      break
  return out


def to_records(pairs, dims, seed, noise=0.3):
  """Pairs -> judged records in `rmjax collect`'s format, A/B order random."""
  rng = np.random.default_rng([seed, 9])
  recs = []
  for p in pairs:
    a, b = (p["short"], p["long"]) if rng.random() < 0.5 else (p["long"], p["short"])
    recs.append({"id": p["id"], "prompt": p["prompt"], "output_1": a, "output_2": b,
                 "scores": judge_scores(a, b, dims, rng, noise)})
  return recs


def _write(path, rows):
  with open(path, "w") as f:
    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


# ------------------------------------------------------------------------------------------------
# Config, training, steering evaluation
# ------------------------------------------------------------------------------------------------

def make_config(args, train_path, eval_path):
  """configs/salmon.py:smollm2 with this experiment's data and sizes."""
  from configs import salmon as salmon_config
  c = salmon_config.get_config("smollm2")
  c.salmon.update(preferences=train_path, eval_preferences=eval_path, dimensions=tuple(args.dims),
                  max_k=args.max_k, query_len=args.query_len, response_len=args.response_len)
  c.data.max_length = args.max_length
  c.data.buckets = tuple(b for b in (128, 160, 192, 256, 384, 512, 768, 1024)
                         if b < args.max_length) + (args.max_length,)
  c.data.max_eval_examples = args.n_eval_agg
  c.model.head = args.head
  c.optim.update(lr=args.lr, warmup_steps=max(1, args.steps // 10))
  c.train.update(steps=args.steps, batch_size=args.batch_size, freeze_backbone=args.freeze_backbone,
                 eval_every=args.steps, checkpoint_every=args.steps, log_every=max(1, args.steps // 10),
                 async_checkpoint=False, tensorboard=False, progress=False)
  c.seed = args.seed
  return c


def margins(score, pairs, texts) -> np.ndarray:
  """r(short) - r(long) per pair [N] under principle bullets `texts` (> 0: prefers the shorter)."""
  prompts = [p["prompt"] for p in pairs]
  lists = [list(texts)] * len(pairs)
  return score(prompts, [p["short"] for p in pairs], lists) - score(
      prompts, [p["long"] for p in pairs], lists)


def summarize(m: np.ndarray) -> dict:
  return {"prefer_shorter": float(np.mean(m > 0)), "mean_margin_short_minus_long": float(np.mean(m))}


def binom_p(k: int, n: int) -> float:
  """One-sided P(X >= k), X ~ Binomial(n, 1/2): how unlikely k of n is by chance."""
  from math import comb
  return float(sum(comb(n, i) for i in range(k, n + 1)) / 2 ** n)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", default="/tmp/salmon_steer")
  ap.add_argument("--n_train", type=int, default=600, help="training prompts (pairs)")
  ap.add_argument("--n_heldout", type=int, default=150, help="held-out AlpacaEval pairs")
  ap.add_argument("--n_mt", type=int, default=30, help="held-out MT-Bench pairs (<= 30)")
  ap.add_argument("--n_eval_agg", type=int, default=256, help="aggregated eval pairs (loop eval)")
  ap.add_argument("--heldout_fraction", type=float, default=0.2)
  ap.add_argument("--pad", default="mix", choices=("mix", "filler", "next"))
  ap.add_argument("--dims", nargs="+", default=list(SALMON_DIMS))
  ap.add_argument("--max_k", type=int, default=8)
  ap.add_argument("--head", default="scalar", choices=("scalar", "mlp"))
  ap.add_argument("--freeze_backbone", action="store_true")
  ap.add_argument("--lr", type=float, default=1e-5)
  ap.add_argument("--steps", type=int, default=300)
  ap.add_argument("--batch_size", type=int, default=16)
  ap.add_argument("--query_len", type=int, default=128)
  ap.add_argument("--response_len", type=int, default=160)
  ap.add_argument("--max_length", type=int, default=512)
  ap.add_argument("--score_batch", type=int, default=16)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()
  if "Concise" not in args.dims:
    ap.error("--dims must include Concise")

  from rmjax import checkpoints
  from rmjax.data.salmon_aggregate import get_principles
  from rmjax.tasks import salmon
  from rmjax.train import loop
  times = {}
  t0 = time.time()
  os.makedirs(args.workdir, exist_ok=True)
  tok = checkpoints.load_tokenizer("smollm2-135m")
  alpaca, mt = load_sources(args.n_mt)
  held = [x for x in alpaca if _hash01("heldout:" + x[0]) < args.heldout_fraction]
  train_items = [x for x in alpaca if _hash01("heldout:" + x[0]) >= args.heldout_fraction]
  train_pairs = build_pairs(train_items, "alpaca", args.pad, FILLERS_TRAIN, args.seed,
                            args.n_train, tok, args.response_len)
  # held-out prompts (disjoint filler pool) feed both the loop eval and the steering eval
  held_pairs = build_pairs(held, "alpaca", args.pad, FILLERS_HELDOUT, args.seed + 1,
                           args.n_heldout, tok, args.response_len)
  mt_pairs = build_pairs(mt, "mt_bench", args.pad, FILLERS_HELDOUT, args.seed + 2,
                         args.n_mt, tok, args.response_len)
  train_path = os.path.join(args.workdir, "train_preferences.jsonl")
  eval_path = os.path.join(args.workdir, "eval_preferences.jsonl")
  _write(train_path, to_records(train_pairs, args.dims, args.seed))
  _write(eval_path, to_records(held_pairs + mt_pairs, args.dims, args.seed + 1))
  _write(os.path.join(args.workdir, "heldout_pairs.jsonl"), held_pairs + mt_pairs)
  times["data_s"] = time.time() - t0

  config = make_config(args, train_path, eval_path)
  t1 = time.time()
  task = salmon.build(config)
  times["build_s"] = time.time() - t1
  t1 = time.time()
  final, state = loop.train(config, os.path.join(args.workdir, "rm"), task, return_state=True)
  times["train_s"] = time.time() - t1

  t1 = time.time()
  score = salmon.reward_fn(salmon.make_model(config, task.model_config), state.params, tok, config,
                           batch_size=args.score_batch)
  table = {p.dimension: p for p in get_principles(config.salmon.principles)}
  conditions = {"concise": [table["Concise"].definition],
                "not_concise": [table["Concise"].negative_definition],
                "control": [table[d].definition for d in CONTROL_DIMS]}
  everything = held_pairs + mt_pairs  # one scoring pass per condition (fewer padded batches)
  m_all = {cond: margins(score, everything, texts) for cond, texts in conditions.items()}
  _write(os.path.join(args.workdir, "heldout_margins.jsonl"),
         [dict(p, **{f"margin_{c}": float(x[i]) for c, x in m_all.items()})
          for i, p in enumerate(everything)])
  results = {}
  for name, lo, hi in (("alpaca_heldout", 0, len(held_pairs)),
                       ("mt_bench", len(held_pairs), len(everything))):
    if hi == lo:
      continue
    n, m = hi - lo, {cond: x[lo:hi] for cond, x in m_all.items()}
    res = {"n": n, **{cond: summarize(x) for cond, x in m.items()}}
    res["p_concise"] = binom_p(int((m["concise"] > 0).sum()), n)
    res["p_not_concise"] = binom_p(int((m["not_concise"] < 0).sum()), n)
    kinds = np.asarray([p["kind"] for p in everything[lo:hi]])
    res["by_kind"] = {k: {"n": int((kinds == k).sum()),
                          **{c: float(np.mean(x[kinds == k] > 0)) for c, x in m.items()}}
                      for k in ("filler", "next") if (kinds == k).any()}
    results[name] = res
  times["steer_eval_s"] = time.time() - t1
  times["total_s"] = time.time() - t0
  out = {"model": "smollm2-135m (SmolLM2-135M-Instruct GGUF)", "args": vars(args),
         "pairs": {"train": len(train_pairs), "alpaca_heldout": len(held_pairs),
                   "mt_bench": len(mt_pairs)},
         "data_stats": task.info,
         "train_final": {k: v for k, v in final.items() if isinstance(v, (int, float, str, dict))},
         "steering": results, "conditions": conditions, "times": times}
  with open(os.path.join(args.workdir, "steer_results.json"), "w") as f:
    json.dump(out, f, indent=1, default=float)
  print(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
  main()
