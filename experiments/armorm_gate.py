"""E-c: does ArmoRM's gate beat the best single objective and a BT head at equal data? (cache)

On the shared feature cache (frozen SmolLM2-135M; `experiments.extract_features`), per hash
split s in {0, 1, 2} of each training set (`experiments.real_sets`, 800 pairs):
  stage 1   objectives on the response's last-token feature: BT probes for helpfulness (hh
            helpful), harmlessness (hh harmless), instruction following (AlpacaEval GPT-4) on 500
            probe pairs each, a BT-overall probe on their union (the gate can fall back to it),
            ridge on the 6 USR Topical-Chat ratings and on XSTest appropriateness (60% of the
            non-eval prompts), verbosity = ridge on log characters; every column standardised to
            unit std on the gate's training responses (the earlier run showed the gate ignores
            unscaled BT logits).
  T         verbosity de-correlation (`rmjax.tasks.armorm.decorrelate`) on those responses.
  stage 2   the 3 x 256 gate on the prompt-end feature, through rmjax's own stage-2 task and loop,
            on the mixed set: the other 300 pairs of each training set + XSTest pairs of 40% of the
            non-eval prompts; 80% trains it, 20% is the validation split; 3 gate seeds; with T
            (the paper) and without T in training and scoring.
Baselines, every choice made on the validation split (never on an evaluation set): the best
single objective; the uniform mixture; a linear BT head and a capacity-matched MLP BT head
(576+576 -> 256 -> 1 on [response, prompt-end] features) trained on every pair stages 1 and 2
used; an oracle router (the known context's best objective on validation).
Evaluation (identical items for all 9 runs): the mixed held-out set = 150 each of hh harmless,
hh helpful, AlpacaEval, Auto-J (E-a's ID eval splits) + XSTest pairs of 20% of its prompts
(fixed); OOD: LLMBar natural + adversarial (419 = RewardBench Chat-Hard without MT-bench) and
RM-Bench chat + safety concise (570). Statistics: paired bootstrap over items of the per-item
correctness averaged over the 9 runs (3 for split-only baselines), signs per split, mean gate
weight per context, Spearman with verbosity before / after T.

  python -m experiments.armorm_gate --cache runs/features --out runs/ec
  RMJAX_SMOKE=1 python -m experiments.armorm_gate --cache /tmp/f --out /tmp/ec

Writes OUT/armorm_gate.json / .md / .png; prints one JSON object last. Stage-2 runs are
resumable (one workdir each under OUT/stage2; a finished one is read back, not retrained).
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

PROBES = {"helpfulness": "hh_helpful", "harmlessness": "hh_harmless",
          "instruction-following": "alpaca_eval"}
USR = ["usr-understandability", "usr-naturalness", "usr-coherence", "usr-engagingness",
       "usr-groundedness", "usr-overall"]
NAMES = list(PROBES) + ["bt-overall"] + USR + ["xstest-appropriate", "verbosity"]
CONTEXT_OBJECTIVE = {"hh_harmless": "harmlessness", "hh_helpful": "helpfulness",
                     "alpaca_eval": "instruction-following", "xstest": "xstest-appropriate"}
GATE_SETS = ("hh_harmless", "hh_helpful", "alpaca_eval")
N_PROBE = 500
SPLITS, GATE_SEEDS = (0, 1, 2), (0, 1, 2)
CHAT_HARD = ("natural", "adversarial_neighbor", "adversarial_gptinst", "adversarial_gptout",
             "adversarial_manual")


def smoke() -> bool:
  return os.environ.get("RMJAX_SMOKE", "0") == "1"


def design() -> tuple:
  """(splits, gate seeds): 3 x 3 (E-c); the smoke run's plumbing needs 2 splits x 1 seed."""
  return ((0, 1), (0,)) if smoke() else (SPLITS, GATE_SEEDS)


# ------------------------------------------------------------------------------------ data

