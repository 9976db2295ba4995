"""ArmoRM on the shared real data: frozen SmolLM2-135M embeddings -> stage 1 -> T -> gate.

Objectives (all from ../shared/data):
  helpfulness, harmlessness   BT probes on hh-rlhf helpful / harmless pairs (pairs only, no ratings)
  usr-<6 dims>                ridge on USR Topical-Chat human ratings (all 6 rated dimensions)
  xstest-appropriate          ridge on XSTest labels (1 = refuses an unsafe / answers a safe prompt)
  verbosity                   ridge on log(response characters) of every stage-1 response: the
                              length reference of the de-correlation (the shared data has no
                              rated verbosity such as HelpSteer's)
Splits: hh-rlhf 90/10 by prompt hash (experiments/data_shared.py, seed 0); the 90% side is cut
per source into disjoint probe pairs (stage 1) and gate pairs (stage 2), the 10% side is the
held-out eval. XSTest prompts (each with 5 model completions) are split by prompt into ratings
rows, gate pairs and eval pairs. The gate trains on the mixed set: hh harmless + hh helpful +
XSTest pairs. Eval: held-out hh-rlhf, XSTest held-out prompts, LLMBar and RM-Bench (same-style
pairs) subsamples; reported beside each single objective, the uniform mixture, a linear BT head
on the same embeddings (`rmjax.train.head_fit.train_heads`, 1 member, trained on all hh pairs stage 1
and 2 saw) and the longer-wins baseline, plus the mean gate weight per set.

  # GPU / full size (defaults): every pair of every split, 512 tokens
  HF_HUB_OFFLINE=1 python -m experiments.armorm_shared --workdir runs/armorm_shared
  # reduced CPU run (the one in experiments/RESULTS.md)
  HF_HUB_OFFLINE=1 python -m experiments.armorm_shared --workdir /tmp/armorm_shared \\
      --max_length 128 --n_probe 120 --n_gate 80 --n_eval 100 --n_ood 80 --n_usr 200 \\
      --n_xstest_prompts 50 --stage2_steps 300 --stage2_batch 256
  # ... the same + --rescale_probes: BT-probe logits scaled to the rated objectives' spread

Writes workdir/armorm_shared.json (armorm_shared_rescaled.json with --rescale_probes).

Embeddings are cached (workdir/embeddings, keyed by the exact token rows), so a rerun with other
stage-1/2 settings costs seconds. Prints the markdown tables, then one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from experiments import data_shared  # noqa: E402

NAMES = ["helpfulness", "harmlessness", "usr-understandability", "usr-naturalness",
         "usr-coherence", "usr-engagingness", "usr-groundedness", "usr-overall",
         "xstest-appropriate", "verbosity"]


def parse():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default="runs/armorm_shared")
  p.add_argument("--spec", default="smollm2-135m")
  p.add_argument("--max_length", type=int, default=512)
  p.add_argument("--n_probe", type=int, default=0, help="stage-1 pairs per hh source (0 = rest)")
  p.add_argument("--n_gate", type=int, default=600, help="stage-2 pairs per hh source")
  p.add_argument("--n_eval", type=int, default=0, help="held-out hh pairs (0 = all)")
  p.add_argument("--n_ood", type=int, default=0, help="LLMBar / RM-Bench pairs each (0 = all)")
  p.add_argument("--n_usr", type=int, default=0, help="USR rated responses (0 = all 360)")
  p.add_argument("--n_xstest_prompts", type=int, default=0, help="XSTest prompts (0 = all 450)")
  p.add_argument("--xstest_split", default="0.2,0.4", help="eval, gate fractions of the prompts")
  p.add_argument("--embed_batch", type=int, default=16)
  p.add_argument("--stage2_steps", type=int, default=1000)
  p.add_argument("--stage2_batch", type=int, default=512)
  p.add_argument("--stage2_lr", type=float, default=1e-3)
  p.add_argument("--gate_hidden", type=int, default=256)
  p.add_argument("--bt_steps", type=int, default=400)
  p.add_argument("--rescale_probes", action="store_true",
                 help="ablation: scale each BT-probe column to the rated columns' spread")
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args()


def pick(rng, items, n):
  """A random subset of n (all when n is 0 or too large), in input order."""
  if not n or n >= len(items):
    return list(items)
  return [items[i] for i in sorted(rng.choice(len(items), n, replace=False))]


def spaced(items, n):
  """Every len/n-th item (a deterministic subsample that covers every subset in file order)."""
  if not n or len(items) <= n:
    return list(items)
  return [items[int(i * len(items) / n)] for i in range(n)]


# ------------------------------------------------------------------------------------ data

def load_data(a):
  """Pair sets and rated rows: {'pairs': {name: [PairExample]}, 'usr', 'xs_rows',
  'xs_split' (eval/gate/ratings row indices), 'xs_pairs' {eval, gate: [(ci, ri)]}}."""
  from rmjax.data import load_source
  from rmjax.data import objectives as objs
  from rmjax.data import rating_sources as rs
  rng = np.random.default_rng(a.seed)
  train, evals, stats = data_shared.hh_rlhf_split(seed=a.seed)
  pairs = {}
  for kind in ("harmless", "helpful"):
    part = [e for e in train if e.subset.startswith(kind)]
    part = [part[i] for i in rng.permutation(len(part))]
    pairs[f"gate_{kind}"] = part[:a.n_gate]
    rest = part[a.n_gate:]
    pairs[f"probe_{kind}"] = rest[:a.n_probe] if a.n_probe else rest
  pairs["hh_eval"] = pick(rng, evals, a.n_eval)
  pairs["llmbar"] = spaced(load_source("shared:llmbar")[0], a.n_ood)
  pairs["rm_bench"] = spaced(load_source("shared:rm_bench?format=rm_bench_diag")[0], a.n_ood)
  ob = objs.resolve(NAMES)
  usr = pick(rng, rs.load_shared_ratings("usr_topicalchat", ob)[0], a.n_usr)
  xs_all = rs.load_shared_ratings("xstest", ob)[0]
  prompts = list(dict.fromkeys(e.prompt for e in xs_all))
  prompts = [prompts[i] for i in rng.permutation(len(prompts))]
  if a.n_xstest_prompts:
    prompts = prompts[:a.n_xstest_prompts]
  f_eval, f_gate = (float(x) for x in a.xstest_split.split(","))
  cut1, cut2 = round(f_eval * len(prompts)), round((f_eval + f_gate) * len(prompts))
  role = {p: ("eval" if i < cut1 else "gate" if i < cut2 else "ratings")
          for i, p in enumerate(prompts)}
  xs_rows = [e for e in xs_all if e.prompt in role]
  j = NAMES.index("xstest-appropriate")
  split = {k: np.array([i for i, e in enumerate(xs_rows) if role[e.prompt] == k], int)
           for k in ("eval", "gate", "ratings")}
  xs_pairs = {}
  for k in ("eval", "gate"):
    idx = split[k]
    xs_pairs[k] = [(idx[c], idx[r]) for c, r in rs.rating_pair_index([xs_rows[i] for i in idx], j)]
  pairs["xstest_eval"] = [rs.pair_of(xs_rows[c], xs_rows[r]) for c, r in xs_pairs["eval"]]
  pairs["xstest_gate"] = [rs.pair_of(xs_rows[c], xs_rows[r]) for c, r in xs_pairs["gate"]]
  return {"pairs": pairs, "usr": usr, "xs_rows": xs_rows, "xs_split": split,
          "xs_pairs": xs_pairs, "hh_stats": stats}


# ------------------------------------------------------------------------------ embeddings

def embed_all(a, config, data):
  """{name: (h_response, h_prompt)} for every pair side and rated row set, cached."""
  from rmjax.tasks import common as builders
  from rmjax.data.tokenize import ChatEncoder
  from rmjax.inference import embed as emb
  cfg, params = builders.backbone(config)
  tok = builders.tokenizer(config)
  enc = ChatEncoder(tok, a.max_length)
  pattern = tuple(emb.prompt_end_pattern(tok))
  settings = {"spec": a.spec, "max_length": a.max_length, "pattern": list(pattern),
              "params": emb.params_fingerprint(params)}
  jobs = {"usr": [(e.messages, e.response) for e in data["usr"]],
          "xstest": [(e.messages, e.response) for e in data["xs_rows"]]}
  for name, ps in data["pairs"].items():
    if name.startswith("xstest"):
      continue  # built from the xstest rows
    jobs[f"{name}_c"] = [(p.messages, p.chosen) for p in ps]
    jobs[f"{name}_r"] = [(p.messages, p.rejected) for p in ps]
  out, seconds, tokens = {}, {}, {}
  for name, items in jobs.items():
    rows = emb.encode_rows(enc, items)
    t0 = time.perf_counter()
    f = emb.cached(os.path.join(a.workdir, "embeddings"), name, rows, settings,
                   lambda rows=rows, name=name: emb.armo_features(
                       cfg, params, rows, pattern, batch_size=a.embed_batch,
                       pad_id=enc.pad_id, progress=True, desc=f"embed {name}"))
    out[name] = (f["h_response"], f["h_prompt"])
    seconds[name], tokens[name] = round(time.perf_counter() - t0, 1), int(sum(map(len, rows)))
    print(f"[armorm_shared] {name}: {len(rows)} rows, {tokens[name]} tokens, {seconds[name]} s",
          flush=True)
  hx, hp = out["xstest"]
  for k, idx in data["xs_pairs"].items():
    c, r = (np.array([p[i] for p in idx], int) for i in (0, 1))
    out[f"xstest_{k}_c"], out[f"xstest_{k}_r"] = (hx[c], hp[c]), (hx[r], hp[r])
  return out, {"embed_s": seconds, "tokens": tokens, "pattern": list(pattern)}


def arrays(h, name):
  return {"hc": h[f"{name}_c"][0], "hr": h[f"{name}_r"][0], "hx": h[f"{name}_c"][1]}


def cat(*parts):
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ------------------------------------------------------------------------------- pipeline

def stage1(config, data, h):
  """W [D, O]: `rmjax.tasks.armorm.stage1` (ridge per rated objective, a BT probe for an
  objective known only from pairs) on USR / XSTest ratings and verbosity, and the HH probe
  pairs for helpfulness and harmlessness."""
  from rmjax.data.ratings import length_rating
  from rmjax.tasks import armorm
  o = len(NAMES)
  xs = data["xs_split"]["ratings"]
  kinds = ("harmless", "helpful")
  probe = [data["pairs"][f"probe_{k}"] for k in kinds]
  x = np.concatenate([h["usr"][0], h["xstest"][0][xs]] +
                     [h[f"probe_{k}_{s}"][0] for k in kinds for s in "cr"])
  texts = ([e.response for e in data["usr"]] + [data["xs_rows"][i].response for i in xs] +
           [getattr(p, side) for ps in probe for side in ("chosen", "rejected") for p in ps])
  r = np.full((len(x), o), np.nan, np.float32)
  r[:len(data["usr"])] = np.stack([e.ratings for e in data["usr"]])
  r[len(data["usr"]):len(data["usr"]) + len(xs)] = np.stack([data["xs_rows"][i].ratings for i in xs])
  r[:, NAMES.index("verbosity")] = length_rating(texts)
  assert np.isnan(r[:, [NAMES.index("helpfulness"), NAMES.index("harmlessness")]]).all()
  side = lambda s: np.concatenate([h[f"probe_{k}_{s}"][0] for k in kinds])  # noqa: E731
  objective = np.concatenate([np.full(len(ps), NAMES.index(f"{k}ness"))
                              for k, ps in zip(kinds, probe)])
  return armorm.stage1(config, x, r, side("c"), side("r"), objective)


def rescale_probes(w, r_ref):
  """BT probes are logits (spread ~5), ridge objectives live in [0, 1] (spread ~0.1): scale each
  probe column so its std on the reference responses is the median std of the rated ones."""
  rated = [j for j, n in enumerate(NAMES) if n not in ("helpfulness", "harmlessness", "verbosity")]
  target = float(np.median(r_ref[:, rated].std(0)))
  w = w.copy()
  for n in ("helpfulness", "harmlessness"):
    j = NAMES.index(n)
    w[:, j] *= target / max(float(r_ref[:, j].std()), 1e-12)
  return w


def stage2(config, workdir, w, t, train_arrays, eval_arrays, apply_t: bool):
  """Gate + beta (`rmjax.tasks.armorm.stage2`) on cached embeddings; a fresh workdir each run."""
  from rmjax.tasks import armorm
  with config.unlocked():
    config.armorm.apply_transform_in_training = apply_t
  shutil.rmtree(workdir, ignore_errors=True)
  heads, params, final = armorm.stage2(config, workdir, w, t, train_arrays, eval_arrays)
  if not apply_t:  # the released script scores without T at inference too
    params = dict(params, transform=np.eye(len(config.objectives.names), dtype=np.float32))
  return heads, params, final


def evaluate(heads, params, bt_head, h, data, sets):
  from rmjax.eval.armorm_report import pair_eval
  from rmjax.eval.metrics import pair_report
  from rmjax.train import head_fit as ec
  out = {}
  for name in sets:
    arr, ps = arrays(h, name), data["pairs"][name]
    ev = pair_eval(heads, params, arr, ps, NAMES)
    bc = np.asarray(ec.head_scores(bt_head, arr["hc"]))[:, 0]
    br = np.asarray(ec.head_scores(bt_head, arr["hr"]))[:, 0]
    bt = pair_report(bc, br, [p.subset for p in ps])
    g = heads.apply({"params": params}, arr["hc"], arr["hx"])["gate"]
    out[name] = {"n": len(ps), "gated": ev["accuracy"], "uniform": ev["uniform_accuracy"],
                 "bt_head": bt["accuracy"], "bt_per_subset": bt.get("per_subset"),
                 "longer_wins": ev["report"]["length_baseline_accuracy"],
                 "objective": ev["objective_accuracy"],
                 "objective_after_T": ev["adjusted_objective_accuracy"],
                 "gate_mean": dict(zip(NAMES, map(float, np.asarray(g).mean(0)))),
                 "gate_by_subset": ev["gate_by_subset"],
                 "per_subset": ev["report"].get("per_subset")}
  return out


def tables(res, sets):
  """Markdown: accuracy per set; per-objective accuracy; mean gate weight per set."""
  ev, ab = res["eval"], res.get("eval_no_T", {})
  lines = ["| set | n | gated (T) | gated (no T) | uniform | best single | BT head | longer wins |",
           "|---|---|---|---|---|---|---|---|"]
  for s in sets:
    e = ev[s]
    best = max(e["objective"], key=e["objective"].get)
    no_t = f"{ab[s]['gated']:.3f}" if s in ab else "-"
    lines.append(f"| {s} | {e['n']} | {e['gated']:.3f} | {no_t} | {e['uniform']:.3f} | "
                 f"{e['objective'][best]:.3f} ({best}) | {e['bt_head']:.3f} | {e['longer_wins']:.3f} |")
  lines += ["", "| objective | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
  for n in NAMES:
    lines.append(f"| {n} | " + " | ".join(f"{ev[s]['objective'][n]:.3f}" for s in sets) + " |")
  lines += ["", "| mean gate weight | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
  for n in NAMES:
    lines.append(f"| {n} | " + " | ".join(f"{ev[s]['gate_mean'][n]:.3f}" for s in sets) + " |")
  return "\n".join(lines)


def main():
  a = parse()
  try:
    data_shared.require_shared()
  except data_shared.SharedDataMissing as e:
    print(e)
    return 0
  from configs import armorm as armorm_conf
  from rmjax.tasks import armorm
  from rmjax.train import head_fit as ec
  t_start = time.perf_counter()
  c = armorm_conf.get_config("smollm2")
  c.objectives.names, c.objectives.verbosity = list(NAMES), "verbosity"
  c.model.spec = c.model.tokenizer = a.spec
  c.data.max_length, c.seed = a.max_length, a.seed
  c.armorm.gate_hidden = a.gate_hidden
  c.stage2.update(steps=a.stage2_steps, batch_size=a.stage2_batch, lr=a.stage2_lr)
  c.train.progress = False
  os.makedirs(a.workdir, exist_ok=True)

  data = load_data(a)
  sizes = {k: len(v) for k, v in data["pairs"].items()}
  sizes.update(usr=len(data["usr"]), xstest_rows=len(data["xs_rows"]),
               xstest_rating_rows=len(data["xs_split"]["ratings"]))
  print(f"[armorm_shared] sizes {sizes}", flush=True)
  h, emb_info = embed_all(a, c, data)
  t_embed = time.perf_counter() - t_start

  t0 = time.perf_counter()
  w, s1 = stage1(c, data, h)
  gate_sets = ("gate_harmless", "gate_helpful", "xstest_gate")
  train_arr = cat(*(arrays(h, k) for k in gate_sets))
  r_ref = np.concatenate([train_arr["hc"], train_arr["hr"]]) @ w        # reference = gate pairs
  if a.rescale_probes:
    w = rescale_probes(w, r_ref)
    r_ref = np.concatenate([train_arr["hc"], train_arr["hr"]]) @ w
  s1["reference_std"] = dict(zip(NAMES, map(float, r_ref.std(0))))
  t, decor = armorm.decorrelate(r_ref, c)
  sets = ("hh_eval", "xstest_eval", "llmbar", "rm_bench")
  heads, params, s2 = stage2(c, os.path.join(a.workdir, "stage2_T"), w, t, train_arr,
                             arrays(h, "hh_eval"), apply_t=True)
  heads_nt, params_nt, s2_nt = stage2(c, os.path.join(a.workdir, "stage2_noT"), w, t, train_arr,
                                      arrays(h, "hh_eval"), apply_t=False)
  bt_train = cat(*(arrays(h, f"{p}_{k}") for p in ("probe", "gate") for k in ("harmless", "helpful")))
  bt_head, _ = ec.train_heads(bt_train["hc"], bt_train["hr"], 1, steps=a.bt_steps, lr=3e-3,
                              batch_size=256, seed=a.seed)
  res = {"settings": vars(a), "sizes": sizes, "embeddings": emb_info, "stage1": s1,
         "decorrelation": {k: decor[k] for k in ("penalties", "converged", "spearman_before",
                                                 "spearman_after")},
         "stage2": s2, "stage2_no_T": s2_nt, "beta": float(params["beta"]),
         "eval": evaluate(heads, params, bt_head, h, data, sets)}
  res["eval_no_T"] = {s: {"gated": v["gated"]} for s, v in
                      evaluate(heads_nt, params_nt, bt_head, h, data, sets).items()}
  res["wall_s"] = {"embed_total": round(t_embed, 1), "fit_and_eval": round(time.perf_counter() - t0, 1),
                   "total": round(time.perf_counter() - t_start, 1)}
  out = "armorm_shared_rescaled.json" if a.rescale_probes else "armorm_shared.json"
  with open(os.path.join(a.workdir, out), "w") as f:
    json.dump(res, f, indent=2, default=float)
  print(tables(res, sets))
  print(json.dumps(res, default=float))
  return 0


if __name__ == "__main__":
  sys.exit(main())
