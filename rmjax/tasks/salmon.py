"""SALMON task: self-judged synthetic preferences (`rmjax collect`) and a principle-following RM
(`rmjax train`, `rmjax score --principles FILE`).

collect(config, workdir): prompts -> two sampled responses each (rmjax.rl.generate) -> the model
judges every pair under every principle, both orders (rmjax.train.salmon_judge) -> JSONL of raw
scores per (pair, principle). build(config): those records (or the synthetic known-rule table) ->
`salmon_aggregate.aggregate` -> principle-conditioned pairs -> the BT loss of rmjax.train.bt through
the generic loop. The RM input puts the response first, then the instruction, then the principles
(rmjax.data.principles.encode_rm_input); the reward is read at the last token.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np

from rmjax.data import principles as P
from rmjax.data import salmon_aggregate as agg
from rmjax.errors import ConfigError
from rmjax.train import bt, builders
from rmjax.train.loop import Task

make_model = bt.make_model  # backbone + scalar head; reward = head(hidden at the last real token)


# ------------------------------------------------------------------------------------------------
# Principles and RM inputs
# ------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=32)
def _principles_cached(spec: str) -> tuple:
  if spec == "synthetic":
    return tuple(agg.SYNTHETIC_PRINCIPLES)
  return tuple(P.load_principles(spec))


def get_principles(spec) -> list:
  """'synthetic' (the known-rule set), 'default', 'shared:NAME', a path, or a list."""
  if isinstance(spec, (list, tuple)):
    return P.load_principles(list(spec))
  return list(_principles_cached(str(spec or "default")))


def rm_ids(tokenizer, config, messages, response, principle_texts) -> list:
  s = config.salmon
  return P.encode_rm_input(tokenizer, P.instruction_text(messages), response, principle_texts,
                           s.query_len, s.response_len, s.template)


def resolve_principle_texts(config, principles=None) -> list:
  """Bullet texts for scoring: None -> the first `salmon.score_principles` principles of the
  config's collection (none negated, as SALMON does for examples without dimensions); a file or
  spec -> all its definitions; a list of strings -> those texts; a list of principles -> their
  definitions."""
  if principles is None:
    return [p.definition for p in get_principles(config.salmon.principles)[
        :config.salmon.score_principles]]
  if isinstance(principles, str):
    return [p.definition for p in get_principles(principles)]
  if principles and all(isinstance(p, str) for p in principles):
    return list(principles)
  return [p.definition for p in get_principles(principles)]


def score_ids(encoder, config, messages, response, principles=None) -> list:
  """RM input ids for `rmjax score` (Scorer passes --principles through as `principles`)."""
  return rm_ids(encoder.tokenizer, config, messages, response,
                resolve_principle_texts(config, principles))


# ------------------------------------------------------------------------------------------------
# Training data
# ------------------------------------------------------------------------------------------------

def load_records(spec: str, seed: int = 0) -> list:
  """Judged pair records: 'synthetic:N' (known-rule judge over the synthetic pairs),
  'length:N' (pairs that differ only in length, same judge) or JSONL paths joined with '+'."""
  from rmjax.data.pairs import iter_records
  if not spec:
    raise ConfigError("salmon.preferences is empty: point it at `rmjax collect` output "
                      "(WORKDIR/preferences.jsonl) or use synthetic:N")
  if spec.startswith("synthetic:"):
    return agg.synthetic_records(int(spec.split(":", 1)[1] or 2000), seed=seed)
  if spec.startswith("length:"):
    return agg.length_records(int(spec.split(":", 1)[1] or 1000), seed=seed)
  out = []
  for path in spec.split("+"):
    for _, obj in iter_records(path):
      if isinstance(obj, dict) and "scores" in obj:
        out.append(obj)
  return out


def _hash_eval(rec, fraction) -> bool:
  key = json.dumps(rec["prompt"], ensure_ascii=False, sort_keys=True)
  return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def aggregate_config(config, records, seed, clean=False):
  """`aggregate` with the config's knobs; `clean` turns label noise off (eval sets)."""
  s = config.salmon
  return agg.aggregate(
      records, get_principles(s.principles), list(s.dimensions) or None, seed=seed,
      passes=s.passes, p_geom=s.p_geom, max_k=s.max_k, negate_prob=s.negate_prob,
      flip_prob=0.0 if clean else s.flip_prob, rule_flip_prob=0.0 if clean else s.rule_flip_prob,
      swap_prob=s.swap_prob, ai_rule=s.ai_rule)


