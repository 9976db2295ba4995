"""The assembly every pair task shares (BT, ensembles, GRM, SALMON, and new pair methods).

`forward_pairs` runs chosen then rejected rows through one forward; `pair_data` turns the
config's data specs into a resumable train batcher and ordered eval batches; `pair_spec` turns
a `PairMethod` (a loss, plus what differs) into the method's `TaskSpec`: the loop `Task`
`rmjax train` runs and the step `rmjax compile` compiles, from the same pieces.

Head-only training (`train.freeze_backbone`, a reward head on pooled features, unless
`train.cache_features` is off): the frozen
backbone runs once over every chosen and rejected sequence through
`rmjax.inference.embed.pooled_features` (cached on disk, fingerprinted by the exact token rows
and the backbone weights), and the batches then carry `chosen_feat` / `rejected_feat` [B, D]
instead of token ids: a step costs a head's forward and backward, not a backbone pass. The
params keep the backbone (frozen: no gradients, no optimizer state), so the checkpoint scores
exactly like a full model.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional

import jax.numpy as jnp
import numpy as np

from rmjax import losses
from rmjax import sharding as shd
from rmjax.aot import check_rows, llama_flops
from rmjax.data.batching import MappedBatches, PairBatcher, tokenize_pairs
from rmjax.data.packing import DEFAULT_PACK_FACTOR, PackedBatches
from rmjax.data.specs import train_eval_pairs
from rmjax.data.tokenize import ChatEncoder
from rmjax.errors import ConfigError
from rmjax.eval.metrics import pair_report
from rmjax.inference import embed
from rmjax.models import attention, lora
from rmjax.models.init import init_params
from rmjax.models.llama import Llama
from rmjax.models.reward_model import RewardModel
from rmjax.tasks import common
from rmjax.tasks.spec import TaskSpec
from rmjax.train.loop import Task, plan

FEATURE_KEYS = ("chosen_feat", "rejected_feat")


def forward_pairs(model, params, batch, *, rng=None):
  """Chosen rows then rejected rows through one forward (token ids, packed rows, or cached
  features for head-only training); returns (out_chosen, out_rejected)."""
  kw = {} if rng is None else {"rngs": {"dropout": rng}, "deterministic": False}
  if "chosen_feat" in batch:
    x = jnp.concatenate([batch["chosen_feat"], batch["rejected_feat"]], axis=0)
    out = model.apply({"params": params}, x, method=RewardModel.score_features, **kw)
  elif "segment_ids" in batch:  # packed rows (rmjax.data.packing): rewards at segment ends
    at = jnp.concatenate([batch["chosen_at"], batch["rejected_at"]], axis=0)
    seg = batch["segment_ids"]
    out = model.apply({"params": params}, batch["input_ids"], seg > 0, segment_ids=seg,
                      pool_at=at, **packed_kwargs(batch), **kw)
    if "logits" in out:  # [R, L, V] of the packed rows: both sides read it (GRM's regulariser)
      logits = out.pop("logits")
      b = batch["weight"].shape[0]
      return ({**{k: v[:b] for k, v in out.items()}, "logits": logits},
              {**{k: v[b:] for k, v in out.items()}, "logits": logits})
  else:
    ids = jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"]], axis=0)
    mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]], axis=0)
    out = model.apply({"params": params}, ids, mask, **kw)
  b = batch["weight"].shape[0]
  return {k: v[:b] for k, v in out.items()}, {k: v[b:] for k, v in out.items()}


def packed_kwargs(batch) -> dict:
  """The model inputs of a packed batch beyond ids and segments: explicit positions and, for
  prompt-shared rows, the prefix segments (`rmjax.data.packing`)."""
  if "prefix_ids" not in batch:
    return {}
  return {"prefix_ids": batch["prefix_ids"], "positions": batch["positions"]}


def pair_pack_check(config) -> None:
  """Prompt-shared packing needs a mask splash cannot express (`rmjax.models.attention`)."""
  d = config.data
  if d.get("packing", False) and d.get("share_prompt", False) and attention.resolve(
      config.model.attention) == "splash":
    raise ConfigError("config key data.share_prompt: prompt-shared packed rows need a prefix "
                      "mask that splash attention cannot express; set data.share_prompt=False "
                      "or model.attention=blocked|xla|dot_product")


def bt_pair_loss(c, r, batch, loss_cfg):
  """The Bradley-Terry loss of a batch's chosen / rejected rewards [B] under `config.loss`
  (margins, label smoothing, reward centering), rows weighted by `weight`."""
  w = batch["weight"]
  loss = losses.bradley_terry(c, r, margin=batch["margin"] if loss_cfg.use_margin else None,
                              label_smoothing=loss_cfg.label_smoothing, weight=w)
  if loss_cfg.centering_coef:
    loss = loss + loss_cfg.centering_coef * losses.reward_centering(c, r, weight=w)
  return loss


def pair_eval_fn(model):
  def eval_fn(params, batch):
    c, r = forward_pairs(model, params, batch)
    return {"chosen": c["reward"], "rejected": r["reward"], "weight": batch["weight"]}
  return eval_fn


def summarize_pairs(examples):
  """Eval summary over the fixed, ordered eval examples (padding rows dropped)."""
  subsets = [e.subset for e in examples]
  len_c = [len(e.chosen) for e in examples]
  len_r = [len(e.rejected) for e in examples]

  def summarize(out):
    keep = out["weight"] > 0
    rc, rr = out["chosen"][keep], out["rejected"][keep]
    rep = pair_report(rc, rr, subsets, len_c, len_r)
    rep["loss"] = float(np.mean(np.logaddexp(0.0, -(rc - rr))))
    return rep
  return summarize


def pair_data(config, tok):
  """(train batcher, eval batches fn or None, eval examples, stats) for a pair task; no eval
  examples (data.eval_fraction=0 and no eval_source) -> no eval batches, the run trains
  without eval; an eval set smaller than one batch is padded with weight-0 rows."""
  d = config.data
  train, evals, stats = train_eval_pairs(config)
  encoder = ChatEncoder(tok, d.max_length)
  cache = d.get("token_cache", "")
  train_tok, tstats = tokenize_pairs(train, encoder, on_overlong=d.on_overlong, token_cache=cache)
  eval_tok, estats = tokenize_pairs(evals, encoder, on_overlong="truncate", token_cache=cache)
  stats = dict(stats, train_tokenize=tstats, eval_tokenize=estats)
  batcher = PairBatcher(train_tok, config.train.batch_size, buckets=tuple(d.buckets),
                        seed=config.seed)
  if d.get("packing", False):
    batcher = packed_batches(config, batcher)
    stats["packing"] = {"row_length": batcher.row_length,
                        "length_multiple": batcher.length_multiple, "ladder": batcher.ladder}
  eval_batches = None
  if evals:
    eval_batches = PairBatcher(eval_tok, config.train.batch_size, buckets=tuple(d.buckets),
                               seed=config.seed, shuffle=False,  # fewer than a batch is fine
                               drop_remainder=False).eval_batches
  return batcher, eval_batches, evals, stats


def packed_batches(config, batcher) -> PackedBatches:
  """`data.packing`: the train batches packed into rows of up to `data.pack_length` tokens
  (default 3 x max_length: any pair fits one row, and longer rows leave less of themselves
  empty), the row count a multiple of the mesh's batch shards; with `data.pack_ladder` the
  shapes come from a fixed set (`rmjax.data.packing.shape_ladder`), else per batch the multiple
  of `data.pack_length_multiple` that packs it into the fewest tokens.
  Several processes: each packs its block of pairs and all pad to the largest row count."""
  if config.train.freeze_backbone and config.train.get("cache_features", True):
    raise ConfigError("config key data.packing: head-only training on cached features has no "
                      "token batches to pack; set train.cache_features=False or packing=False")
  pair_pack_check(config)
  length = config.data.get("pack_length", 0) or DEFAULT_PACK_FACTOR * config.data.max_length
  mesh = shd.make_mesh(tuple(config.mesh.shape))
  block = shd.batch_shard(mesh)
  return PackedBatches(batcher, length, shd.batch_divisor(mesh) // block[1],
                       bool(config.data.get("share_prompt", False)), block=block,
                       length_multiple=int(config.data.get("pack_length_multiple", 0)),
                       ladder=bool(config.data.get("pack_ladder", True)))


# ------------------------------------------------------------------------ head-only features

def feature_batches(batcher, feats: dict) -> MappedBatches:
  """A pair batcher whose batches carry cached features instead of token ids (same order,
  same position state: resuming is exact)."""
  return MappedBatches(batcher, lambda b: with_features(b, feats))


def with_features(batch: dict, feats: dict) -> dict:
  idx = batch["index"]
  out = {k: v for k, v in batch.items() if not k.endswith(("_ids", "_mask"))}
  out.update(chosen_feat=feats["chosen"][idx], rejected_feat=feats["rejected"][idx])
  return out


def feature_cache_dir(config) -> str:
  return (config.data.get("feature_cache", "") or os.environ.get("RMJAX_CACHE")
          or os.path.join(os.path.expanduser("~"), ".cache", "rmjax", "features"))


def pair_features(config, cfg, backbone_params, tokenized, name: str) -> dict:
  """{'chosen', 'rejected'}: pooled backbone features [N, D] of every pair, cached."""
  rows = [list(s) for s in tokenized.chosen] + [list(s) for s in tokenized.rejected]
  settings = {"spec": config.model.spec, "dtype": config.model.dtype,
              "backbone": embed.params_fingerprint(backbone_params), "kind": "pooled_last"}
  compute = lambda: {"pooled": embed.pooled_features(  # noqa: E731
      cfg, backbone_params, rows, batch_size=config.train.batch_size, pad_id=tokenized.pad_id,
      progress=config.train.progress, desc=f"features {name}")}
  pooled = embed.cached(feature_cache_dir(config), f"{name}-{embed.fingerprint(rows, settings)[:16]}",
                        rows, settings, compute)["pooled"]
  n = len(tokenized)
  return {"chosen": pooled[:n], "rejected": pooled[n:]}


def head_only(config, model) -> bool:
  """Whether this run trains a head on cached features (a frozen backbone under a pooled head)."""
  return (bool(config.train.freeze_backbone) and config.train.get("cache_features", True)
          and isinstance(model, RewardModel) and not model.keep_lm_logits)


# ------------------------------------------------------------------------------- the method

REFERENCE = "reference"  # the frozen base LM a method's loss reads (GRM's dpo_ref), when copied


def reward_model(config, cfg, *, keep_lm_logits: bool = False) -> RewardModel:
  """Backbone + scalar, MLP or K-member head per `config.model` (LoRA-wrapped under
  `model.lora`): the pair methods' default model, for training and for `rmjax score/eval`."""
  m = config.model
  return lora.from_config(config, RewardModel(
      cfg, head=m.head, head_hidden=m.head_hidden, head_dropout=m.head_dropout,
      members=config.get("ensemble", {}).get("members", 1), keep_lm_logits=keep_lm_logits,
      stop_backbone_grad=config.train.freeze_backbone))