def _feats(cache, pairs):
  f = cache.pairs(pairs, features=("last", "prompt_end"))
  return {"hc": f["chosen"]["last"], "hr": f["rejected"]["last"], "hx": f["chosen"]["prompt_end"],
          "len_c": np.array([len(p.chosen) for p in pairs]),
          "len_r": np.array([len(p.rejected) for p in pairs]),
          "subset": np.array([p.subset or "" for p in pairs])}


def _cat(*parts):
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _take(a, idx):
  return {k: v[idx] for k, v in a.items()}


def load(cache_dir: str, limit: int = 0, spec: str = "smollm2-135m", max_length: int = 256) -> dict:
  """Features of every pair and rated row E-c reads; XSTest prompts' eval share fixed (seed 0)."""
  from experiments.armorm_shared import NAMES as RATED_NAMES
  from rmjax.data import rating_sources as rs
  from rmjax.inference.feature_cache import FeatureCache
  cache = FeatureCache(cache_dir, spec, max_length)
  sets = real_sets.load_sets()
  cut = (lambda x: x[:limit]) if limit else (lambda x: x)
  out = {"train": {k: _feats(cache, cut(sets["train"][k])) for k in GATE_SETS},
         "eval": {k: _feats(cache, cut(v)) for k, v in sets["eval"].items()}}
  llm = [e for e in sets["ood"]["llmbar"] if e.subset in CHAT_HARD]
  out["ood"] = {"chat_hard": _feats(cache, cut(llm)), "rm_bench": _feats(cache, cut(sets["ood"]["rm_bench"]))}
  rated = real_sets.rated_rows()
  jx = RATED_NAMES.index("xstest-appropriate")
  xs = cut(rated["xstest"])
  usr = cut(rated["usr"])
  prompts = list(dict.fromkeys(e.prompt for e in xs))
  order = np.random.default_rng(0).permutation(len(prompts))
  eval_prompts = {prompts[i] for i in order[:round(0.2 * len(prompts))]}
  rest = [prompts[i] for i in order[round(0.2 * len(prompts)):]]

  def rows_feats(rows):
    f = cache.responses([(e.prompt, e.response) for e in rows], features=("last", "prompt_end"))
    return f["last"], f["prompt_end"]

  xs_last, xs_prompt = rows_feats(xs)
  usr_last, _ = rows_feats(usr)
  ev_rows = [i for i, e in enumerate(xs) if e.prompt in eval_prompts]
  ev_pairs = [(ev_rows[c], ev_rows[r]) for c, r in rs.rating_pair_index([xs[i] for i in ev_rows], jx)]
  out["eval"]["xstest"] = _xs_pairs(xs, xs_last, xs_prompt, ev_pairs)
  out["xs"] = {"rows": xs, "last": xs_last, "prompt": xs_prompt, "rest_prompts": rest, "j": jx}
  out["usr"] = {"rows": usr, "last": usr_last,
                "ratings": np.stack([[e.ratings[RATED_NAMES.index(n)] for n in USR] for e in usr])}
  return out


def _xs_pairs(xs, last, prompt, idx):
  c, r = (np.array([p[i] for p in idx], int) for i in (0, 1))
  return {"hc": last[c], "hr": last[r], "hx": prompt[c],
          "len_c": np.array([len(xs[i].response) for i in c]),
          "len_r": np.array([len(xs[i].response) for i in r]),
          "subset": np.array([xs[i].subset for i in c])}


