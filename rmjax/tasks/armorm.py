"""ArmoRM task: embeddings -> stage 1 (per-objective regression) -> verbosity de-correlation ->
stage 2 (gating MLP), as in ALGORITHMS.md section 1. `rmjax train --config configs/armorm.py:tiny`.

Each stage is a function experiments call (`read_data`, `embed`, `stage1`, `decorrelate`,
`stage2`); `run` chains them, the loop stages as `Run.stage`s of one run. The backbone is frozen;
its embeddings are computed once (`embed`, cached). Stage 1 is closed-form ridge per objective
for objectives with ratings and an L2 logistic (BT) probe for objectives known only from tagged
pairs; `armorm.stage1 = 'e2e'` instead trains backbone + heads (masked MSE, per-objective BT)
through the loop first. Stage 2 trains only the gate and beta through the loop on the cached
embeddings. The model (backbone + heads) is saved in `make_model`'s layout, for score/eval.
"""

from __future__ import annotations

import copy
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rmjax import losses
from rmjax.aot import check_rows, llama_flops
from rmjax.checkpoints.workdir import write_json_atomic
from rmjax.data import objectives as objs
from rmjax.data import ratings as rdata
from rmjax.data import specs
from rmjax.data.tokenize import ChatEncoder
from rmjax.errors import ConfigError
from rmjax.eval import armorm_report
from rmjax.inference import embed as emb
from rmjax.models.armorm import ArmoHeads, ArmoRM, RegressionRM
from rmjax.models.init import abstract_params, init_params
from rmjax.tasks import common
from rmjax.tasks.spec import TaskSpec
from rmjax.train import head_fit
from rmjax.train.loop import Task, plan, train
from rmjax.train.run import Run, data_info

def make_model(config, cfg, extras=None) -> ArmoRM:
  """The scoring model; the prompt-end token pattern comes from model_config.json's extras
  (found from the tokenizer at train time), else from `armorm.prompt_pattern`."""
  a = config.armorm
  pattern = (extras or {}).get("prompt_pattern", a.prompt_pattern)
  return ArmoRM(cfg, len(config.objectives.names), tuple(int(t) for t in pattern),
                gate_hidden=a.gate_hidden, gate_layers=a.gate_layers, gate_dropout=a.gate_dropout,
                temperature=a.temperature)


def make_heads(config) -> ArmoHeads:
  a = config.armorm
  return ArmoHeads(len(config.objectives.names), a.gate_hidden, a.gate_layers, a.gate_dropout,
                   a.temperature)


# ------------------------------------------------------------------- verbosity de-correlation

def decorrelate(rewards, config):
  """(T [O, O], report) from stage-1 rewards [N, O] on the reference responses."""
  names = list(config.objectives.names)
  v = objs.verbosity_index(names, config.objectives.verbosity)
  lam, conv = losses.verbosity_penalties(rewards, v, threshold=config.armorm.corr_threshold)
  t = losses.verbosity_transform(lam, v)
  after = rewards @ t
  corr = lambda r: {n: losses.spearman(r[:, j], rewards[:, v]) for j, n in enumerate(names)}
  return t, {"verbosity": names[v], "penalties": dict(zip(names, map(float, lam))),
             "converged": dict(zip(names, map(bool, conv))), "spearman_before": corr(rewards),
             "spearman_after": corr(after)}


# ----------------------------------------------------------------------------- stage 2: gate

class SampleBatcher:
  """Batches of `batch_size` rows drawn WITH replacement (stage-2_train.py's randint); the
  position is the step count, so resuming replays the same draws."""

  def __init__(self, arrays: dict, batch_size: int, seed: int = 0):
    self.arrays, self.batch_size, self.seed, self.step = arrays, batch_size, seed, 0
    self.n = len(next(iter(arrays.values())))

  def __iter__(self):
    return self

  def __next__(self):
    idx = np.random.default_rng([self.seed, self.step]).integers(0, self.n, self.batch_size)
    self.step += 1
    return dict({k: v[idx] for k, v in self.arrays.items()},
                weight=np.ones(self.batch_size, np.float32))

  def state(self):
    return {"step": self.step}

  def restore(self, state):
    self.step = int(state["step"])


def fixed_batches(arrays: dict, batch_size: int):
  """In-order batches padded to `batch_size` (weight 0 on padding rows), for eval."""
  n = len(next(iter(arrays.values())))
  def gen():
    for s in range(0, n, batch_size):
      part = {k: v[s:s + batch_size] for k, v in arrays.items()}
      m = len(next(iter(part.values())))
      pad = lambda v: np.concatenate([v, np.zeros((batch_size - m,) + v.shape[1:], v.dtype)])
      yield dict({k: pad(v) for k, v in part.items()},
                 weight=pad(np.ones(m, np.float32)))
  return gen


