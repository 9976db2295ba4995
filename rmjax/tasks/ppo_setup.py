"""Build an RL run (PPO, GRPO, RLOO) from its config: policy, reference and (for an advantage
estimator that needs one) value params, prompts, reward.

Policy specs: 'words' (a tiny random Llama over the synthetic task's word vocabulary,
`rollout.WordTokenizer`: its samples are word sequences the gold reward can tell apart) or any
`rmjax.checkpoints` spec ('tiny', 'smollm2-135m', 'hf:DIR', ...) with its tokenizer and chat
template. Prompts: 'synthetic:N' (`rmjax.data.synthetic.make_prompts`) or 'shared:NAME' for
NAME in mt_bench | alpaca_eval_prompts | arena_hard (first user turns from ../shared/data).
Reward kinds (`rmjax.rl.registry.REWARDS`; a plug-in registers its own):
  gold         the synthetic task's known reward (`synthetic.gold_reward`) on decoded text
  token_count  number of `reward.token_id` tokens in the response (CI)
  proxy        the over-optimisation setup (ALGORITHMS.md 5.2, `rmjax.tasks.overopt`): a K-member
               proxy ensemble trained on gold-labelled pairs (with label noise) of the synthetic
               base policy; gold is logged beside it
"""

from __future__ import annotations

import gzip
import json
import os
import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from rmjax import sharding as shd
from rmjax.data import synthetic
from rmjax.errors import ConfigError, DataError
from rmjax.models import lora
from rmjax.models.init import init_params
from rmjax.models.llama import Llama, LlamaConfig, init_cache
from rmjax.rl import ppo, rollout  # noqa: F401 -- ppo registers the estimators, losses, KLs
from rmjax.rl import value as value_lib
from rmjax.rl.registry import ADVANTAGES, KL_ESTIMATORS, POLICY_LOSSES, REWARDS
from rmjax.tasks import common, overopt
from rmjax.data.pairs import write_pairs
from rmjax.sharding import strip_boxes
from rmjax import checkpoints
from rmjax.aot import Step, batch_structs, llama_flops
from rmjax.inference import generate
from rmjax.inference.generate import _render

KL_IN = ("reward", "loss")
SHARED_PROMPTS = {
    "mt_bench": ("mt_bench/question.jsonl.gz", lambda o: o["turns"][0]),
    "alpaca_eval_prompts": ("alpaca_eval_prompts/alpaca_eval_805_text_davinci_003.jsonl.gz",
                            lambda o: o["instruction"]),
    "arena_hard": ("arena_hard/arena-hard-v0.1_question.jsonl.gz",
                   lambda o: o["turns"][0]["content"]),
}


def section(config):
  """The learner's settings: `config.ppo` for task ppo, `config.grpo` for task grpo."""
  sec = config.get(config.task)
  if sec is None:
    raise ConfigError(f"task {config.task!r} needs a config section {config.task!r} (the RL "
                      f"learner's settings, as in configs/ppo.py)")
  return sec


def check(config):
  """The learner's own keys, each error naming its key; registered names are resolved (a
  'module:name' plug-in is imported here, before anything is built)."""
  pc, t = section(config), config.task
  kind = REWARDS.resolve(config.reward.kind, "reward.kind")
  POLICY_LOSSES.resolve(pc.policy_loss, f"{t}.policy_loss")
  KL_ESTIMATORS.resolve(pc.kl_estimator, f"{t}.kl_estimator")
  traits = ADVANTAGES.traits(pc.advantage, f"{t}.advantage")
  if pc.kl_in not in KL_IN:
    raise ConfigError(f"{t}.kl_in must be one of {', '.join(KL_IN)}, got {pc.kl_in!r}")
  g, low = pc.group_size, 2 if traits["grouped"] else 1
  if isinstance(g, bool) or not isinstance(g, int) or g < low:
    why = f" ({pc.advantage} compares each sample with its group)" if low > 1 else ""
    raise ConfigError(f"{t}.group_size must be an integer >= {low}{why}, got {g!r}")
  if pc.rollout_batch % g:
    raise ConfigError(f"{t}.rollout_batch={pc.rollout_batch} must divide into groups of "
                      f"{t}.group_size={g}")
  if pc.rollout_batch % pc.minibatches:
    raise ConfigError(f"{t}.rollout_batch={pc.rollout_batch} must divide into "
                      f"{t}.minibatches={pc.minibatches}")
  if pc.reward_norm not in rollout.NORM_MODES:
    raise ConfigError(f"{t}.reward_norm must be one of {', '.join(rollout.NORM_MODES)}")
  if pc.uncertainty not in rollout.UNCERTAINTY:
    raise ConfigError(f"{t}.uncertainty must be one of {', '.join(rollout.UNCERTAINTY)}")
  if pc.uncertainty != "none" and not REWARDS.traits(kind)["members"]:
    raise ConfigError(f"{t}.uncertainty={pc.uncertainty!r} needs an ensemble reward (a "
                      f"reward.kind with members, e.g. proxy), got {kind!r}")


