"""Shared config pieces: arg parsing, model presets, mesh, optimizer, train-loop defaults.

Configs are code (big_vision style): `get_config("tiny,runlocal")` or
`get_config("variant=smollm2,runlocal")`. Unknown variants and keys are refused (a typo must
not silently train the default size). The returned ConfigDict is locked by the CLI so a
mistyped `--config.key=value` override fails instead of being silently ignored.
"""

from __future__ import annotations

import ml_collections as mlc

from rmjax.errors import ConfigError

VARIANTS = ("tiny", "smollm2", "llama3-8b", "llama3-70b")

# What each size variant means: model spec for rmjax.checkpoints, tokenizer, lengths, batch, mesh.
MODEL_PRESETS = {
    "tiny": dict(spec="tiny", tokenizer="tiny", max_length=128, batch_size=32, dtype="float32",
                 remat="none", mesh=(-1, 1, 1), lr=1e-3, steps=300),
    "smollm2": dict(spec="smollm2-135m", tokenizer="smollm2-135m", max_length=512, batch_size=8,
                    dtype="float32", remat="none", mesh=(-1, 1, 1), lr=1e-5, steps=1000),
    # llama3-8b / llama3-70b: mesh, remat, attention and batch from `rmjax compile` (the TPU memory
    # plan in experiments/benchmarks/RESULTS.md: an 8B BT RM fits v5e:4x4 / v5p:2x2x1, 70B
    # v5e:8x16 with tensor=2; other tasks and slices may need optim.accum_steps, see there)
    "llama3-8b": dict(spec="hf:/checkpoints/Meta-Llama-3.1-8B-Instruct",
                      tokenizer="hf:/checkpoints/Meta-Llama-3.1-8B-Instruct", max_length=2048,
                      batch_size=64, dtype="bfloat16", remat="full", mesh=(1, -1, 1),
                      attention="splash", lr=2e-6, steps=2000),
    "llama3-70b": dict(spec="hf:/checkpoints/Meta-Llama-3.1-70B-Instruct",
                       tokenizer="hf:/checkpoints/Meta-Llama-3.1-70B-Instruct", max_length=2048,
                       batch_size=64, dtype="bfloat16", remat="full", mesh=(1, -1, 2),
                       attention="splash", lr=1e-6, steps=2000),
}


def parse_arg(arg: str | None, **defaults) -> mlc.ConfigDict:
  """'tiny,runlocal' -> ConfigDict(variant='tiny', runlocal=True).

  A bare word names a variant or sets a bool key to True; `k=v` values take the type of the
  default (bool, int, float, str). Keys are `variant`, `runlocal` and the family's `defaults`:
  anything else raises ConfigError naming the known variants and keys.
  """
  out = dict(variant="tiny", runlocal=False)
  out.update(defaults)
  known = (f"known variants: {', '.join(VARIANTS)}; keys: "
           f"{', '.join(k for k in out if k != 'variant')}")
  for token in filter(None, (arg or "").split(",")):
    if "=" not in token:
      if token in VARIANTS:
        out["variant"] = token
      elif isinstance(out.get(token), bool):
        out[token] = True
      else:
        raise ConfigError(f"unknown variant or flag {token!r} ({known})")
      continue
    key, value = token.split("=", 1)
    if key not in out:
      raise ConfigError(f"unknown config argument {key!r} ({known})")
    default = out[key]
    try:
      if isinstance(default, bool):
        if value.lower() not in ("1", "true", "yes", "0", "false", "no"):
          raise ValueError(value)
        value = value.lower() in ("1", "true", "yes")
      elif isinstance(default, int):
        value = int(value)
      elif isinstance(default, float):
        value = float(value)
    except ValueError:
      raise ConfigError(f"config argument {key}={value!r}: expected a "
                        f"{type(default).__name__}") from None
    out[key] = value
  if out["variant"] not in VARIANTS:
    raise ConfigError(f"unknown variant {out['variant']!r} ({known})")
  return mlc.ConfigDict(out)