@dataclasses.dataclass(frozen=True)
class PairMethod:
  """A pair reward-model method: a loss, plus where it differs from the shared assembly that
  `pair_spec` does once (data, backbone, head-only features, LoRA, packing, compile steps).
  Every hook but `loss` is optional; `cfg` is the backbone's LlamaConfig."""
  loss: Callable  # (config, model, cfg) -> loss_fn(params, batch, rng) -> (loss, metrics)
  model: Callable = reward_model  # (config, cfg) -> the scoring model (`rmjax score/eval`)
  train_model: Optional[Callable] = None  # (config, cfg) -> the model the loss runs, if another
  check: Optional[Callable] = None  # config -> None; refuses bad keys before data is read
  data: Callable = pair_data  # (config, tokenizer) -> (batcher, eval batches, examples, stats)
  example_arrays: Optional[Callable] = None  # (config, n) -> {key: [n, ...]}: rows by `index`
  init: Optional[Callable] = None  # (config, model) -> init_params(rng) -> boxed params
  load: Optional[Callable] = None  # (config, backbone params) -> load_pretrained(params, sh)
  reference: Optional[Callable] = None  # config -> the loss reads a frozen base LM (REFERENCE)
  eval: Optional[Callable] = None  # scoring model -> eval_fn(params, batch) (`pair_eval_fn`)
  summary: Optional[Callable] = None  # eval examples -> summarize(out) (`summarize_pairs`)
  info: Optional[Callable] = None  # config -> dict for the run info
  passes: Optional[Callable] = None  # config -> backbone passes a step makes (FLOPs; 1)


