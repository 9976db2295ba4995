"""`rmjax compile`: the jitted functions `rmjax train` runs for a config, compiled ahead of time
for a TPU slice that is not attached, from abstract inputs only (no weights, no data).

`STEPS[task](config, cfg, mesh)` returns the task's `Step`s: each is the same pure function, the
same in/out shardings and the same donation the trainer jits (`rmjax.train.loop.train`, the PPO
`Trainer`, `rmjax.inference.generate`), built from the task's own pieces (its `make_model`, loss
function, ArmoRM heads / `RegressionRM`, the `Trainer`'s `update_fn`, `_prefill` / `_decode`) with
`jax.ShapeDtypeStruct` arguments: batch shapes from `train.batch_size` x `data.max_length`
(PPO: `ppo.rollout_batch` x (`prompt_len` + `max_new_tokens`)), the LlamaConfig from the spec's
config alone (`rmjax.checkpoints.presets.config_only`). Under `model.lora` a pair method's step
goes through the same `lora.apply_to_task` as its `build` (adapters-and-heads optimizer mask,
base gradients stopped, adapter dropout), and PPO's are the `Trainer`'s own (its masks and merged
views), so the compiled state holds Adam moments for the adapters and heads only.
`compile_config` compiles them with `rmjax.aot` and reports per-chip HBM, FLOPs and a roofline;
an OOM ends as `DoesNotFit` (one line, exit 2).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
import types
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from rmjax import sharding as shd
from rmjax.aot import chip_of, compile_function, format_table, llama_flops, topology_mesh, write_json
from rmjax.checkpoints.presets import config_only
from rmjax.errors import ConfigError, RmjaxError
from rmjax.inference import generate
from rmjax.models import lora
from rmjax.models.llama import Llama, LlamaConfig, init_cache
from rmjax.rl import rollout
from rmjax.tasks import armorm, bt, common, ensemble, grm, pairs, ppo, ppo_setup
from rmjax.train.loop import Task
from rmjax.train.state import abstract_state, make_optimizer, make_train_step


class DoesNotFit(RmjaxError):
  """A compiled function needs more HBM per chip than the slice has (one line, exit 2)."""


@dataclasses.dataclass
class Step:
  """One function to compile: `fn(*args)` jitted with these shardings and donation."""
  name: str
  fn: Callable
  args: tuple
  in_shardings: Any
  out_shardings: Any
  donate_argnums: tuple = ()
  model_flops: Optional[float] = None


def model_config(config) -> LlamaConfig:
  """The backbone LlamaConfig `rmjax.tasks.common.backbone` would give, without the weights."""
  return common.numeric_policy(config, config_only(config.model.spec))


def _check_rows(rows: int, mesh, what: str):
  div = shd.batch_divisor(mesh)
  if rows % div:
    raise ConfigError(f"{what}={rows} does not split over the mesh's batch axes "
                      f"(data x fsdp = {div}); use a multiple of {div}")


def _batch(spec: dict, sharding) -> dict:
  return {k: jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dt), sharding=sharding)
          for k, (shape, dt) in spec.items()}


def loop_step(name, config, mesh, init_params, loss_fn, batch_spec: dict, trainable=None,
              model_flops=None) -> Step:
  """The supervised loop's train step, exactly as `rmjax.train.loop.train` jits it."""
  tx, schedule = make_optimizer(config.optim, config.train.steps, trainable)
  init_rng, _ = jax.random.split(jax.random.PRNGKey(config.seed))
  boxed = abstract_state(init_params, tx, init_rng)
  state_sh = shd.tree_shardings(boxed, mesh, check_min_bytes=1 << 62)
  state = shd.with_shardings(shd.strip_boxes(boxed), state_sh)
  batch_sh = NamedSharding(mesh, P(shd.BATCH))
  step = make_train_step(loss_fn, tx, schedule, accum_steps=config.optim.accum_steps)
  return Step(name, step, (state, _batch(batch_spec, batch_sh)), (state_sh, batch_sh),
              (state_sh, NamedSharding(mesh, P())), (0,), model_flops)


# ------------------------------------------------------------------------ pair methods

def _lora_loss(model, config):
  """The model a pair method's loss runs in training (LoRA dropout when configured)."""
  return lora.train_model(model, config.model.get("lora"))