def stage2_task(config, heads: ArmoHeads, w, t, train_arrays, eval_arrays) -> Task:
  """Loop task: params = ArmoHeads params; regression (W) and transform (T) are loaded and
  frozen, only 'gate' and 'beta' train. Arrays: hc, hr, hx [N, D]."""
  flag = bool(config.armorm.apply_transform_in_training)
  d = train_arrays["hc"].shape[1]

  z = jnp.zeros((2, d), jnp.float32)

  def load(params, shardings):
    params = dict(params)
    params["regression"] = {"kernel": jax.device_put(jnp.asarray(w), shardings["regression"]["kernel"])}
    params["transform"] = jax.device_put(jnp.asarray(t), shardings["transform"])
    return params

  def loss_fn(params, batch, rng):
    sc, sr = heads.apply({"params": params}, batch["hc"], batch["hr"], batch["hx"],
                         deterministic=False, apply_transform=flag, rngs={"dropout": rng},
                         method=ArmoHeads.pair_scores)
    loss = losses.bradley_terry(sc, sr, weight=batch["weight"])
    return loss, losses.pair_metrics(sc, sr, batch["weight"])

  def eval_fn(params, batch):
    sc, sr = heads.apply({"params": params}, batch["hc"], batch["hr"], batch["hx"],
                         method=ArmoHeads.pair_scores)
    return {"chosen": sc, "rejected": sr, "weight": batch["weight"]}

  def summarize(out):
    keep = out["weight"] > 0
    rc, rr = out["chosen"][keep], out["rejected"][keep]
    return {"accuracy": float(np.mean(rc > rr)), "loss": float(np.mean(np.logaddexp(0, rr - rc)))}

  bs = config.stage2.batch_size
  has_eval = eval_arrays is not None and len(eval_arrays["hc"])
  return Task(init_params=lambda rng: init_params(heads, rng, z, z), loss_fn=loss_fn,
              train_batches=SampleBatcher(train_arrays, bs, config.seed),
              eval_fn=eval_fn if has_eval else None,
              eval_batches=fixed_batches(eval_arrays, bs) if has_eval else None,
              summarize_eval=summarize, load_pretrained=load,
              trainable=lambda k: k in ("gate", "beta"), global_batches=True)


def stage2_config(config):
  """The loop config of stage 2: AdamW lr 1e-3, wd 0, cosine to 0 without warmup; checkpoints
  every `stage2.checkpoint_every` steps (0: four a run)."""
  c = copy.deepcopy(config)
  s = config.stage2
  with c.unlocked():
    c.optim.update(lr=s.lr, warmup_steps=0, schedule="cosine", final_lr_frac=0.0,
                   weight_decay=0.0, clip_norm=0.0, accum_steps=1)
    c.train.update(steps=s.steps, batch_size=s.batch_size, log_every=max(1, s.steps // 10),
                   eval_every=s.steps, async_checkpoint=False,
                   checkpoint_every=s.get("checkpoint_every", 0) or max(1, s.steps // 4),
                   tensorboard=False, best_metric="")
  return c


# --------------------------------------------------------------------- end-to-end stage 1 (opt)

def e2e_task(config, cfg, backbone_params, ratings_rows, ratings, pair_rows, pair_obj,
             pad_id: int) -> Task:
  """Backbone + regression heads trained together: masked MSE on ratings + per-objective BT on
  tagged pairs (each pair on its own objective's head), through the generic loop."""
  o = len(config.objectives.names)
  model = RegressionRM(cfg, o)
  t = config.data.max_length
  bs = config.train.batch_size

  pad = lambda rows: emb.pad_rows(rows, len(rows), t, pad_id)  # noqa: E731
  ids, mask = pad(ratings_rows)
  arrays_r = {"ids": ids, "mask": mask, "ratings": np.nan_to_num(ratings),
              "rating_mask": (~np.isnan(ratings)).astype(np.float32)}
  arrays_p = None
  if pair_rows:
    ci, cm = pad([c for c, _ in pair_rows])
    ri, rm = pad([r for _, r in pair_rows])
    arrays_p = {"chosen_ids": ci, "chosen_mask": cm, "rejected_ids": ri, "rejected_mask": rm,
                "objective": np.asarray(pair_obj, np.int32)}

  class Mixed(SampleBatcher):
    """Ratings rows and (when present) tagged pairs, both drawn with replacement."""
    def __next__(self):
      rng = np.random.default_rng([self.seed, self.step])
      self.step += 1
      out = {k: v[rng.integers(0, len(ids), bs)] for k, v in arrays_r.items()}
      if arrays_p is not None:
        j = rng.integers(0, len(arrays_p["objective"]), bs)
        out.update({k: v[j] for k, v in arrays_p.items()})
      return out

  def loss_fn(params, batch, rng):
    pred = model.apply({"params": params}, batch["ids"], batch["mask"])
    mse = losses.masked_mse(pred, batch["ratings"], batch["rating_mask"])
    metrics = {"mse": mse}
    loss = mse
    if "objective" in batch:
      both = model.apply({"params": params},
                         jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"]]),
                         jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]]))
      bt = losses.objective_bradley_terry(both[:bs], both[bs:], batch["objective"])
      loss = loss + config.armorm.e2e_bt_coef * bt
      metrics["bt"] = bt
    return loss, metrics

  return Task(init_params=lambda rng: init_params(model, rng), loss_fn=loss_fn,
              train_batches=Mixed(arrays_r, bs, config.seed),
              load_pretrained=lambda p, s: common.params_with_backbone(p, backbone_params, s),
              model_config=cfg, global_batches=True)


