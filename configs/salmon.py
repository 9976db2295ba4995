"""SALMON: principle-following reward model from self-judged synthetic preferences.

  rmjax collect --config configs/salmon.py:tiny --workdir W   # sample pairs, self-judge them
  rmjax train   --config configs/salmon.py:tiny --workdir W   # aggregate + train the RM
  rmjax score   --workdir W --data in.jsonl --out out.jsonl [--principles FILE]

Variants: tiny (byte tokenizer, random tiny model: collection is a mechanics check only; the RM
trains on the synthetic known-rule judge table `synthetic:N`, short principles, compact template),
smollm2 (SmolLM2-135M-Instruct judges AlpacaEval + MT-Bench prompts under SALMON's RM principle
collection; train with salmon.preferences=W/preferences.jsonl), llama3-8b (cluster).
"""

import ml_collections as mlc

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg)
  c = common.base_config(arg, task="salmon")
  c.loss = mlc.ConfigDict(dict(label_smoothing=0.0, centering_coef=0.0, use_margin=False))
  # RM data: judged records -> aggregate (ALGORITHMS.md 3.5) -> principle-conditioned pairs.
  c.salmon = mlc.ConfigDict(dict(
      principles="default", dimensions=(), preferences="", eval_preferences="",
      template="v0", query_len=256, response_len=640, score_principles=5,
      passes=4, p_geom=0.2, max_k=8, negate_prob=0.5, flip_prob=0.10, rule_flip_prob=0.25,
      swap_prob=0.5, ai_rule=True))
  # Collection (ALGORITHMS.md 3.2-3.3): two samples at T=0.7 (seeds 42, 43), judged both orders.
  c.collect = mlc.ConfigDict(dict(
      prompts="shared:alpaca_eval_prompts", limit=0, principles="", dimensions=(),
      max_new_tokens=256, temperature=0.7, top_p=1.0, seeds=(42, 43), min_chars=16,
      gen_batch_size=8, judge_batch_size=8, judge_tokens=("a", "b"), judge_max_length=1536,
      num_shards=1, shard_index=0, progress=True))
  c.data.max_length = 1280
  if arg.variant == "tiny":
    c.salmon.update(principles="synthetic", preferences="synthetic:1500",
                    eval_preferences="synthetic:128", template="compact", query_len=48,
                    response_len=64)
    c.collect.update(prompts="synthetic:16", principles="synthetic", max_new_tokens=24,
                     min_chars=4, judge_max_length=512)
    c.data.max_length = 256
    c.train.steps = 300
    c.train.eval_every = 100
  elif arg.variant == "smollm2":
    # The 8 active dimensions of SALMON's aggregation (ALGORITHMS.md 3.5).
    c.salmon.update(principles="shared:principle_collection_rm",
                    dimensions=("Concise", "Honest and Accurate", "Ethical", "Specific",
                                "Educational and Engaging", "Methodical", "Creative",
                                "Comprehensive"))
    c.collect.update(prompts="shared:alpaca_eval_prompts+shared:mt_bench", limit=16,
                     max_new_tokens=128, judge_max_length=1024)
    c.salmon.update(query_len=128, response_len=384)
    c.data.max_length = 1024
  elif arg.variant == "llama3-8b":
    c.salmon.update(principles="shared:principle_collection_rm", query_len=128, response_len=768)
    c.collect.update(max_new_tokens=768, judge_batch_size=32, gen_batch_size=64)
  return c