def _pair_step(name, config, cfg, mesh, model, loss_fn, init_params=None, frozen=(),
               passes=1.0, frozen_passes=0.0) -> list:
  """`pairs.pair_task`'s step: chosen + rejected rows [B, T] (or cached features [B, D] for
  head-only training), the backbone frozen under train.freeze_backbone; under `model.lora`
  made LoRA-aware by `lora.apply_to_task` exactly as the method's `build` does (`frozen`: the
  same top-level groups it passes)."""
  b, t = config.train.batch_size, config.data.max_length
  _check_rows(b, mesh, "train.batch_size")
  if pairs.head_only(config, model):
    spec = {k: ((b, cfg.hidden_size), "float32") for k in pairs.FEATURE_KEYS}
    flops = None  # a head on features: the compiler's own count
  else:
    spec = {f"{s}_{k}": ((b, t), "int32") for s in ("chosen", "rejected") for k in ("ids", "mask")}
    train = not config.train.freeze_backbone
    flops = passes * llama_flops(cfg, 2 * b, t, train=train) + frozen_passes * llama_flops(
        cfg, 2 * b, t, train=False)
  spec.update(prompt_len=((b,), "int32"), margin=((b,), "float32"), weight=((b,), "float32"),
              index=((b,), "int32"))

  def default_init(rng):
    ids = jnp.zeros((2, 8), jnp.int32)
    return model.init(rng, ids, jnp.ones_like(ids))["params"]

  freeze = set(frozen) | ({"backbone"} if config.train.freeze_backbone else set())
  task = lora.apply_to_task(Task(init_params=init_params or default_init, loss_fn=loss_fn,
                                 train_batches=None,
                                 trainable=(lambda k: k not in freeze) if freeze else None),
                            config, frozen=tuple(frozen))
  return [loop_step(name, config, mesh, task.init_params, task.loss_fn, spec, task.trainable,
                    flops)]


def bt_steps(config, cfg, mesh, name="bt") -> list:
  model = bt.make_model(config, cfg)
  return _pair_step(f"{name}.train_step", config, cfg, mesh, model,
                    bt.bt_loss_fn(_lora_loss(model, config), config.loss))


def ensemble_steps(config, cfg, mesh) -> list:
  e = ensemble._ens(config)
  if e.get("cached_embeddings", False):
    raise ConfigError("ensemble.cached_embeddings fits the heads on host feature arrays (no "
                      "train step on the mesh): compile --config.ensemble.cached_embeddings=False")
  if config.train.freeze_backbone and e.mode == "independent":
    raise ConfigError("train.freeze_backbone with ensemble.mode='independent' is refused by "
                      "`rmjax train`: use mode='heads'")
  model = ensemble.make_model(config, cfg)
  boot = None if e.bootstrap == "none" else np.ones((config.train.batch_size, e.members), np.float32)
  return _pair_step("ensemble.train_step", config, cfg, mesh, model,
                    ensemble.ensemble_loss_fn(_lora_loss(model, config), config.loss, boot),
                    passes=e.members if e.mode == "independent" else 1)


def grm_steps(config, cfg, mesh) -> list:
  grm.check_loss_config(config.loss)
  model = grm.make_model(config, cfg, keep_lm_logits=True)
  with_ref = config.loss.reg == "dpo_ref"
  lora_cfg = config.model.get("lora")
  # grm.build's: a LoRA policy's reference is its own base (adapters off), no second copy
  with_ref_copy = with_ref and lora.settings(lora_cfg) is None
  ref_lm = lora.wrap(Llama(cfg), lora_cfg) if with_ref else None

  def init_params(rng):  # grm.build's: the frozen reference beside the reward model
    ids = jnp.zeros((2, 8), jnp.int32)
    params = model.init(rng, ids, jnp.ones_like(ids))["params"]
    if with_ref_copy:
      params = dict(params, **{grm.REFERENCE: ref_lm.init(rng, ids, jnp.ones_like(ids))["params"]})
    return params

  return _pair_step("grm.train_step", config, cfg, mesh, model,
                    grm.grm_loss_fn(_lora_loss(model, config), config.loss, ref_lm),
                    init_params=init_params, frozen=(grm.REFERENCE,) if with_ref_copy else (),
                    frozen_passes=float(with_ref))


# ------------------------------------------------------------------------ ArmoRM

