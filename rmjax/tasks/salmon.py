"""SALMON task: self-judged synthetic preferences (`rmjax collect`) and a principle-following RM
(`rmjax train`, `rmjax score --principles FILE`).

collect(config, workdir): prompts -> two sampled responses each (rmjax.inference.generate) -> the model
judges every pair under every principle, both orders (rmjax.inference.judge, run by rmjax.tasks.salmon_collect) -> JSONL of raw
scores per (pair, principle). build(config): those records (or the synthetic known-rule table) ->
`salmon_aggregate.aggregate` -> principle-conditioned pairs (`salmon_data`) -> the BT loss of
rmjax.tasks.bt, through the pair assembly (`pair_spec`) and the generic loop. The RM input puts the response first, then the instruction, then the principles
(rmjax.data.principles.encode_rm_input); the reward is read at the last token.
"""

from __future__ import annotations

import json
import types

import jax
import numpy as np

from rmjax.data import principles as P
from rmjax.data import salmon_aggregate as agg
from rmjax.data.batching import PairBatcher, TokenizedPairs
from rmjax.data.pairs import iter_records
from rmjax.data.sources import split_by_prompt_hash
from rmjax.data.specs import require_examples
from rmjax.data.tokenize import normalize_prompt
from rmjax.errors import ConfigError
from rmjax.inference.embed import batched_forward
from rmjax.tasks import bt, salmon_collect
from rmjax.tasks.pairs import PairMethod, pair_spec
from rmjax.train.run import data_info

make_model = bt.make_model  # backbone + scalar head; reward = head(hidden at the last real token)


# ------------------------------------------------------------------------------------------------
# Principles and RM inputs
# ------------------------------------------------------------------------------------------------

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
    return [p.definition for p in agg.get_principles(config.salmon.principles)[
        :config.salmon.score_principles]]
  if isinstance(principles, str):
    return [p.definition for p in agg.get_principles(principles)]
  if principles and all(isinstance(p, str) for p in principles):
    return list(principles)
  return [p.definition for p in agg.get_principles(principles)]


def score_ids(encoder, config, messages, response, principles=None) -> list:
  """RM input ids for `rmjax score` (Scorer passes --principles through as `principles`)."""
  return rm_ids(encoder.tokenizer, config, messages, response,
                resolve_principle_texts(config, principles))


# ------------------------------------------------------------------------------------------------
# Training data
# ------------------------------------------------------------------------------------------------

def load_records(spec: str, seed: int = 0) -> tuple[list, int]:
  """(judged pair records, records read that are not judged pairs: no 'scores'):
  'synthetic:N' (known-rule judge over the synthetic pairs), 'length:N' (pairs that differ only
  in length, same judge) or JSONL paths joined with '+'."""
  if not spec:
    raise ConfigError("salmon.preferences is empty: point it at `rmjax collect` output "
                      "(WORKDIR/preferences.jsonl) or use synthetic:N")
  if spec.startswith("synthetic:"):
    return agg.synthetic_records(int(spec.split(":", 1)[1] or 2000), seed=seed), 0
  if spec.startswith("length:"):
    return agg.length_records(int(spec.split(":", 1)[1] or 1000), seed=seed), 0
  out, unjudged = [], 0
  for path in spec.split("+"):
    for _, obj in iter_records(path):
      if isinstance(obj, dict) and "scores" in obj:
        out.append(obj)
      else:
        unjudged += 1
  return out, unjudged


def aggregate_config(config, records, seed, clean=False):
  """`aggregate` with the config's knobs; `clean` turns label noise off (eval sets)."""
  s = config.salmon
  return agg.aggregate(
      records, agg.get_principles(s.principles), list(s.dimensions) or None, seed=seed,
      passes=s.passes, p_geom=s.p_geom, max_k=s.max_k, negate_prob=s.negate_prob,
      flip_prob=0.0 if clean else s.flip_prob, rule_flip_prob=0.0 if clean else s.rule_flip_prob,
      swap_prob=s.swap_prob, ai_rule=s.ai_rule)


def tokenize_examples(examples, tok, config):
  """Aggregated examples -> (TokenizedPairs, eval views, stats); chosen = the preferred output."""
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
  s = config.salmon
  records, unjudged = load_records(s.preferences, config.seed)
  if s.eval_preferences:
    train_recs, eval_recs = records, load_records(s.eval_preferences, config.seed + 1)[0]
  else:
    train_recs, eval_recs = split_by_prompt_hash(
        records, config.data.eval_fraction, config.seed,
        key=lambda r: json.dumps(r["prompt"], ensure_ascii=False, sort_keys=True))
  train_ex, astats = aggregate_config(config, train_recs, config.seed)
  eval_ex, _ = aggregate_config(config, eval_recs, config.seed + 1, clean=True)
  eval_ex = eval_ex[:config.data.max_eval_examples or None]
  train_tok, _, tstats = tokenize_examples(train_ex, tok, config)
  dropped = {"no scores (not a judged pair)": unjudged, "judged a tie": astats["skipped_tie"],
             "incomplete scores": astats["records"] - astats["complete"],
             "overlong": tstats["dropped_overlong"]}
  require_examples(s.preferences, train_tok.chosen, {
      "n_in": len(train_recs) + unjudged, "dropped": {k: n for k, n in dropped.items() if n}})
  eval_tok, eval_views, estats = tokenize_examples(eval_ex, tok, config)
  buckets = tuple(config.data.buckets)
  batcher = PairBatcher(train_tok, config.train.batch_size, buckets=buckets, seed=config.seed)
  evalb = None
  if len(eval_tok):
    evalb = PairBatcher(eval_tok, config.train.batch_size, buckets=buckets, seed=config.seed,
                        shuffle=False, drop_remainder=False).eval_batches
  # the data report train prints for every method (records read, pairs kept, dropped by reason)
  stats = data_info(s.preferences, len(records) + unjudged, len(train_tok), len(eval_tok),
                    dropped, 0, aggregate=astats, train_tokenize=tstats, eval_tokenize=estats)
  return batcher, evalb, eval_views, stats


def reward_fn(model, params, tok, config, batch_size: int = 16):
  """(messages, response, principle texts) lists -> rewards [N] (numpy), for tests/notebooks.
  Params are copied to the host first (a small model; mesh-placed params need the mesh)."""
  params = jax.device_get(params)
  apply = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m)["reward"])

  def score(prompts, responses, principle_lists):
    rows = [rm_ids(tok, config, normalize_prompt(p), r, pl)
            for p, r, pl in zip(prompts, responses, principle_lists)]
    return batched_forward(apply, params, rows, batch_size=batch_size)
  return score


SPEC = pair_spec("salmon", PairMethod(loss=bt.bt_loss, data=salmon_data), score_ids=score_ids,
                 collect=salmon_collect.collect)
build = SPEC.build