def tokenize_examples(examples, tok, config):
  """Aggregated examples -> (TokenizedPairs, eval views, stats); chosen = the preferred output."""
  from rmjax.data.batching import TokenizedPairs
  from rmjax.data.tokenize import normalize_prompt
  chosen, rejected, views, ids, dropped = [], [], [], [], 0
  for ex in examples:
    messages = normalize_prompt(ex["prompt"])
    good, bad = (ex["output_1"], ex["output_2"])[::1 if ex["preference"] == 1 else -1]
    c = rm_ids(tok, config, messages, good, ex["principles"])
    r = rm_ids(tok, config, messages, bad, ex["principles"])
    if max(len(c), len(r)) > config.data.max_length:
      dropped += 1
      continue
    chosen.append(np.asarray(c, np.int32))
    rejected.append(np.asarray(r, np.int32))
    subset = "negated" if ex["dominant_negated"] else "original"
    views.append(types.SimpleNamespace(subset=subset, chosen=good, rejected=bad))
    ids.append(str(ex.get("id")))
  n = len(chosen)
  pad = getattr(tok, "pad_token_id", None) or 0
  data = TokenizedPairs(chosen, rejected, np.zeros(n, np.int32), np.zeros(n, np.float32),
                        [v.subset for v in views], ids, pad)
  return data, views, {"pairs": len(examples), "kept": n, "dropped_overlong": dropped}


def salmon_data(config, tok):
  """(train batcher, eval batches fn or None, eval views, stats); eval labels carry no noise."""
  from rmjax.data.batching import PairBatcher
  s = config.salmon
  records = load_records(s.preferences, config.seed)
  if s.eval_preferences:
    train_recs, eval_recs = records, load_records(s.eval_preferences, config.seed + 1)
  else:
    train_recs = [r for r in records if not _hash_eval(r, config.data.eval_fraction)]
    eval_recs = [r for r in records if _hash_eval(r, config.data.eval_fraction)]
  train_ex, astats = aggregate_config(config, train_recs, config.seed)
  eval_ex, _ = aggregate_config(config, eval_recs, config.seed + 1, clean=True)
  eval_ex = eval_ex[:config.data.max_eval_examples or None]
  train_tok, _, tstats = tokenize_examples(train_ex, tok, config)
  eval_tok, eval_views, estats = tokenize_examples(eval_ex, tok, config)
  buckets = tuple(config.data.buckets)
  batcher = PairBatcher(train_tok, config.train.batch_size, buckets=buckets, seed=config.seed)
  evalb = None
  if len(eval_tok):
    evalb = PairBatcher(eval_tok, config.train.batch_size, buckets=buckets, seed=config.seed,
                        shuffle=False, drop_remainder=False).eval_batches
  stats = {"aggregate": astats, "train_tokenize": tstats, "eval_tokenize": estats}
  return batcher, evalb, eval_views, stats


def build(config) -> Task:
  cfg, backbone_params = builders.backbone(config)
  tok = builders.tokenizer(config)
  model = make_model(config, cfg)
  batcher, eval_batches, views, stats = salmon_data(config, tok)

  def init_params(rng):
    ids = jnp.zeros((2, 8), jnp.int32)
    return model.init(rng, ids, jnp.ones_like(ids))["params"]

  return Task(
      init_params=init_params,
      loss_fn=bt.bt_loss_fn(model, config.loss),
      train_batches=batcher,
      eval_fn=bt.pair_eval_fn(model) if eval_batches else None,
      eval_batches=eval_batches,
      summarize_eval=bt.summarize_pairs(views),
      load_pretrained=lambda p, s: builders.params_with_backbone(p, backbone_params, s),
      trainable=(lambda k: k != "backbone") if config.train.freeze_backbone else None,
      info=stats,
      model_config=cfg)