def armorm_steps(config, cfg, mesh) -> list:
  """Stage 2 (gate on cached features, `armorm.stage2_task`) and, with armorm.stage1='e2e',
  the end-to-end stage-1 step (`RegressionRM` on ratings + tagged pairs, `armorm.e2e_task`)."""
  out = []
  if config.armorm.stage1 == "e2e":
    conf = copy.deepcopy(config)
    with conf.unlocked():
      conf.train.steps = config.armorm.e2e_steps
    b, o = config.train.batch_size, len(config.objectives.names)
    _check_rows(b, mesh, "train.batch_size")
    row = np.ones((2,), np.int32)
    pair_rows = [(row, row)] if config.data.get("objective_pairs", "") else []
    task = armorm.e2e_task(conf, cfg, None, [row], np.zeros((1, o), np.float32), pair_rows, [0],
                           pad_id=0)
    spec = {k: (v.shape, v.dtype) for k, v in next(task.train_batches).items()}  # the batcher's
    flops = llama_flops(cfg, b * (3 if pair_rows else 1), config.data.max_length)
    out.append(loop_step("armorm.e2e_step", conf, mesh, task.init_params, task.loss_fn, spec,
                         task.trainable, flops))
  conf = armorm.stage2_config(config)
  b, d = conf.train.batch_size, cfg.hidden_size
  _check_rows(b, mesh, "stage2.batch_size")
  arrays = {k: np.zeros((1, d), np.float32) for k in ("hc", "hr", "hx")}  # features: float32
  task = armorm.stage2_task(conf, armorm.make_heads(config), None, None, arrays, None)
  spec = dict({k: ((b, d), "float32") for k in arrays}, weight=((b,), "float32"))
  out.append(loop_step("armorm.stage2_step", conf, mesh, task.init_params, task.loss_fn, spec,
                       task.trainable))
  return out


# ------------------------------------------------------------------------ PPO

def ppo_steps(config, cfg, mesh) -> list:
  """The PPO `Trainer`'s update (its own `update_fn`: policy + value, two AdamW states, under
  `model.lora` their adapter masks and merged views), its scoring pass (policy, frozen
  reference, value) and the sampler's prefill and decode loop, on the trainer's shardings. The
  scoring pass and the sampler run plain Llama / ValueModel trees (LoRA: the merged weights,
  shaped and sharded like the base; the reference is the base itself). The reward is a host
  function (gold / token count / a proxy on frozen features): the run holds no reward-model
  params on the mesh."""
  pc = config.ppo
  ppo_setup.check(config)
  if config.model.spec == "words":
    cfg = ppo_setup.word_policy_config(config.model.get("hidden", 64), config.model.get("layers", 2))
  b, pl, n = pc.rollout_batch, pc.prompt_len, pc.max_new_tokens
  _check_rows(b, mesh, "ppo.rollout_batch")
  _check_rows(b // pc.minibatches, mesh, "ppo.rollout_batch / ppo.minibatches")
  setup = types.SimpleNamespace(cfg=cfg, value_cfg=cfg, eos_ids=(cfg.eos_token_id or 0,), pad_id=0)
  trainer = ppo.Trainer(config, setup, mesh)
  state, sh = trainer.abstract_state(), trainer.shardings
  rep, bsh = NamedSharding(mesh, P()), NamedSharding(mesh, P(shd.BATCH))
  length = pl + n
  ints = {k: ((b, length), "int32") for k in ("ids", "mask")}
  batch = _batch(dict(ints, resp_mask=((b, n), "int32"), **{
      k: ((b, n), "float32") for k in ("old_logp", "values", "advantages", "returns")}), bsh)
  steps = [Step("ppo.update", trainer.update_fn, (state, batch), (sh, bsh), (sh, rep), (0,),
                2 * pc.epochs * llama_flops(cfg, b, length))]
  policy, policy_sh = lora.split(state.policy)[0], lora.split(sh.policy)[0]  # plain trees
  value, value_sh = lora.split(state.value)[0], lora.split(sh.value)[0]

  def score(policy, ref, value, ids, mask, resp_mask):
    return rollout.score_sequences(policy, ref, value, ids, mask, resp_mask, cfg=cfg,
                                   value_cfg=cfg, prompt_len=pl)
  seqs = _batch(dict(ints, resp_mask=((b, n), "int32")), bsh)
  steps.append(Step("ppo.score", score, (policy, policy, value, seqs["ids"],
                                         seqs["mask"], seqs["resp_mask"]),
                    (policy_sh, policy_sh, value_sh, bsh, bsh, bsh),
                    {"old_logp": bsh, "ref_logp": bsh, "values": bsh, "seq_kl": bsh,
                     "entropy": rep}, (),
                    3 * llama_flops(cfg, b, length, train=False)))

  # the sampler (rmjax.inference.generate.generate on the policy params)
  cache = jax.eval_shape(lambda: init_cache(cfg, b, length))
  kv = shd.logical_to_sharding(P(None, "act_batch", None, "act_kv_heads", None), cache["k"].shape, mesh)
  cache_sh = {"k": kv, "v": kv, "index": rep}
  cache = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=cache_sh[k]) for k, v in cache.items()}
  prompt = _batch({"ids": ((b, pl), "int32"), "mask": ((b, pl), "int32")}, bsh)
  logits = jax.ShapeDtypeStruct((b, cfg.vocab_size), jnp.dtype(cfg.dtype), sharding=bsh)
  steps.append(Step("ppo.prefill",
                    lambda p, i, m: generate._prefill(p, i, m, cfg=cfg, cache_len=length),
                    (policy, prompt["ids"], prompt["mask"]), (policy_sh, bsh, bsh),
                    (bsh, cache_sh), (), llama_flops(cfg, b, pl, train=False)))
  sampling = generate.SamplingConfig(max_new_tokens=n, temperature=pc.temperature, top_p=pc.top_p,
                                     eos_ids=setup.eos_ids, pad_id=0)
  knobs = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
                                 sampling.values())
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep)
  structure = sampling.structure()
  out_sh = {k: bsh for k in ("tokens", "logprobs", "logprobs_processed", "mask", "lengths")}
  steps.append(Step("ppo.decode",
                    lambda p, lg, c, m, r, kn: generate._decode(p, lg, c, m, r, kn, cfg=cfg,
                                                                structure=structure),
                    (policy, logits, cache, prompt["mask"], rng, knobs),
                    (policy_sh, bsh, cache_sh, bsh, rep, jax.tree_util.tree_map(lambda _: rep, knobs)),
                    (out_sh, cache_sh), (2,), llama_flops(cfg, b, n, train=False)))
  return steps