def pair_spec(name: str, method: PairMethod, **fields) -> TaskSpec:
  """The TaskSpec of a pair method: `build` (train) and `compile_steps` (`rmjax compile`) from
  the same pieces; `fields` are further TaskSpec fields (score_ids, collect, run) or replace
  these."""
  return TaskSpec(name=name, **{
      "make_model": lambda config, cfg, extras=None: method.model(config, cfg),
      "build": lambda config: build_pairs(config, method),
      "compile_steps": lambda config, mesh: compile_pairs(config, method, mesh, name), **fields})


def _reads_reference(config, method) -> bool:
  return bool(method.reference and method.reference(config))


def _core(config, method: PairMethod, cfg) -> tuple:
  """What train and compile share: (Task without data or weights, trained model, scoring
  model, frozen groups). A loss that reads a reference gets a frozen copy of the base LM as
  `params[REFERENCE]` (under LoRA none: the base itself, `lora.adapters_off`)."""
  model = (method.train_model or method.model)(config, cfg)
  score = method.model(config, cfg) if method.train_model else model
  lora_cfg = config.model.get("lora")
  init = method.init(config, model) if method.init else lambda rng: init_params(model, rng)
  frozen = ()
  if _reads_reference(config, method) and lora.settings(lora_cfg) is None:
    frozen, own = (REFERENCE,), init  # a copy: the backbone's logical names, its shardings
    init = lambda rng: dict(own(rng), **{REFERENCE: init_params(Llama(cfg), rng)})  # noqa: E731
  freeze = set(frozen) | ({"backbone"} if config.train.freeze_backbone else set())
  task = Task(init_params=init, loss_fn=method.loss(config, lora.train_model(model, lora_cfg), cfg),
              train_batches=None, trainable=(lambda k: k not in freeze) if freeze else None)
  return task, model, score, frozen


