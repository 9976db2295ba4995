"""`rmjax collect` for SALMON: prompts -> two sampled responses each -> the model judges every
pair under every principle in both orders (`rmjax.inference.judge`) -> JSONL records of raw
scores per (pair, principle), which `rmjax.tasks.salmon` aggregates into training pairs.
Files are appended batch by batch; a rerun resumes where they end.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import numpy as np
from tqdm.auto import tqdm

from rmjax import checkpoints
from rmjax import sharding as shd
from rmjax.data import principles as P
from rmjax.data import salmon_aggregate as agg
from rmjax.data import synthetic
from rmjax.data.sources import _shared_files
from rmjax.data.pairs import iter_records
from rmjax.data.tokenize import normalize_prompt
from rmjax.errors import ConfigError, DataError
from rmjax.inference.generate import SamplingConfig, generate, left_pad
from rmjax.inference.judge import judge_scores, judge_token_ids
from rmjax.tasks import common

def load_prompts(spec: str, seed: int = 0, limit: int = 0) -> list:
  """[(id, messages)] from 'synthetic:N', 'shared:alpaca_eval_prompts', 'shared:mt_bench'
  (first turns) or a JSONL of {"prompt"} / {"instruction"} / {"turns"}; several joined by '+'
  (`limit` applies to each). id = hash of the messages; repeated prompts are kept once."""
  out = []
  for part in spec.split("+"):
    if part.startswith("synthetic:"):
      objs = [(i, r) for i, r in enumerate(synthetic.make_prompts(int(part[10:] or 32), seed))]
      path = "synthetic"
    else:
      if part.startswith("shared:"):
        _, files = _shared_files(part[7:])
        files = [f for f in files if "reference" not in f.name]
      else:
        files = [part[5:] if part.startswith("json:") else part]
      objs, path = [], part
      for f in files:
        objs += list(iter_records(str(f)))
    taken = []
    for line, obj in objs:
      if not isinstance(obj, dict):
        raise DataError(path, line, None, f"expected a JSON object with prompt, instruction or "
                        f"turns, got {type(obj).__name__}")
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
  c = config.collect
  if not 0 <= c.shard_index < c.num_shards:
    raise ConfigError(f"collect.shard_index {c.shard_index} not in [0, {c.num_shards})")
  tok = common.tokenizer(config)
  principles = agg.get_principles(c.principles or config.salmon.principles)
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
  suffix = f"-{c.shard_index:05d}-of-{c.num_shards:05d}" if c.num_shards > 1 else ""
  resp_path = os.path.join(workdir, f"responses{suffix}.jsonl")
  pref_path = os.path.join(workdir, f"preferences{suffix}.jsonl")
  mesh = shd.make_mesh(tuple(config.mesh.shape))
  cfg, params = checkpoints.load_pretrained(config.model.spec, mesh=mesh, seed=config.seed)
  os.makedirs(workdir, exist_ok=True)  # only once the model loaded: a failed start leaves none
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