def word_policy_config(hidden: int = 64, layers: int = 2) -> LlamaConfig:
  v = rollout.WordTokenizer().vocab_size
  return LlamaConfig(vocab_size=-(-v // 8) * 8, hidden_size=hidden, intermediate_size=2 * hidden,
                     num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                     head_dim=hidden // 4, max_position_embeddings=128, bos_token_id=None,
                     eos_token_id=1, pad_token_id=0)


def load_prompts(spec: str, seed: int = 0, data_dir: str | None = None) -> list:
  """Prompt records [{'prompt': str}] for 'synthetic:N' or 'shared:NAME[:N]'."""
  kind, _, rest = spec.partition(":")
  if kind == "synthetic":
    return synthetic.make_prompts(int(rest or 256), seed=seed)
  if kind == "shared":
    name, _, n = rest.partition(":")
    if name not in SHARED_PROMPTS:
      raise ConfigError(f"unknown shared prompt set {name!r}; choose from {', '.join(SHARED_PROMPTS)}")
    data_dir = data_dir or os.environ.get("RMJAX_SHARED_DATA") or os.path.join(
        os.path.dirname(__file__), "..", "..", "..", "shared", "data")
    rel, get = SHARED_PROMPTS[name]
    path = os.path.join(data_dir, rel)
    if not os.path.exists(path):
      raise ConfigError(f"prompt file not found: {path}")
    out = []
    with gzip.open(path, "rt") as f:
      for line, text in enumerate(f, 1):
        try:
          out.append({"prompt": str(get(json.loads(text)))})
        except (KeyError, IndexError, TypeError, json.JSONDecodeError) as e:
          raise DataError(path, line, "prompt", f"cannot read the first user turn ({e})") from None
    out = [out[i] for i in np.random.default_rng(seed).permutation(len(out))]
    return out[:int(n)] if n else out
  raise ConfigError(f"unknown prompt source {spec!r}; use synthetic:N or shared:NAME")


def label_responses(proxy_config, prompts, seed: int, path: str) -> list:
  """Two base-policy responses per label prompt (`overopt.sample_responses`), cached as JSON at
  `path` under the policy and sampling settings: PPO variants sharing one proxy dir sample the
  SmolLM2 label pairs once (minutes on CPU) instead of once per run."""
  o = proxy_config.overopt
  key = {"policy": o.policy, "spec": proxy_config.model.spec, "seed": seed,
         "prompts": list(prompts), "sampling": [o.max_new_tokens, o.temperature, o.top_p]}
  if os.path.exists(path):
    with open(path) as f:
      cached = json.load(f)
    if cached.get("key") == key:
      return cached["responses"]
  resp = overopt.sample_responses(proxy_config, prompts, 2, seed=seed)
  with open(path, "w") as f:
    json.dump({"key": key, "responses": resp}, f)
  return resp


class PromptIterator:
  """Endless batches of prompt records, reshuffled every epoch from (seed, epoch); its
  `state()` (epoch, index) goes into the checkpoint for exact resume."""

  def __init__(self, records, batch_size: int, seed: int = 0):
    if len(records) < batch_size:
      raise ValueError(f"{len(records)} prompts cannot fill a rollout batch of {batch_size}")
    self.records, self.batch_size, self.seed = list(records), batch_size, seed
    self.epoch, self.index = 0, 0
    self._order = self._perm()

  def _perm(self):
    return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.records))

  def __iter__(self):
    return self

  def __next__(self):
    if self.index + self.batch_size > len(self.records):
      self.epoch, self.index = self.epoch + 1, 0
      self._order = self._perm()
    idx = self._order[self.index:self.index + self.batch_size]
    self.index += self.batch_size
    return [self.records[i] for i in idx]

  def state(self) -> dict:
    return {"epoch": self.epoch, "index": self.index}

  def restore(self, s: dict):
    self.epoch, self.index = int(s["epoch"]), int(s["index"])
    self._order = self._perm()


@REWARDS.register("gold")
def _gold_reward(config, workdir):
  """The synthetic task's known gold reward on decoded text."""
  return rollout.gold_reward_fn


@REWARDS.register("token_count")
def _token_count_reward(config, workdir):
  """Number of `reward.token_id` tokens in the response (CI)."""
  return rollout.token_count_reward_fn(config.reward.token_id)