# ----------------------------------------------------------------------------------- driver

def data_stats(d, read: dict, cut: dict, n_eval: int) -> dict:
  """The data report's stats (`rmjax.train.run.data_info`) over the train sources (ratings,
  objective pairs, pairs): records read, rated responses + pairs kept, dropped by reason,
  records (a rated response, or a pair with either side) truncated to max_length."""
  dropped: dict = {}
  for st in read.values():
    for reason, n in st["dropped"].items():
      dropped[reason] = dropped.get(reason, 0) + n
  truncated = sum(cut["ratings"]) + sum(
      c or r for key in ("tagged", "train") for c, r in zip(cut[f"{key}_c"], cut[f"{key}_r"]))
  lost = [spec for spec, st in read.items() if st["dropped"]]
  return data_info(", ".join(lost) or d.source, sum(st["n_in"] for st in read.values()),
                   sum(st["kept"] for st in read.values()), n_eval, dropped, truncated,
                   sources=read, truncated_by_set={k: int(sum(v)) for k, v in cut.items()})


def _log(msg):
  if jax.process_index() == 0:
    print(f"[armorm] {msg}", flush=True)


def read_data(config, encoder) -> dict:
  """Every train source read and tokenized: {'rows': {set: token rows}, 'ratings' [N, O],
  'tagged' pairs, 'eval_pairs', 'info' (the data report's stats)}. Row sets: ratings,
  tagged_c/_r, train_c/_r, eval_c/_r, reference_c/_r."""
  d, a = config.data, config.armorm
  names = list(config.objectives.names)
  read: dict = {}  # per train source: {n_in, kept, dropped by reason}, for the data report
  rated = specs.load_ratings_spec(d.ratings, objs.resolve(names), config.seed,
                                  unrated=tuple(d.unrated), stats=read)
  tagged = specs.load_objective_pairs(d.objective_pairs, names, config.seed,
                                      stats=read) if d.objective_pairs else []
  train_pairs = specs.load_pairs_spec(d.source, config.seed, stats=read)
  eval_pairs = specs.load_pairs_spec(d.eval_source, config.seed + 1) if d.eval_source else []
  ref_pairs = specs.load_pairs_spec(a.reference, config.seed + 2) if a.reference else train_pairs
  _log(f"{len(rated)} rated responses, {len(tagged)} tagged pairs, {len(train_pairs)} train / "
       f"{len(eval_pairs)} eval pairs")
  ratings = np.stack([e.ratings for e in rated]) if rated else np.zeros((0, len(names)), np.float32)
  if d.length_objective:  # a verbosity objective rated by response length (no rated one)
    ratings[:, objs.verbosity_index(names, d.length_objective)] = rdata.length_rating(
        [e.response for e in rated])
  cut = {}  # per row set: which rows were truncated to max_length
  rows = {"ratings": emb.encode_rows(encoder, [(e.messages, e.response) for e in rated],
                                     cut.setdefault("ratings", []))}
  for key, pairs in (("tagged", [t.pair for t in tagged]), ("train", train_pairs),
                     ("eval", eval_pairs), ("reference", ref_pairs if a.reference else [])):
    # one prompt cut per pair for both sides, as `rmjax eval` reads them (tokenize.truncate)
    rows[f"{key}_c"], rows[f"{key}_r"] = emb.encode_pair_rows(encoder, pairs,
                                                              cut.setdefault(f"{key}_c", []))
    cut[f"{key}_r"] = cut[f"{key}_c"]
  return {"rows": rows, "ratings": ratings, "tagged": tagged, "eval_pairs": eval_pairs,
          "info": data_stats(d, read, cut, n_eval=len(eval_pairs))}