def reward_fn(model, params, tok, config, batch_size: int = 16):
  """(messages, response, principle texts) lists -> rewards [N] (numpy), for tests/notebooks.
  Params are copied to the host first (a small model; mesh-placed params need the mesh)."""
  params = jax.device_get(params)
  apply = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m)["reward"])

  def score(prompts, responses, principle_lists):
    from rmjax.data.tokenize import normalize_prompt
    rows = [rm_ids(tok, config, normalize_prompt(p), r, pl)
            for p, r, pl in zip(prompts, responses, principle_lists)]
    out = []
    for start in range(0, len(rows), batch_size):
      chunk = rows[start:start + batch_size]
      t = max(len(x) for x in chunk)
      t = -(-t // 64) * 64
      ids = np.zeros((batch_size, t), np.int32)
      mask = np.zeros((batch_size, t), np.int32)
      mask[:, 0] = 1
      for i, x in enumerate(chunk):
        ids[i, :len(x)], mask[i, :len(x)] = x, 1
      out.append(np.asarray(apply(params, ids, mask))[:len(chunk)])
    return np.concatenate(out)
  return score



# ------------------------------------------------------------------------------------------------
# Collection: sample two responses per prompt, self-judge each pair under each principle
# ------------------------------------------------------------------------------------------------

JUDGE_SYSTEM = ("You compare two outputs of an AI assistant for the same instruction and pick the "
                "better one, or the less flawed one when both have problems, judging only by the "
                "guideline you are given.")
JUDGE_USER = ("Instruction:\n{instruction}\n\nOutput (a):\n{a}\n\nOutput (b):\n{b}\n\n"
              "Guideline: compare the two outputs on this dimension only.\n"
              "{dimension}: {definition}\n\nWhich output is better on this dimension?")
JUDGE_PREFILL = "Comparing the two outputs on {dimension}, the better one is Output ("


def judge_token_ids(tokenizer, tokens, context: str = "Output (") -> list:
  """Ids of the verdict tokens as the tokenizer reads them right after `context`; ConfigError
  unless each is exactly one token there (and they differ)."""
  enc = lambda s: list(tokenizer.encode(s, add_special_tokens=False))
  base = enc(context)
  out = []
  for t in tokens:
    ids = enc(context + t)
    if ids[:len(base)] != base or len(ids) != len(base) + 1:
      raise ConfigError(f"judge token {t!r} is not a single token after {context!r} for tokenizer "
                        f"{getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)} "
                        f"({ids[len(base):] if ids[:len(base)] == base else ids}): choose "
                        f"collect.judge_tokens that are")
    out.append(ids[-1])
  if len(set(out)) != len(out):
    raise ConfigError(f"judge tokens {list(tokens)} map to the same id {out}")
  return out


def judge_ids(tokenizer, messages, first: str, second: str, principle) -> list:
  """Judge prompt through the chat template, the answer pre-filled up to the verdict token."""
  user = JUDGE_USER.format(instruction=P.instruction_text(messages), a=first, b=second,
                           dimension=principle.dimension, definition=principle.definition)
  chat = [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]
  text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
  text += JUDGE_PREFILL.format(dimension=principle.dimension)
  return list(tokenizer.encode(text, add_special_tokens=False))


@functools.partial(jax.jit, static_argnames=("cfg",))
def _verdict_logits(params, ids, mask, token_ids, *, cfg):
  """Left-padded judge prompts [B, T] -> logits of the verdict tokens at the last slot [B, 2]."""
  from rmjax.models.llama import Llama
  hidden, _ = Llama(cfg).apply({"params": params}, ids, mask, method=Llama.hidden_states)
  logits = Llama(cfg).apply({"params": params}, hidden[:, -1:], method=Llama.logits_from_hidden)
  return logits[:, 0][:, token_ids]


def judge_scores(params, cfg, tokenizer, items, token_ids, *, batch_size: int, max_length: int,
                 mesh=None) -> np.ndarray:
  """items: [(messages, first, second, principle)] -> l(a) - l(b) per item [N] (a = first)."""
  from rmjax import sharding as shd
  from rmjax.rl.generate import left_pad
  div = shd.batch_divisor(mesh) if mesh is not None else 1
  b = -(-batch_size // div) * div
  rows = [judge_ids(tokenizer, *it) for it in items]
  out = []
  for start in range(0, len(rows), b):
    chunk = rows[start:start + b]
    ids, mask = left_pad(chunk + [chunk[0]] * (b - len(chunk)), 0, multiple=64)
    if ids.shape[1] > max_length:  # left truncation (the verdict end must stay)
      ids, mask = ids[:, -max_length:], mask[:, -max_length:]
    tid = jnp.asarray(token_ids, jnp.int32)
    if mesh is not None:
      import flax.linen as nn
      with jax.set_mesh(mesh), nn.logical_axis_rules(shd.DEFAULT_RULES):
        batch = shd.shard_batch({"ids": ids, "mask": mask}, mesh)
        lg = _verdict_logits(params, batch["ids"], batch["mask"], tid, cfg=cfg)
    else:
      lg = _verdict_logits(params, ids, mask, tid, cfg=cfg)
    lg = np.asarray(jax.device_get(lg))[:len(chunk)]
    out.append(lg[:, 0] - lg[:, 1])
  return np.concatenate(out) if out else np.zeros(0)


def load_prompts(spec: str, seed: int = 0, limit: int = 0) -> list:
  """[(id, messages)] from 'synthetic:N', 'shared:alpaca_eval_prompts', 'shared:mt_bench'
  (first turns) or a JSONL of {"prompt"} / {"instruction"} / {"turns"}; several joined by '+'
  (`limit` applies to each). id = hash of the messages; repeated prompts are kept once."""
  from rmjax.data.pairs import iter_records
  from rmjax.data.tokenize import normalize_prompt
  out = []
  for part in spec.split("+"):
    if part.startswith("synthetic:"):
      from rmjax.data import synthetic
      objs = [(i, r) for i, r in enumerate(synthetic.make_prompts(int(part[10:] or 32), seed))]
      path = "synthetic"
    else:
      if part.startswith("shared:"):
        from rmjax.data.sources import _shared_files
        _, files = _shared_files(part[7:])
        files = [f for f in files if "reference" not in f.name]
      else:
        files = [part[5:] if part.startswith("json:") else part]
      objs, path = [], part
      for f in files:
        objs += list(iter_records(str(f)))
    taken = []
    for line, obj in objs:
      text = obj.get("prompt", obj.get("instruction"))
      if text is None and obj.get("turns"):
        text = obj["turns"][0]
      messages = normalize_prompt(text, path, line)
      key = json.dumps(messages, ensure_ascii=False, sort_keys=True)
      taken.append((hashlib.sha1(key.encode()).hexdigest()[:16], messages))
    out += taken[:limit or None]
  seen = set()  # the same prompt twice is one pair (ids are content hashes)
  return [(i, m) for i, m in out if not (i in seen or seen.add(i))]


def _done_ids(path):
  if not os.path.exists(path):
    return {}
  from rmjax.data.pairs import iter_records
  try:
    return {obj["id"]: obj for _, obj in iter_records(path)}
  except Exception:  # a torn last line after a kill: keep the complete lines
    done = {}
    with open(path) as f:
      for line in f:
        try:
          obj = json.loads(line)
          done[obj["id"]] = obj
        except (json.JSONDecodeError, KeyError):
          break
    return done


def _clean(text: str) -> str:
  return text.split("###")[0].strip()


def sample_pairs(params, cfg, tok, prompts, c, path, mesh=None) -> list:
  """Two sampled responses per prompt (seeds c.seeds), appended to `path` batch by batch;
  prompts already there are skipped. Pairs with an output under c.min_chars are marked dropped."""
  from tqdm.auto import tqdm
  from rmjax.rl.generate import SamplingConfig, generate, left_pad
  done = _done_ids(path)
  eos = getattr(tok, "eos_token_id", None)
  sampling = SamplingConfig(max_new_tokens=c.max_new_tokens, temperature=c.temperature,
                            top_p=c.top_p, eos_ids=() if eos is None else (eos,),
                            pad_id=getattr(tok, "pad_token_id", None) or 0)
  vocab = len(tok)
  bs = c.gen_batch_size
  with open(path, "a") as f:
    for n, start in enumerate(tqdm(range(0, len(prompts), bs), desc="sample", disable=not c.progress)):
      chunk = prompts[start:start + bs]
      if all(pid in done for pid, _ in chunk):
        continue
      rows = [list(tok.encode(tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
                              add_special_tokens=False)) for _, m in chunk]
      ids, mask = left_pad(rows + [rows[0]] * (bs - len(rows)), sampling.pad_id, multiple=64)
      texts = []
      for seed in c.seeds:
        out = jax.device_get(generate(params, cfg, ids, mask,
                                      jax.random.fold_in(jax.random.PRNGKey(seed), n), sampling,
                                      mesh=mesh))
        # ids past the tokenizer's vocabulary (a random model's) and the EOS are not text
        texts.append([tok.decode([int(t) for t in out["tokens"][r, :int(out["lengths"][r])]
                                  if int(t) < vocab and int(t) != eos], skip_special_tokens=True)
                      for r in range(len(chunk))])
      for (pid, messages), o1, o2 in zip(chunk, *texts):
        if pid in done:
          continue
        a, b = _clean(o1), _clean(o2)
        rec = {"id": pid, "prompt": messages, "output_1": a, "output_2": b,
               "dropped": min(len(o1.strip()), len(o2.strip())) < c.min_chars}
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        done[pid] = rec
      f.flush()
  return [done[pid] for pid, _ in prompts if pid in done]


def judge_pairs(params, cfg, tok, pairs, principles, c, path, mesh=None) -> list:
  """Scores per (pair, principle) in both orders, appended to `path` per group of pairs:
  {"id", "prompt", "output_1", "output_2", "scores": {dim: [s12, s21]}, "labels": {dim: 1|2|0}}.
  s12 = l(a) - l(b) with output_1 as (a); s21 = l(b) - l(a) with the order swapped, so positive
  always means output_1. Pairs already in `path` are skipped."""
  from tqdm.auto import tqdm
  token_ids = judge_token_ids(tok, c.judge_tokens)
  done = _done_ids(path)
  todo = [p for p in pairs if p["id"] not in done and not p.get("dropped")]
  group = max(1, c.judge_batch_size // 2)  # pairs per write: 2 * |principles| forward rows each
  with open(path, "a") as f, tqdm(total=len(todo), desc="judge", disable=not c.progress) as bar:
    for start in range(0, len(todo), group):
      chunk = todo[start:start + group]
      items = [(p["prompt"], *((p["output_1"], p["output_2"])[::o]), pr)
               for p in chunk for pr in principles for o in (1, -1)]
      d = judge_scores(params, cfg, tok, items, token_ids, batch_size=c.judge_batch_size,
                       max_length=c.judge_max_length, mesh=mesh).reshape(len(chunk), len(principles), 2)
      for p, s in zip(chunk, d):
        scores = {pr.dimension: [float(s[j, 0]), float(-s[j, 1])] for j, pr in enumerate(principles)}
        rec = dict((k, p[k]) for k in ("id", "prompt", "output_1", "output_2"))
        rec.update(scores=scores, labels={k: agg.consistency_label(*v) for k, v in scores.items()})
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        done[p["id"]] = rec
      f.flush()
      bar.update(len(chunk))
  return [done[p["id"]] for p in pairs if p["id"] in done]


def consistency_rates(records, dims) -> dict:
  """Per dimension: fraction of pairs whose two orders agree in sign (label 1 or 2)."""
  return {d: float(np.mean([agg.consistency_label(*r["scores"][d]) != 0 for r in records]))
          if records else 0.0 for d in dims}


def collect(config, workdir: str) -> dict:
  """`rmjax collect`: prompts -> pairs (workdir/responses*.jsonl) -> judged pairs
  (workdir/preferences*.jsonl). Shard i of n (collect.shard_index / num_shards) takes every n-th
  prompt and writes its own files; reruns resume where the files end."""
  from rmjax import checkpoints
  from rmjax import sharding as shd
  c = config.collect
  if not 0 <= c.shard_index < c.num_shards:
    raise ConfigError(f"collect.shard_index {c.shard_index} not in [0, {c.num_shards})")
  tok = builders.tokenizer(config)
  principles = get_principles(c.principles or config.salmon.principles)
  if c.dimensions:
    table = P.by_dimension(principles)
    missing = [d for d in c.dimensions if d not in table]
    if missing:
      raise ConfigError(f"collect.dimensions {missing} not in the principle collection")
    principles = [table[d] for d in c.dimensions]
  judge_token_ids(tok, c.judge_tokens)  # fail before any model work
  prompts = load_prompts(c.prompts, config.seed, c.limit)[c.shard_index::c.num_shards]
  if not prompts:
    raise ConfigError(f"collect.prompts {c.prompts!r} gave no prompts")
  os.makedirs(workdir, exist_ok=True)
  suffix = f"-{c.shard_index:05d}-of-{c.num_shards:05d}" if c.num_shards > 1 else ""
  resp_path = os.path.join(workdir, f"responses{suffix}.jsonl")
  pref_path = os.path.join(workdir, f"preferences{suffix}.jsonl")
  mesh = shd.make_mesh(tuple(config.mesh.shape))
  cfg, params = checkpoints.load_pretrained(config.model.spec, mesh=mesh, seed=config.seed)
  pairs = sample_pairs(params, cfg, tok, prompts, c, resp_path, mesh)
  judged = judge_pairs(params, cfg, tok, pairs, principles, c, pref_path, mesh)
  dims = [p.dimension for p in principles]
  stats = {"prompts": len(prompts), "pairs": len(pairs),
           "dropped": sum(bool(p.get("dropped")) for p in pairs), "judged": len(judged),
           "responses": resp_path, "preferences": pref_path,
           "consistency": consistency_rates(judged, dims)}
  with open(os.path.join(workdir, f"collect_stats{suffix}.json"), "w") as f:
    json.dump(stats, f, indent=2)
  return stats