@REWARDS.register("proxy", members=True)
def _proxy_reward(config, workdir):
  """The overopt gold-RM setup: gold-labelled pairs -> K-member proxy -> members_reward_fn."""
  rc = config.reward
  oc = config.proxy
  n_train, n_eval = oc.overopt.label_prompts, oc.overopt.eval_prompts
  workdir = rc.get("proxy_dir") or workdir  # a shared dir: several PPO runs, one proxy
  pdir = os.path.join(workdir, "proxy_data")
  os.makedirs(pdir, exist_ok=True)
  prompts = [r["prompt"] for r in synthetic.make_prompts(n_train + n_eval, seed=config.seed + 50)]
  resp = label_responses(oc, prompts, config.seed + 50, os.path.join(pdir, "responses.json"))
  pairs, stats = overopt.label_pairs(prompts[:n_train], resp[:n_train], oc.overopt.label_noise,
                                     config.seed)
  evals, _ = overopt.label_pairs(prompts[n_train:], resp[n_train:], 0.0, config.seed + 1)
  if not pairs:
    raise ConfigError(f"all {n_train} proxy label pairs are gold ties (does the base policy "
                      f"{oc.model.spec!r} write words the gold reward scores?)")
  write_pairs(os.path.join(pdir, "train.jsonl"), pairs)
  write_pairs(os.path.join(pdir, "eval.jsonl"), evals)
  score_fn, info = overopt.train_proxy(oc, workdir, os.path.join(pdir, "train.jsonl"),
                                       os.path.join(pdir, "eval.jsonl"))
  if "eval_accuracy" not in info and evals:  # the cached-embedding path reports no eval
    ps = [e.prompt[-1][1] for e in evals]
    mc = np.asarray(score_fn(ps, [e.chosen for e in evals])).mean(1)
    mr = np.asarray(score_fn(ps, [e.rejected for e in evals])).mean(1)
    info["eval_accuracy"] = float(np.mean(mc > mr))       # mean ensemble, clean gold labels
  with open(os.path.join(workdir, "proxy_info.json"), "w") as f:
    json.dump(dict(info, **stats), f, indent=2, default=float)
  # raw member scores; the conservative aggregate is applied by ppo.uncertainty
  return rollout.members_reward_fn(score_fn, "mean")


@dataclasses.dataclass
class PPOSetup:
  """Everything `rmjax.tasks.ppo.Trainer` needs; built by `build`, deterministic in the config
  (so a resumed run rebuilds exactly the same frozen pieces)."""
  cfg: LlamaConfig = None               # policy (and value) backbone config
  value_cfg: LlamaConfig = None
  policy_params: Any = None             # initial policy (host)
  value_params: Any = None              # initial value model (host; with adapters under LoRA;
                                        # None without one)
  ref_params: Any = None                # frozen reference policy, placed on the mesh (None for
                                        # a LoRA policy: its own base weights, adapters off)
  encode_prompt: Callable = None        # prompt record -> token ids
  decode: Callable = None               # response token rows -> texts
  eos_ids: tuple = ()
  pad_id: int = 0
  train_prompts: list = dataclasses.field(default_factory=list)
  eval_prompts: list = dataclasses.field(default_factory=list)
  reward_fn: Callable = None            # (prompts, responses, prompt toks, response toks) -> (r, members)
  gold_fn: Optional[Callable] = None    # (prompts, responses) -> gold rewards, for logging


def policy_config(config) -> LlamaConfig:
  """The policy's (and value model's) LlamaConfig from the config alone (no weights read)."""
  if config.model.spec == "words":
    return word_policy_config(config.model.get("hidden", 64), config.model.get("layers", 2))
  return common.backbone_config(config)


def abstract(config) -> PPOSetup:
  """The setup `rmjax compile` builds the learner's `Trainer` from: model configs only (no
  weights, prompts or reward function); eos from the model config, pad 0."""
  cfg = policy_config(config)
  return PPOSetup(cfg=cfg, value_cfg=cfg, eos_ids=(cfg.eos_token_id or 0,), pad_id=0)