def base_config(arg: mlc.ConfigDict, task: str) -> mlc.ConfigDict:
  """Everything the loop needs, filled from the variant's preset; families add their parts."""
  p = MODEL_PRESETS[arg.variant]
  c = mlc.ConfigDict()
  c.task = task
  c.seed = 0

  c.model = mlc.ConfigDict(dict(
      spec=p["spec"], tokenizer=p["tokenizer"], dtype=p["dtype"], param_dtype="float32",
      remat=p["remat"], head="scalar", head_hidden=1024, head_dropout=0.0,
      attention=p.get("attention", "auto")))  # auto | xla | blocked | dot_product | splash (models/attention)
  # LoRA / QLoRA (rmjax.models.lora): rank 0 = off. targets: q_proj,k_proj,v_proj,o_proj,lm_head
  # (not the MLP: its SwiGLU VJP is hand-written); quant: '' | nf4 | int8 | int4 (QLoRA base)
  c.model.lora = mlc.ConfigDict(dict(rank=0, alpha=16.0, targets="q_proj,k_proj,v_proj,o_proj",
                                     dropout=0.0, quant=""))

  c.mesh = mlc.ConfigDict(dict(shape=p["mesh"]))

  c.optim = mlc.ConfigDict(dict(
      lr=p["lr"], warmup_steps=20, schedule="cosine", final_lr_frac=0.1, weight_decay=0.0,
      b1=0.9, b2=0.999, eps=1e-8, clip_norm=1.0, accum_steps=1))

  c.train = mlc.ConfigDict(dict(
      steps=p["steps"], batch_size=p["batch_size"], log_every=10, eval_every=100,
      checkpoint_every=100, keep_checkpoints=3, best_metric="", best_mode="max",
      async_checkpoint=True, tensorboard=True, progress=True, freeze_backbone=False,
      cache_features=True))  # frozen backbone + pooled head: train on cached features

  c.data = mlc.ConfigDict(dict(
      source="synthetic:2000", eval_source="synthetic:256", eval_fraction=0.1, max_length=p["max_length"],
      max_eval_examples=512, on_overlong="truncate",  # identical pairs: SPEC?on_identical=
      buckets=(64, 128, 256, 512, 1024, 2048), limit=0,
      feature_cache="",  # head-only features cache dir ("" = $RMJAX_CACHE or ~/.cache/rmjax)
      token_cache="",    # tokenized data cache dir ("" = $RMJAX_CACHE/tokens; "off" = none)
      packing=False,     # pair tasks: pack sequences into rows (rmjax/data/packing.py)
      share_prompt=True,  # packed rows hold a pair's prompt once, both responses after it
      pack_length=0,     # longest packed row (0 = 3 * max_length)
      pack_length_multiple=128,  # per batch, rows of the multiple of this (<= pack_length) that
                                 # packs it into the fewest tokens (0 = always pack_length)
      pack_ladder=True))  # packed shapes from a fixed set (rows: powers of 2; row lengths 1/2,
                          # 3/4, 1 x pack_length): a handful of compiles; False: exact per batch

  if arg.get("runlocal", False):  # a quick local smoke run of any variant
    c.train.steps = 20
    c.train.log_every = 5
    c.train.eval_every = 10
    c.train.checkpoint_every = 10
    c.data.max_eval_examples = 64
  return c


def finetune_recipe(c: mlc.ConfigDict, rank: int = 32, lr: float = 1e-4,
                    max_length: int = 256) -> mlc.ConfigDict:
  """The LoRA fine-tuning recipe of issue 28's best reward model (E-d's BT arm, experiments/
  RESULTS.md "E-d"): an MLP head d -> 1024 -> 1 (dropout 0.1) on LoRA adapters of rank `rank`
  (alpha 2 x rank) on q/k/v/o, packed rows, AdamW `lr` with 3% warmup and cosine decay, global
  clip 5 (GRM's, the paper's), `max_length` tokens cut by the one truncation rule. One epoch of
  E-d's 1,500 pairs is 188 steps of 8. `configs/bt.py:smollm2,lora` applies it; the experiment
  (experiments/grm_ood.py) applies the same function to its BT, GRM and frozen arms."""
  c.model.head, c.model.head_hidden, c.model.head_dropout = "mlp", 1024, 0.1
  c.model.lora.rank, c.model.lora.alpha = rank, float(2 * rank)
  c.data.packing = True
  c.data.max_length, c.data.on_overlong = max_length, "truncate"
  c.optim.lr, c.optim.schedule, c.optim.clip_norm = lr, "cosine", 5.0
  c.train.steps, c.train.batch_size = 188, 8
  c.optim.warmup_steps = max(1, int(0.03 * c.train.steps))
  return c