STEPS: dict = {
    "bt": bt_steps,
    "salmon": lambda config, cfg, mesh: bt_steps(config, cfg, mesh, name="salmon"),
    "ensemble": ensemble_steps,
    "grm": grm_steps,
    "armorm": armorm_steps,
    "ppo": ppo_steps,
}


# ------------------------------------------------------------------------ the command

def _settings(config) -> dict:
  m = config.model
  out = {"task": config.task, "spec": m.spec, "remat": m.remat, "attention": m.get("attention", "xla"),
         "dtype": m.dtype, "param_dtype": m.param_dtype, "batch_size": config.train.batch_size,
         "max_length": config.data.max_length, "accum_steps": config.optim.accum_steps}
  s = (m.get("lora") or {})
  if s.get("rank", 0):  # LoRA: the state holds Adam moments for adapters and heads only
    out.update(lora_rank=int(s["rank"]), lora_targets=str(s.get("targets", "")),
               lora_quant=str(s.get("quant", "") or ""))
  if config.task == "ppo":
    pc = config.ppo
    out.update(rollout_batch=pc.rollout_batch, prompt_len=pc.prompt_len,
               max_new_tokens=pc.max_new_tokens, minibatches=pc.minibatches)
  return out


def compile_config(config, topology: str, num_slices: int = 1, workdir: Optional[str] = None) -> list:
  """Compile every function `rmjax train` would run for `config` on `num_slices` x `topology`;
  prints the table, writes `<workdir>/compile.json`, returns the rows; raises `DoesNotFit`
  (after the table and JSON) when any function needs more HBM than a chip has."""
  task = config.task
  if task not in STEPS:
    raise ConfigError(f"rmjax compile: task {task!r} has no abstract train step "
                      f"(rmjax.tasks.aot.STEPS: {', '.join(sorted(STEPS))})")
  chip = chip_of(topology)
  mesh = topology_mesh(topology, tuple(config.mesh.shape), num_slices)
  cfg = None if config.model.spec == "words" else model_config(config)
  steps = STEPS[task](config, cfg, mesh)
  workdir = workdir or os.path.join("workdirs", f"compile-{time.strftime('%Y%m%d-%H%M%S')}")
  rows, settings = [], dict(_settings(config), topology=topology, num_slices=int(num_slices))
  for s in steps:
    print(f"[compile] {s.name} for {topology} x{num_slices} ...", flush=True)
    row = compile_function(s.name, s.fn, s.args, s.in_shardings, s.out_shardings, mesh, chip,
                           donate_argnums=s.donate_argnums, model_flops=s.model_flops)
    rows.append(dict(row, **settings))
  print(format_table(rows))
  path = write_json(rows, os.path.join(workdir, "compile.json"))
  print(f"results: {os.path.abspath(path)}")
  bad = [r for r in rows if not r["fits"]]
  if bad:
    r = bad[0]
    gib = lambda x: "?" if x is None else f"{x / (1 << 30):.2f}G"  # noqa: E731
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    raise DoesNotFit(f"{r['function']}{more} does not fit {topology} x{num_slices} "
                     f"({r['chips']} chips, mesh {r['mesh']}): needs {gib(r['total_bytes'])} of "
                     f"{gib(r['hbm_available_bytes'] or r['hbm_bytes'])} HBM per chip "
                     f"[{(r['error'] or '')[:200]}]")
  return rows
