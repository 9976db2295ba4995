"""The RL learner: PPO (`configs/ppo.py`) and the critic-free group methods GRPO / RLOO
(`configs/grpo.py`), `rmjax train --config configs/ppo.py:tiny --workdir W`.

One iteration (ALGORITHMS.md 2.3, 2.4; tunix's learner decomposition), prompts -> rollouts ->
rewards -> experience -> update:
  1. rollout: the jitted KV-cache sampler continues a batch of left-padded prompts [B, P], each
     prompt repeated `group_size` times (G samples per prompt for the group estimators);
  2. one jitted forward pass: old log-probs (policy), reference log-probs (frozen initial
     policy) and, when the advantage estimator needs a critic, values (value model) over the
     full sequences [B, P + N];
  3. reward function (`REWARDS[reward.kind]`) on host -> (reward [B], members [B, K] | None);
     conservative aggregate and/or variance-aware KL weights (`rollout.uncertainty_terms`);
     normalisation none / frozen after the first batch / running;
  4. jitted: shaped per-token rewards (score at the last token, -beta_t KL per token when
     `kl_in='reward'`), the advantage estimator `ADVANTAGES[advantage]` (gae by reverse scan,
     grpo, rloo or a plug-in), optional whitening;
  5. jitted update: `epochs` x `minibatches` of the policy loss `POLICY_LOSSES[policy_loss]`
     (+ beta_t KL to the reference when `kl_in='loss'`, GRPO's form) - entropy bonus, and with a
     critic the clipped value loss; policy and value models with their own AdamW states, explicit
     shardings (with `model.lora` both are LoRA models: only their adapters and the value head
     train).
The settings live in the config section named by the task (`config.ppo` / `config.grpo`, the
same keys). State (`PPOState`): step, policy and value params (`{}` without a critic), their
optimizer states, rng, KL coefficient and reward-normalisation statistics -- with the
prompt-iterator position it is the whole checkpoint, so a resumed run continues exactly. The
reference policy and reward models are frozen params only (no optimizer state) and are rebuilt
deterministically on resume. This module holds the state, the update step, the rollout driver
and `run(config, workdir)`; building models, prompts and the reward function from a config is
`rmjax.tasks.ppo_setup`; the named pieces are in `rmjax.rl.registry`.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import ml_collections as mlc
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from rmjax import sharding as shd
from rmjax.aot import Step, batch_structs, check_rows, llama_flops
from rmjax.inference.generate import SamplingConfig, left_pad
from rmjax.models import lora
from rmjax.models.init import init_params
from rmjax.models.llama import Llama
from rmjax.rl import ppo, rollout
from rmjax.rl import value as value_lib
from rmjax.rl.registry import ADVANTAGES
from rmjax.tasks import ppo_setup
from rmjax.tasks.ppo_setup import PromptIterator
from rmjax.tasks.spec import TaskSpec
from rmjax.train.run import Run, prompt_info
from rmjax.train.state import make_optimizer


class PPOState(flax.struct.PyTreeNode):
  step: jax.Array
  policy: dict
  value: dict
  policy_opt: object
  value_opt: object
  rng: jax.Array
  kl_coef: jax.Array
  norm: dict  # reward-normalisation statistics: count, mean, m2


# ---------------------------------------------------------------- update step
def make_update(cfg, value_cfg, prompt_len: int, pc, tx_policy, tx_value, policy_view=None,
                value_view=None):
  """Pure `update(state, batch) -> (state, metrics)`: `pc.epochs` passes over the rollout batch
  in `pc.minibatches` shuffled minibatches, each one AdamW step for the policy (and the value
  model, when `pc.advantage` needs one). `policy_view(policy params) -> Llama params` and
  `value_view(value params) -> ValueModel params` (LoRA: adapters merged, the base's gradient
  stopped)."""
  use_value = ADVANTAGES.traits(pc.advantage)["needs_value"]
  kl_in_loss = pc.kl_in == "loss"

  def loss_fn(params, mb):
    policy, value = params
    policy = policy_view(policy) if policy_view else policy
    m = mb["resp_mask"].astype(jnp.float32)
    logp, logits = rollout.policy_forward(policy, mb["ids"], mb["mask"], cfg=cfg,
                                          prompt_len=prompt_len)
    pg, pm = ppo.policy_loss(logp, mb["old_logp"], mb["advantages"], m, pc.clip,
                             pc.policy_loss, pc.dual_clip)
    ent = ppo.entropy(logits, m)
    metrics = dict(pm, pg_loss=pg, entropy=ent)
    loss = pg - pc.ent_coef * ent
    if use_value:
      value = value_view(value) if value_view else value
      v = rollout.value_forward(value, mb["ids"], mb["mask"], cfg=value_cfg,
                                prompt_len=prompt_len)
      vl, vm = ppo.value_loss(v, mb["values"], mb["returns"], m, pc.vf_clip)
      loss = loss + pc.vf_coef * vl
      metrics.update(vm, vf_loss=vl)
    if kl_in_loss:  # GRPO: beta_t KL(pi || pi_ref) per token in the loss, not in the reward
      kl = ppo.kl_estimate(logp, mb["ref_logp"], pc.kl_estimator,
                           clamp_min=0.0 if pc.kl_clamp else None)
      kl_loss = ppo.masked_mean(mb["kl_coef"][:, None] * kl, m)
      loss = loss + kl_loss
      metrics.update(kl_loss=kl_loss)
    return loss, metrics

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def update(state: PPOState, batch: dict):
    b = batch["ids"].shape[0]
    nmb = pc.minibatches
    rng, sub = jax.random.split(state.rng)

    def mb_step(carry, idx):
      policy, value, popt, vopt = carry
      mb = jax.tree_util.tree_map(lambda x: jnp.take(x, idx, axis=0), batch)
      (loss, metrics), (gp, gv) = grad_fn((policy, value), mb)
      up, popt = tx_policy.update(gp, popt, policy)
      metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(gp))
      if use_value:
        uv, vopt = tx_value.update(gv, vopt, value)
        metrics.update(value_grad_norm=optax.tree.norm(gv))
        value = optax.apply_updates(value, uv)
      return (optax.apply_updates(policy, up), value, popt, vopt), metrics

    def epoch(carry, key):
      perm = jax.random.permutation(key, b).reshape(nmb, b // nmb)
      return jax.lax.scan(mb_step, carry, perm)

    carry = (state.policy, state.value, state.policy_opt, state.value_opt)
    (policy, value, popt, vopt), metrics = jax.lax.scan(
        epoch, carry, jax.random.split(sub, pc.epochs))
    metrics = jax.tree_util.tree_map(jnp.mean, metrics)
    return state.replace(step=state.step + 1, policy=policy, value=value, policy_opt=popt,
                         value_opt=vopt, rng=rng), metrics

  return update


# ---------------------------------------------------------------- the trainer
class Trainer:
  """Holds the compiled functions and frozen params of one RL run (built by `ppo_setup`)."""

  def __init__(self, config, setup, mesh):
    self.config, self.setup, self.mesh = config, setup, mesh
    pc = ppo_setup.section(config)
    self.pc = pc
    self.advantage = ADVANTAGES.resolve(pc.advantage)
    self.use_value = ADVANTAGES.traits(self.advantage)["needs_value"]
    self.cfg, self.value_cfg = setup.cfg, setup.value_cfg
    self.prompt_len = pc.prompt_len
    self.sampling = SamplingConfig(max_new_tokens=pc.max_new_tokens, temperature=pc.temperature,
                                   top_p=pc.top_p, eos_ids=tuple(setup.eos_ids),
                                   pad_id=setup.pad_id)
    # model.lora: the policy trains only its adapters, the value model only its adapters
    # (attention targets, `value.lora_settings`) and its value head; frozen base weights get no
    # gradient (stopped in the views) and no Adam state (the optimizer masks). The sampler and
    # all forwards run the plain Llama / ValueModel on merged weights; the reference is the
    # policy's base weights with the adapters off
    self.lora = lora.settings(config.model.get("lora"))
    self.value_lora = value_lib.lora_settings(self.lora)
    policy_mask = lora.trainable(adapters_only=True) if self.lora else None
    value_mask = lora.trainable() if self.lora else None  # adapters + value_head
    self.tx_policy, _ = make_optimizer(config.optim, config.train.steps, policy_mask)
    vo = config.optim.to_dict()
    vo["lr"] = pc.value_lr or config.optim.lr
    self.tx_value, _ = make_optimizer(mlc.ConfigDict(vo), config.train.steps, value_mask)
    self.replicated = NamedSharding(mesh, P())
    self.shardings = self._state_shardings()
    views = ((lora.merged_view(self.lora, policy_mask), lora.merged_view(self.lora, value_mask))
             if self.lora else (None, None))
    # the pure update (`rmjax compile` compiles this same function) and its jit
    self.update_fn = make_update(self.cfg, self.value_cfg, self.prompt_len, pc, self.tx_policy,
                                 self.tx_value, *views)
    self.update = jax.jit(self.update_fn,
                          in_shardings=(self.shardings, NamedSharding(mesh, P(shd.BATCH))),
                          out_shardings=(self.shardings, self.replicated), donate_argnums=(0,))

  def _state_shardings(self):
    def boxed():
      pol = init_params(lora.wrap(Llama(self.cfg), self.lora))
      val = (value_lib.boxed_init(self.value_cfg, jax.random.PRNGKey(1), self.value_lora)
             if self.use_value else {})
      return PPOState(step=jnp.zeros((), jnp.int32), policy=pol, value=val,
                      policy_opt=self.tx_policy.init(pol),
                      value_opt=self.tx_value.init(val) if self.use_value else {},
                      rng=jax.random.PRNGKey(0), kl_coef=jnp.zeros((), jnp.float32),
                      norm={k: jnp.zeros((), jnp.float32) for k in ("count", "mean", "m2")})
    abstract = jax.eval_shape(boxed)
    self.abstract_boxed = abstract
    return shd.tree_shardings(abstract, self.mesh)

  def abstract_state(self):
    return shd.with_shardings(shd.strip_boxes(self.abstract_boxed), self.shardings)

  def init_state(self, policy, value, rng) -> PPOState:
    """State from initial params (host or device trees; `value` None without a critic),
    placed on the state shardings."""
    sh = self.shardings
    policy = shd.place(policy, sh.policy)
    popt = jax.jit(self.tx_policy.init, out_shardings=sh.policy_opt)(policy)
    vopt = {}
    if self.use_value:
      value = shd.place(value, sh.value)
      vopt = jax.jit(self.tx_value.init, out_shardings=sh.value_opt)(value)
    else:
      value = {}
    put = lambda x: jax.device_put(x, self.replicated)  # noqa: E731
    return PPOState(step=put(jnp.zeros((), jnp.int32)), policy=policy, value=value,
                    policy_opt=popt, value_opt=vopt, rng=put(rng),
                    kl_coef=put(jnp.float32(self.pc.kl_coef)),
                    norm={k: put(jnp.float32(v)) for k, v in rollout.norm_init().items()})

  def policy_params(self, policy):
    """The plain Llama params the sampler and forwards run (adapters merged for LoRA)."""
    return lora.merge(policy, self.lora) if self.lora else policy

  def value_params(self, value):
    """The plain ValueModel params the scoring pass runs (adapters merged for LoRA); None
    without a critic."""
    if not self.use_value:
      return None
    return lora.merge(value, self.lora) if self.lora else value

  def ref_params(self, policy):
    """The frozen reference: the held copy, or a LoRA policy's own base (adapters off)."""
    return self.setup.ref_params if self.setup.ref_params is not None else lora.split(policy)[0]

  # ------------------------------------------------------------ rollout
  def encode_prompts(self, records):
    toks = [self.setup.encode_prompt(r["prompt"]) for r in records]
    return left_pad(toks, self.setup.pad_id, length=self.prompt_len), toks

  def rollout(self, state: PPOState, records, rng, sampling=None):
    """Sample one response per record, reward it and score it (policy, reference, critic):
    (device batch, scored, reward [B], members [B, K] | None, ensemble variance | None,
    host metrics, response texts)."""
    (pids, pmask), ptoks = self.encode_prompts(records)
    policy = self.policy_params(state.policy)
    ids, mask, resp_mask, tokens = rollout.generate_responses(
        policy, self.cfg, pids, pmask, rng, sampling or self.sampling, mesh=self.mesh)
    resp = rollout.strip_eos(tokens, resp_mask, self.sampling.eos_ids)
    texts = [r["prompt"] for r in records]
    rtexts = self.setup.decode(resp)
    reward, members = self.setup.reward_fn(texts, rtexts, ptoks, resp)
    batch = shd.shard_batch({"ids": ids, "mask": mask, "resp_mask": resp_mask}, self.mesh,
                            global_batch=True)
    with jax.set_mesh(self.mesh):
      scored = rollout.score_sequences(policy, self.ref_params(state.policy),
                                       self.value_params(state.value),
                                       batch["ids"], batch["mask"], batch["resp_mask"],
                                       cfg=self.cfg, value_cfg=self.value_cfg,
                                       prompt_len=self.prompt_len)
    var = None if members is None else np.asarray(members, np.float64).var(axis=-1)
    metrics = {"reward_mean": float(np.mean(reward)), "reward_std": float(np.std(reward)),
               "kl": float(np.mean(np.asarray(jax.device_get(scored["seq_kl"])))),
               "rollout_entropy": float(jax.device_get(scored["entropy"])),
               "response_length": float(resp_mask.sum(-1).mean())}
    if members is not None:
      metrics.update(ensemble_std=float(np.mean(np.sqrt(var.astype(np.float32)))),
                     members_mean=[float(x) for x in np.mean(members, 0)])
    if self.setup.gold_fn is not None:
      metrics["gold_mean"] = float(np.mean(self.setup.gold_fn(texts, rtexts)))
    return batch, scored, reward, members, metrics, rtexts

  def experience(self, state: PPOState, records, rng, sampling=None):
    """One rollout batch -> (device batch for `update`, host metrics, new norm, texts).
    `records` are the batch's rows: a group estimator's G samples of a prompt consecutive."""
    pc = self.pc
    batch, scored, reward, members, metrics, rtexts = self.rollout(state, records, rng, sampling)
    score, w, _ = rollout.uncertainty_terms(reward, members, pc.aggregate, pc.uncertainty,
                                            pc.uwo_lam, pc.lcb_beta, pc.w_min, pc.w_max)
    norm = {k: np.float32(v) for k, v in jax.device_get(state.norm).items()}
    score_n, norm = rollout.normalize_rewards(score, norm, pc.reward_norm)
    with jax.set_mesh(self.mesh):
      coef = jnp.asarray(state.kl_coef * w, jnp.float32)                  # [B]
      in_reward = coef if pc.kl_in == "reward" else jnp.zeros_like(coef)
      adv = rollout.make_advantages(
          jnp.asarray(score_n), in_reward, scored["old_logp"], scored["ref_logp"],
          scored.get("values"), batch["resp_mask"], pc.gamma, pc.lam,
          0.0 if pc.kl_clamp else -jnp.inf, kl_kind=pc.kl_estimator, whiten=pc.whiten,
          estimator=self.advantage, group_size=pc.group_size)
    batch = dict(batch, old_logp=scored["old_logp"], advantages=adv["advantages"])
    if self.use_value:
      batch.update(values=scored["values"], returns=adv["returns"])
    if pc.kl_in == "loss":
      batch.update(ref_logp=scored["ref_logp"], kl_coef=coef)
    # rows on the batch axis, as `update` takes them (a group estimator's reshapes and the
    # replicated KL coefficients may come out otherwise placed)
    rows = NamedSharding(self.mesh, P(shd.BATCH))
    batch = {k: jax.device_put(v, rows) for k, v in batch.items()}
    metrics.update(score_mean=float(np.mean(score)),
                   penalty=float(np.mean(jax.device_get(adv["penalty"]))),
                   kl_coef=float(jax.device_get(state.kl_coef)))
    if members is not None:
      metrics.update(kl_weight_max=float(w.max()))
    return batch, metrics, norm, rtexts

  def evaluate(self, state: PPOState, records) -> dict:
    """Greedy responses on held-out prompts (one per prompt): proxy reward, gold, KL to the
    reference."""
    out = {}
    bs = self.pc.rollout_batch
    parts = []
    for s in range(0, len(records) - bs + 1, bs):
      parts.append(self.rollout(state, records[s:s + bs], jax.random.PRNGKey(0),
                                self.sampling.replace(temperature=0.0))[4])
    for k in ("reward_mean", "gold_mean", "kl", "response_length", "ensemble_std"):
      if parts and k in parts[0]:
        out[k] = float(np.mean([p[k] for p in parts]))
    return out