def sampler_steps(policy, policy_sh, cfg, sampling, b: int, prompt_len: int, mesh,
                  prefix: str) -> list:
  """`rmjax compile`'s steps of the sampler the learner runs on the policy params
  (`rmjax.inference.generate`: the prefill into a KV cache and the whole decode loop, the
  cache donated), for `b` prompts of `prompt_len` tokens."""
  n, length = sampling.max_new_tokens, prompt_len + sampling.max_new_tokens
  rep, bsh = NamedSharding(mesh, P()), NamedSharding(mesh, P(shd.BATCH))
  cache = jax.eval_shape(lambda: init_cache(cfg, b, length))
  kv = shd.logical_to_sharding(P(None, "act_batch", None, "act_kv_heads", None),
                               cache["k"].shape, mesh)
  cache_sh = {"k": kv, "v": kv, "index": rep}
  cache = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=cache_sh[k]) for k, v in cache.items()}
  prompt = batch_structs({"ids": ((b, prompt_len), "int32"), "mask": ((b, prompt_len), "int32")},
                         bsh)
  logits = jax.ShapeDtypeStruct((b, cfg.vocab_size), jnp.dtype(cfg.dtype), sharding=bsh)
  knobs = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
                                 sampling.values())
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep)
  structure = sampling.structure()
  out_sh = {k: bsh for k in ("tokens", "logprobs", "logprobs_processed", "mask", "lengths")}
  return [Step(f"{prefix}.prefill",
               lambda p, i, m: generate._prefill(p, i, m, cfg=cfg, cache_len=length),
               (policy, prompt["ids"], prompt["mask"]), (policy_sh, bsh, bsh), (bsh, cache_sh),
               (), llama_flops(cfg, b, prompt_len, train=False)),
          Step(f"{prefix}.decode",
               lambda p, lg, c, m, r, kn: generate._decode(p, lg, c, m, r, kn, cfg=cfg,
                                                           structure=structure),
               (policy, logits, cache, prompt["mask"], rng, knobs),
               (policy_sh, bsh, cache_sh, bsh, rep, jax.tree_util.tree_map(lambda _: rep, knobs)),
               (out_sh, cache_sh), (2,), llama_flops(cfg, b, n, train=False))]


def lora_policy(config, cfg, params) -> Any:
  """The pretrained policy params plus fresh adapters (B = 0: the policy starts as the base)."""
  s = lora.settings(config.model.get("lora"))
  if s.quant:
    raise ConfigError("model.lora.quant (QLoRA) is not supported for the PPO policy yet")
  fresh = strip_boxes(jax.device_get(
      init_params(lora.wrap(Llama(cfg), s), jax.random.PRNGKey(config.seed + 3))))
  return lora.join(params, lora.split(fresh)[1])


def build(config, workdir: str, mesh) -> PPOSetup:
  """Models, prompts and the reward function of an RL config (no value model for a critic-free
  advantage estimator: `value_params` None)."""
  rc, pc = config.reward, section(config)
  s = PPOSetup()
  if config.model.spec == "words":
    tok = rollout.WordTokenizer()
    cfg = policy_config(config)
    params = strip_boxes(jax.device_get(init_params(Llama(cfg), jax.random.PRNGKey(config.seed))))
    s.encode_prompt = tok.encode_prompt
    s.decode = lambda rows: [tok.decode(r) for r in rows]
    s.eos_ids, s.pad_id = (tok.eos_token_id,), tok.pad_token_id
  else:
    cfg, params = checkpoints.load_pretrained(config.model.spec, seed=config.seed)
    cfg = common.numeric_policy(config, cfg)
    tok = checkpoints.load_tokenizer(config.model.tokenizer or config.model.spec)
    s.encode_prompt = lambda p: _render(tok, p, True)
    s.decode = lambda rows: [tok.decode(r, skip_special_tokens=True).strip() or "." for r in rows]
    s.eos_ids = (tok.eos_token_id,)
    s.pad_id = getattr(tok, "pad_token_id", None) or 0
  s.cfg = s.value_cfg = cfg
  lora_s = lora.settings(config.model.get("lora"))
  if ADVANTAGES.traits(pc.advantage)["needs_value"]:
    # a LoRA run's value model is LoRA too: fresh adapters (B = 0) on the value_init backbone
    fresh = shd.strip_boxes(jax.device_get(value_lib.boxed_init(
        cfg, jax.random.PRNGKey(config.seed + 2), value_lib.lora_settings(lora_s))))
    s.value_params = value_lib.init_value_params(fresh, pc.value_init, policy_params=params)
  if lora_s is not None:  # one backbone: ref = adapters off
    s.policy_params, s.ref_params = lora_policy(config, cfg, params), None
  else:
    s.policy_params = params
    s.ref_params = shd.shard_params(params, cfg, mesh)          # frozen: params only
  s.train_prompts = load_prompts(pc.prompts, config.seed)
  s.eval_prompts = load_prompts(pc.eval_prompts, config.seed + 100) if pc.eval_prompts else []
  s.gold_fn = None
  s.reward_fn = REWARDS.get(rc.kind, "reward.kind")(config, workdir)
  if rc.kind == "proxy" or (rc.kind == "gold" and rc.log_gold):
    s.gold_fn = lambda p, r: rollout.gold_reward_fn(p, r)[0]
  return s