def embed(config, cfg, backbone_params, rows: dict, pattern, pad_id: int, cache_dir: str) -> dict:
  """{set: (h_response, h_prompt)}: frozen-backbone features of every row set (cached in
  `cache_dir`, fingerprinted by the rows and weights; a set equal to another is computed once)."""
  settings = {"spec": config.model.spec, "max_length": config.data.max_length,
              "pattern": list(pattern), "backbone": emb.params_fingerprint(backbone_params),
              "kind": "armo"}
  h = {}
  for key, rs in rows.items():
    if not rs:
      h[key] = (np.zeros((0, cfg.hidden_size), np.float32),) * 2
      continue
    same = next((k for k in h if rows[k] == rs), None)  # e.g. train pairs == tagged pairs
    if same is not None:
      h[key] = h[same]
      continue
    got = emb.cached(cache_dir, key, rs, settings, lambda rs=rs, key=key: emb.armo_features(
        cfg, backbone_params, rs, pattern, batch_size=config.armorm.embed_batch_size,
        pad_id=pad_id, progress=config.train.progress, desc=f"embed {key}"))
    h[key] = (got["h_response"], got["h_prompt"])
  return h


def stage1(config, x, ratings, pair_c=None, pair_r=None, pair_objective=()) -> tuple:
  """(W [D, O], info per objective name): ridge per rated objective (no intercept, alpha from
  `armorm.ridge_alphas` by validation MSE) on features x [N, D] and ratings [N, O] (NaN =
  unrated); an L2 logistic (BT) probe on tagged pairs' features for an objective no rating
  covers (`pair_objective`: each pair's objective index)."""
  a, o = config.armorm, ratings.shape[1]
  w, info = (head_fit.fit_ridge(x, ratings, tuple(a.ridge_alphas)) if len(ratings) else
             (np.zeros((x.shape[1], o), np.float32), [None] * o))
  of = np.asarray(pair_objective, int)
  for j in range(o):
    if info[j] is None and (of == j).any():
      w[:, j], info[j] = head_fit.fit_bt_probe(pair_c[of == j], pair_r[of == j],
                                               l2=a.bt_probe_l2, steps=a.bt_probe_steps)
  return w, dict(zip(config.objectives.names, info))


def stage2(config, where, w, t, train_arrays, eval_arrays) -> tuple:
  """(heads, trained head params, final metrics): the gate and beta through the loop
  (`stage2_task` under `stage2_config`) in `where`, a workdir or a `Run.stage`."""
  heads = make_heads(config)
  task = stage2_task(config, heads, w, t, train_arrays, eval_arrays)
  final, state = train(stage2_config(config), where, task, return_state=True)
  return heads, jax.device_get(state.params), final