def split(data: dict, s: int) -> dict:
  """Split s: probe / gate pairs of each training set, XSTest ratings / gate prompts; the gate's
  mixed set cut 80/20 into train / validation (with each part's context label)."""
  from rmjax.data import rating_sources as rs
  rng = np.random.default_rng(100 + s)
  probe, gate = {}, {}
  for k in GATE_SETS:
    a = data["train"][k]
    perm = rng.permutation(len(a["hc"]))
    n_probe = min(N_PROBE, len(perm) * 5 // 8)
    probe[k], gate[k] = _take(a, perm[:n_probe]), _take(a, perm[n_probe:])
  xs = data["xs"]
  rest = xs["rest_prompts"]
  perm = rng.permutation(len(rest))
  gate_prompts = {rest[i] for i in perm[:round(len(rest) / 3)]}
  rows = xs["rows"]
  g_rows = [i for i, e in enumerate(rows) if e.prompt in gate_prompts]
  r_rows = [i for i, e in enumerate(rows) if e.prompt in set(rest) - gate_prompts]
  g_pairs = [(g_rows[c], g_rows[r]) for c, r in rs.rating_pair_index([rows[i] for i in g_rows], xs["j"])]
  gate["xstest"] = _xs_pairs(rows, xs["last"], xs["prompt"], g_pairs)
  ctx = np.concatenate([np.full(len(gate[k]["hc"]), k) for k in gate])
  mixed = _cat(*gate.values())
  perm = rng.permutation(len(ctx))
  cut = int(0.8 * len(ctx))
  return {"probe": probe, "xs_ratings_rows": np.array(r_rows, int),
          "gate_train": _take(mixed, perm[:cut]), "gate_val": _take(mixed, perm[cut:]),
          "ctx_train": ctx[perm[:cut]], "ctx_val": ctx[perm[cut:]]}


# --------------------------------------------------------------------------------- stage 1

def stage1(data: dict, sp: dict) -> tuple:
  """W [D, O] (columns of NAMES), standardised on the gate-train responses, and its report."""
  from rmjax.train import head_fit
  d = data["usr"]["last"].shape[1]
  w = np.zeros((d, len(NAMES)), np.float32)
  info = {}
  for name, k in PROBES.items():
    p = sp["probe"][k]
    w[:, NAMES.index(name)], info[name] = head_fit.fit_bt_probe(p["hc"], p["hr"])
  allp = _cat(*sp["probe"].values())
  w[:, NAMES.index("bt-overall")], info["bt-overall"] = head_fit.fit_bt_probe(allp["hc"], allp["hr"])
  xs = data["xs"]
  rr = sp["xs_ratings_rows"]
  x = np.concatenate([data["usr"]["last"], xs["last"][rr]])
  y = np.full((len(x), len(USR) + 1), np.nan, np.float32)
  y[:len(data["usr"]["last"]), :len(USR)] = data["usr"]["ratings"]
  y[len(data["usr"]["last"]):, -1] = [xs["rows"][i].ratings[xs["j"]] for i in rr]
  wr, rinfo = head_fit.fit_ridge(x, y)
  for j, name in enumerate(USR + ["xstest-appropriate"]):
    w[:, NAMES.index(name)], info[name] = wr[:, j], rinfo[j]
  # verbosity: ridge on log characters of every stage-1 response
  texts_x = np.concatenate([allp["hc"], allp["hr"], x])
  lens = np.concatenate([allp["len_c"], allp["len_r"],
                         [len(e.response) for e in data["usr"]["rows"]],
                         [len(xs["rows"][i].response) for i in rr]])
  wv, vinfo = head_fit.fit_ridge(texts_x, np.log1p(lens.astype(np.float32))[:, None])
  w[:, NAMES.index("verbosity")], info["verbosity"] = wv[:, 0], vinfo[0]
  g = sp["gate_train"]
  ref = np.concatenate([g["hc"], g["hr"]]) @ w
  w = w / np.maximum(ref.std(0), 1e-8)
  return w, info


# --------------------------------------------------------------------------------- stage 2

def gate_config(seed: int, steps: int):
  from configs import armorm as armorm_conf
  c = armorm_conf.get_config("smollm2")
  c.objectives.names, c.objectives.verbosity = list(NAMES), "verbosity"
  c.armorm.update(gate_hidden=256, gate_layers=3)
  c.stage2.update(steps=steps, batch_size=512, lr=1e-3, checkpoint_every=steps)  # final only
  c.train.progress = False
  c.seed = seed
  return c


def stage2(workdir, config, w, t, train, apply_t):
  """Gate params through rmjax's stage-2 task; a finished workdir is read back (resumable)."""
  import pickle
  done = os.path.join(workdir, "params.pkl")
  if os.path.exists(done):
    with open(done, "rb") as f:
      return pickle.load(f)
  from experiments.armorm_shared import stage2 as run_stage2
  arrays = {k: train[k] for k in ("hc", "hr", "hx")}
  heads, params, final = run_stage2(config, workdir + ".run", w, t, arrays, arrays, apply_t)
  out = {"params": params, "final": final}
  os.makedirs(workdir, exist_ok=True)
  with open(done + ".tmp", "wb") as f:
    pickle.dump(out, f)
  os.replace(done + ".tmp", done)
  import shutil
  shutil.rmtree(workdir + ".run", ignore_errors=True)
  return out


def gate_scores(config, params, a, apply_t=True):
  """(reward_c, reward_r, gate [N, O]) of the ArmoRM heads on pair arrays a."""
  from rmjax.tasks import armorm
  heads = armorm.make_heads(config)
  oc = heads.apply({"params": params}, a["hc"], a["hx"], apply_transform=apply_t)
  orr = heads.apply({"params": params}, a["hr"], a["hx"], apply_transform=apply_t)
  return np.asarray(oc["reward"]), np.asarray(orr["reward"]), np.asarray(oc["gate"])


# ------------------------------------------------------------------------------------- run

def fit_bt_heads(sp, seed):
  """Linear and MLP BT heads on every pair stages 1 + 2 used; steps chosen on validation."""
  from rmjax.train.head_fit import train_member_heads
  allp = _cat(*sp["probe"].values())
  tr = {"c": np.concatenate([allp["hc"], sp["gate_train"]["hc"]]),
        "r": np.concatenate([allp["hr"], sp["gate_train"]["hr"]]),
        "xc": np.concatenate([allp["hx"], sp["gate_train"]["hx"]])}
  va = sp["gate_val"]
  out = {}
  for name, hidden, feats in (("bt_linear", 0, "last"), ("bt_mlp", 256, "both")):
    cat = (lambda h, x: h) if feats == "last" else (lambda h, x: np.concatenate([h, x], 1))
    xc, xr = cat(tr["c"], tr["xc"]), cat(tr["r"], tr["xc"])
    vc, vr = cat(va["hc"], va["hx"]), cat(va["hr"], va["hx"])
    n_steps = 40 * len(xc) // 64
    _, hist = train_member_heads(xc, xr, [seed], hidden=hidden, dropout=0.1 if hidden else 0.0,
                                 steps=n_steps, val=(vc, vr))
    best = int(np.argmin(hist["val"][:, 0])) + 1
    heads, _ = train_member_heads(xc, xr, [seed], hidden=hidden, dropout=0.1 if hidden else 0.0,
                                  steps=best)
    out[name] = (heads, cat, best)
  return out


def run_all(data, out_dir, steps):
  """Every split x gate seed: per-item correctness of every model on every evaluation set."""
  from rmjax.eval import stats
  from rmjax.tasks import armorm
  from rmjax.train.head_fit import member_scores
  evals = {**{f"mixed/{k}": v for k, v in data["eval"].items()},
           **{f"ood/{k}": v for k, v in data["ood"].items()}}
  splits, seeds = design()
  res = {"correct": {}, "gate_mean": {}, "runs": [], "splits": list(splits),
         "gate_seeds": list(seeds)}

  def put(model, setname, rc, rr):
    res["correct"].setdefault(model, {}).setdefault(setname, []).append(stats.pair_correct(rc - rr))

  for s in splits:
    sp = split(data, s)
    w, s1 = stage1(data, sp)
    g = sp["gate_train"]
    ref = np.concatenate([g["hc"], g["hr"]]) @ w
    cfg0 = gate_config(0, steps)
    t, decor = armorm.decorrelate(ref, cfg0)
    # single objectives and uniform (split-level): chosen on validation
    va = sp["gate_val"]
    val_obj = {n: stats.pair_accuracy((va["hc"] - va["hr"]) @ w[:, j])[0] for j, n in enumerate(NAMES)}
    best = max((n for n in NAMES if n != "verbosity"), key=val_obj.get)
    oracle = {}
    for ctx in CONTEXT_OBJECTIVE:
      m = sp["ctx_val"] == ctx
      acc = {n: stats.pair_accuracy((va["hc"][m] - va["hr"][m]) @ w[:, j])[0]
             for j, n in enumerate(NAMES) if n != "verbosity"}
      oracle[ctx] = max(acc, key=acc.get)
    bt = fit_bt_heads(sp, seed=s)
    for setname, a in evals.items():
      ctx = setname.split("/")[1]
      jb = NAMES.index(best)
      put("best_single(val)", setname, a["hc"] @ w[:, jb], a["hr"] @ w[:, jb])
      adj_c, adj_r = (a["hc"] @ w) @ t, (a["hr"] @ w) @ t
      keep = [j for j, n in enumerate(NAMES) if n != "verbosity"]
      put("uniform", setname, adj_c[:, keep].mean(1), adj_r[:, keep].mean(1))
      jo = NAMES.index(oracle.get(ctx, best))
      put("oracle_router", setname, a["hc"] @ w[:, jo], a["hr"] @ w[:, jo])
      for name, (heads, cat, _) in bt.items():
        put(name, setname, member_scores(heads, cat(a["hc"], a["hx"]))[0],
            member_scores(heads, cat(a["hr"], a["hx"]))[0])
    for gs in seeds:
      for apply_t in (True, False):
        cfg = gate_config(gs, steps)
        wd = os.path.join(out_dir, "stage2", f"split{s}_seed{gs}_{'T' if apply_t else 'noT'}")
        got = stage2(wd, cfg, w, t, g, apply_t)
        name = "gated(T)" if apply_t else "gated(no T)"
        for setname, a in evals.items():
          rc, rr, gate = gate_scores(cfg, got["params"], a, apply_t)
          put(name, setname, rc, rr)
          if apply_t:  # per set, and XSTest also per should-refuse / should-respond prompt
            subs = [None] + (list(np.unique(a["subset"])) if setname == "mixed/xstest" else [])
            for sub in subs:
              m = a["subset"] == sub if sub is not None else np.ones(len(rc), bool)
              key = setname if sub is None else f"{setname}/{sub.split('/')[-1]}"
              res["gate_mean"].setdefault(key, []).append(gate[m].mean(0))
    res["runs"].append({"split": s, "best_single_val": best, "val_objective_accuracy": val_obj,
                        "oracle": oracle, "bt_steps": {k: v[2] for k, v in bt.items()},
                        "stage1": {k: v for k, v in s1.items() if isinstance(v, dict)},
                        "spearman_verbosity_before": decor["spearman_before"],
                        "spearman_verbosity_after": decor["spearman_after"]})
    print(f"[armorm_gate] split {s}: best single (val) {best}, oracle {oracle}", flush=True)
  return res


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--cache", default="runs/features")
  p.add_argument("--out", default="runs/ec")
  p.add_argument("--report", default=None, help="where the report files go (default: --out)")
  p.add_argument("--steps", type=int, default=1000, help="stage-2 gate steps")
  p.add_argument("--n_boot", type=int, default=2000)
  p.add_argument("--spec", default="smollm2-135m", help="backbone of the feature cache")
  p.add_argument("--max_length", type=int, default=256)
  a = p.parse_args(argv)
  t0 = time.perf_counter()
  limit = 40 if smoke() else 0
  steps = 20 if smoke() else a.steps
  if smoke():  # the plumbing on a random tiny backbone: seconds, no real features
    a.spec, a.max_length = "tiny", 128
  data = load(a.cache, limit, a.spec, a.max_length)
  res = run_all(data, a.out, steps)
  from experiments import armorm_gate_stats
  result = armorm_gate_stats.analyse(res, data, n_boot=200 if smoke() else a.n_boot)
  result.update(seconds=round(time.perf_counter() - t0, 1), size="smoke" if smoke() else "full",
                steps=steps)
  armorm_gate_stats.write(result, a.report or a.out)
  print(json.dumps(result["summary"]))
  return result


if __name__ == "__main__":
  main()
  sys.exit(0)