def without_reference(params):
  return {k: v for k, v in params.items() if k != REFERENCE}


def build_pairs(config, method: PairMethod) -> Task:
  """`rmjax train`'s loop Task of a pair method: every record read before a model loads, the
  backbone swapped in after init (and copied into the frozen reference), head-only training
  on cached features, per-example arrays by index, LoRA when configured."""
  if method.check:
    method.check(config)
  batcher, eval_batches, evals, stats = method.data(config, common.tokenizer(config))
  cfg, backbone_params = common.backbone(config)
  arrays = method.example_arrays(config, len(batcher.data)) if method.example_arrays else {}
  task, model, score, frozen = _core(config, method, cfg)
  if head_only(config, model):
    feats = pair_features(config, cfg, backbone_params, batcher.data, "train")
    batcher = feature_batches(batcher, feats)
    if eval_batches is not None:
      source = eval_batches  # PairBatcher.eval_batches: its batcher holds the eval pairs
      eval_feats = pair_features(config, cfg, backbone_params, source.__self__.data, "eval")
      eval_batches = lambda: (with_features(b, eval_feats) for b in source())  # noqa: E731
    stats = dict(stats, head_only="cached backbone features")
  if arrays:
    batcher = MappedBatches(batcher, lambda b: dict(b, **{k: v[b["index"]]
                                                          for k, v in arrays.items()}))
  load = (method.load(config, backbone_params) if method.load else
          lambda p, s: common.params_with_backbone(p, backbone_params, s))
  eval_fn = (method.eval or pair_eval_fn)(score)
  if frozen:
    own_load, own_eval = load, eval_fn

    def load(params, shardings):  # the reference is the pretrained backbone, frozen
      ref = common.placed(backbone_params, params[REFERENCE], shardings[REFERENCE])
      return dict(own_load(params, shardings), **{REFERENCE: ref})
    eval_fn = lambda params, batch: own_eval(without_reference(params), batch)  # noqa: E731
  task = dataclasses.replace(
      task, train_batches=batcher, eval_fn=eval_fn if eval_batches else None,
      eval_batches=eval_batches, summarize_eval=(method.summary or summarize_pairs)(evals),
      load_pretrained=common.with_pretrained_head(config, load),
      info=dict(stats, **(method.info(config) if method.info else {})), model_config=cfg)
  return lora.apply_to_task(task, config, frozen=frozen)


def compile_pairs(config, method: PairMethod, mesh, name: str) -> list:
  """`rmjax compile`'s step of a pair method: the Task `build_pairs` makes, without data or
  weights, through the same `loop.plan` as `rmjax train`, on a global batch of
  `train.batch_size` chosen + rejected rows of `data.max_length` (cached features [B, D] for
  head-only training) plus the method's per-example arrays."""
  if method.check:
    method.check(config)
  cfg = common.backbone_config(config)
  b, t = config.train.batch_size, config.data.max_length
  check_rows(b, mesh, "train.batch_size")
  task, model, _, frozen = _core(config, method, cfg)
  if head_only(config, model):
    spec = {k: ((b, cfg.hidden_size), "float32") for k in FEATURE_KEYS}
    flops = None  # a head on features: the compiler's own count
  else:
    spec = {f"{s}_{k}": ((b, t), "int32") for s in ("chosen", "rejected") for k in ("ids", "mask")}
    passes = method.passes(config) if method.passes else 1.0
    flops = passes * llama_flops(cfg, 2 * b, t, train=not config.train.freeze_backbone) + float(
        _reads_reference(config, method)) * llama_flops(cfg, 2 * b, t, train=False)
  spec.update(prompt_len=((b,), "int32"), margin=((b,), "float32"), weight=((b,), "float32"),
              index=((b,), "int32"))
  arrays = method.example_arrays(config, b) if method.example_arrays else {}
  spec.update({k: ((b, *v.shape[1:]), v.dtype) for k, v in arrays.items()})
  task = lora.apply_to_task(task, config, frozen=frozen)
  return [plan(config, task, mesh, check_sharding=False).compile_step(
      f"{name}.train_step", spec, flops)]