def run(config, workdir: str, return_state: bool = False, mesh=None):
  """Train under `config` (PPO, GRPO, RLOO...) in `workdir` (resuming from its latest
  checkpoint); returns the last logged metrics (and the final PPOState when `return_state`)."""
  ppo_setup.check(config)
  pc = ppo_setup.section(config)
  mesh = mesh or shd.make_mesh(tuple(config.mesh.shape))
  setup = ppo_setup.build(config, workdir, mesh)
  trainer = Trainer(config, setup, mesh)
  g = pc.group_size
  prompts = PromptIterator(setup.train_prompts, pc.rollout_batch // g, config.seed)
  run_ = Run(config, workdir, model_config=setup.cfg, desc=config.task,
             info=prompt_info(pc, setup))  # the data report (prompts, truncated)
  state, start = run_.restore(trainer.abstract_state(), prompts)
  if state is None:
    state = trainer.init_state(setup.policy_params, setup.value_params,
                               jax.random.PRNGKey(config.seed + 1))
  run_.write_files()

  def one_step(state, step):
    records = [r for r in next(prompts) for _ in range(g)]  # G consecutive samples per prompt
    rng = jax.random.fold_in(state.rng, 7)  # rollout key; state.rng itself feeds the update
    batch, m, norm, _ = trainer.experience(state, records, rng)
    state = state.replace(norm={k: jax.device_put(jnp.float32(v), trainer.replicated)
                                for k, v in norm.items()})
    state, um = trainer.update(state, batch)
    m.update({k: float(v) for k, v in jax.device_get(um).items()})
    if pc.adaptive_kl:
      coef = ppo.adaptive_kl(float(jax.device_get(state.kl_coef)), m["kl"], pc.kl_target,
                             pc.kl_horizon, pc.rollout_batch)
      state = state.replace(kl_coef=jax.device_put(jnp.float32(coef), trainer.replicated))
    return state, m

  eval_fn = ((lambda st: trainer.evaluate(st, setup.eval_prompts)) if setup.eval_prompts
             else None)
  final, state = run_.loop(state, start, one_step, data_iter=prompts, eval_fn=eval_fn,
                           postfix=lambda m: {"reward": f"{m['reward_mean']:.3f}",
                                              "kl": f"{m['kl']:.3f}"})
  run_.close()
  return (final, state) if return_state else final


def compile_steps(config, mesh) -> list:
  """`rmjax compile`: the learner's jitted functions on its `Trainer`'s own shardings, the
  Trainer built from `ppo_setup.abstract` (model configs, no weights): the update
  (`Trainer.update_fn`, the batch `experience` hands it), the scoring pass (policy, frozen
  reference, critic when the estimator has one) and the sampler's prefill and decode loop. The
  scoring pass and the sampler run plain Llama / ValueModel trees (LoRA: the merged weights,
  shaped and sharded like the base; the reference is the base itself). The reward is a host
  function: the run holds no reward-model params on the mesh."""
  ppo_setup.check(config)
  pc, t = ppo_setup.section(config), config.task
  b, pl, n = pc.rollout_batch, pc.prompt_len, pc.max_new_tokens
  check_rows(b, mesh, f"{t}.rollout_batch")
  check_rows(b // pc.minibatches, mesh, f"{t}.rollout_batch / {t}.minibatches")
  tr = Trainer(config, ppo_setup.abstract(config), mesh)
  cfg, state, sh, rep = tr.cfg, tr.abstract_state(), tr.shardings, tr.replicated
  bsh, length = NamedSharding(mesh, P(shd.BATCH)), pl + n
  seqs = {"ids": ((b, length), "int32"), "mask": ((b, length), "int32"),
          "resp_mask": ((b, n), "int32")}
  floats = ["old_logp", "advantages"] + ["values", "returns"] * tr.use_value + (
      ["ref_logp"] if pc.kl_in == "loss" else [])
  batch = batch_structs(dict(seqs, **{k: ((b, n), "float32") for k in floats}, **(
      {"kl_coef": ((b,), "float32")} if pc.kl_in == "loss" else {})), bsh)
  steps = [Step(f"{t}.update", tr.update_fn, (state, batch), (sh, bsh), (sh, rep), (0,),
                (1 + tr.use_value) * pc.epochs * llama_flops(cfg, b, length))]
  policy, policy_sh = lora.split(state.policy)[0], lora.split(sh.policy)[0]  # plain trees
  value, value_sh = ((lora.split(state.value)[0], lora.split(sh.value)[0]) if tr.use_value
                     else (None, None))
  seqs = batch_structs(seqs, bsh)
  scored = {k: bsh for k in ("old_logp", "ref_logp", "seq_kl") + ("values",) * tr.use_value}
  steps.append(Step(f"{t}.score", lambda p, r, v, i, m, rm: rollout.score_sequences(
      p, r, v, i, m, rm, cfg=cfg, value_cfg=cfg, prompt_len=pl),
      (policy, policy, value, seqs["ids"], seqs["mask"], seqs["resp_mask"]),
      (policy_sh, policy_sh, value_sh, bsh, bsh, bsh), dict(scored, entropy=rep), (),
      (2 + tr.use_value) * llama_flops(cfg, b, length, train=False)))
  return steps + ppo_setup.sampler_steps(policy, policy_sh, cfg, tr.sampling, b, pl, mesh, t)


SPEC = TaskSpec(name="ppo", run=run, compile_steps=compile_steps)