def run(config, workdir: str) -> dict:
  """The whole pipeline as stages of one run: data, embeddings, stage 1 (closed form, or 'e2e'
  through the loop in `stage1_e2e/`), the verbosity transform, stage 2 (`stage2/`), the model
  saved in `workdir/checkpoints`; returns the final metrics (also in workdir/armorm.json)."""
  a, names = config.armorm, list(config.objectives.names)
  if a.stage1 not in ("ridge", "e2e"):
    raise ConfigError(f"armorm.stage1 must be 'ridge' or 'e2e', got {a.stage1!r}")
  cfg, backbone_params = common.backbone(config)
  tok = common.tokenizer(config)
  encoder = ChatEncoder(tok, config.data.max_length)
  pattern = tuple(emb.prompt_end_pattern(tok))  # recorded in model_config.json for scoring
  _log(f"objectives {names}; prompt pattern {list(pattern)}")
  data = read_data(config, encoder)
  rows, ratings, tagged = data["rows"], data["ratings"], data["tagged"]
  extras = {"prompt_pattern": list(pattern)}
  main = Run(config, workdir, model_config=cfg, model_extras=extras, desc="armorm",
             info=data["info"])  # the data report; --strict fails here, nothing written yet

  stage1_info, w = {}, None
  if a.stage1 == "e2e":
    task = e2e_task(config, cfg, backbone_params, rows["ratings"], ratings,
                    list(zip(rows["tagged_c"], rows["tagged_r"])), [t.objective for t in tagged],
                    encoder.pad_id)
    e2e_conf = copy.deepcopy(config)
    with e2e_conf.unlocked():
      e2e_conf.train.steps = a.e2e_steps
    stage1_info["e2e"], state = train(e2e_conf, main.stage("stage1_e2e", e2e_conf, model_config=cfg),
                                      task, return_state=True)
    p = jax.device_get(state.params)
    backbone_params, w = p["backbone"], np.asarray(p["regression"]["kernel"])
  h = embed(config, cfg, backbone_params, rows, pattern, encoder.pad_id,
            os.path.join(workdir, "embeddings"))
  if w is None:
    w, stage1_info["objectives"] = stage1(config, h["ratings"][0], ratings, h["tagged_c"][0],
                                          h["tagged_r"][0], [t.objective for t in tagged])
  _log(f"stage 1: {json.dumps(stage1_info.get('objectives', {}), default=str)[:400]}")

  ref = "reference" if a.reference else "train"
  t, decor = decorrelate(np.concatenate([h[f"{ref}_c"][0], h[f"{ref}_r"][0]]) @ w, config)
  _log(f"verbosity penalties {decor['penalties']}")
  arrays = lambda k: {"hc": h[f"{k}_c"][0], "hr": h[f"{k}_r"][0], "hx": h[f"{k}_c"][1]}
  eval_pairs = data["eval_pairs"]
  heads, head_params, s2_final = stage2(config, main.stage("stage2", stage2_config(config)), w, t,
                                        arrays("train"), arrays("eval") if eval_pairs else None)

  # the full model: backbone + heads, in make_model's layout
  shapes = nn.unbox(abstract_params(make_model(config, cfg, extras)))
  params = {"backbone": jax.tree_util.tree_map(lambda x, s: np.asarray(x, s.dtype), backbone_params,
                                               shapes["backbone"]),
            "heads": jax.tree_util.tree_map(np.asarray, head_params)}
  main.save_final(int(s2_final.get("step", 0) or stage2_config(config).train.steps), params)
  main.close()

  report = {"stage1": stage1_info, "decorrelation": decor, "stage2": s2_final}
  if eval_pairs:
    report["eval"] = armorm_report.pair_eval(heads, head_params, arrays("eval"), eval_pairs, names)
    armorm_report.plots(os.path.join(workdir, "eval"), report["eval"], decor)
  write_json_atomic(os.path.join(workdir, "armorm.json"), report)
  summary = {"stage2_" + k: v for k, v in s2_final.items() if isinstance(v, (int, float))}
  if "eval" in report:
    summary.update({k: v for k, v in report["eval"].items() if isinstance(v, (int, float))})
  return summary


def compile_steps(config, mesh) -> list:
  """`rmjax compile`: stage 2 (the gate on cached features, `stage2_task`) and, with
  armorm.stage1='e2e', the end-to-end stage-1 step (`e2e_task`), each the Task its stage
  trains, through the loop's own plan, on stand-in data of the batches' shapes."""
  cfg, out = common.backbone_config(config), []
  if config.armorm.stage1 == "e2e":
    conf = copy.deepcopy(config)
    with conf.unlocked():
      conf.train.steps = config.armorm.e2e_steps
    b, o = config.train.batch_size, len(config.objectives.names)
    check_rows(b, mesh, "train.batch_size")
    row = np.ones((2,), np.int32)
    pair_rows = [(row, row)] if config.data.get("objective_pairs", "") else []
    task = e2e_task(conf, cfg, None, [row], np.zeros((1, o), np.float32), pair_rows, [0],
                    pad_id=0)
    spec = {k: (v.shape, v.dtype) for k, v in next(task.train_batches).items()}  # the batcher's
    flops = llama_flops(cfg, b * (3 if pair_rows else 1), config.data.max_length)
    out.append(plan(conf, task, mesh, check_sharding=False).compile_step("armorm.e2e_step",
                                                                          spec, flops))
  conf = stage2_config(config)
  b, d = conf.train.batch_size, cfg.hidden_size
  check_rows(b, mesh, "stage2.batch_size")
  arrays = {k: np.zeros((1, d), np.float32) for k in ("hc", "hr", "hx")}  # features: float32
  task = stage2_task(conf, make_heads(config), None, None, arrays, None)
  spec = dict({k: ((b, d), "float32") for k in arrays}, weight=((b,), "float32"))
  out.append(plan(conf, task, mesh, check_sharding=False).compile_step("armorm.stage2_step", spec))
  return out


SPEC = TaskSpec(name="armorm", make_model=make_model, run=run, compile_steps=compile_steps)
