"""Reward-model ensembles: `rmjax train --config configs/ensemble.py:tiny`.

Variants: tiny (built-in synthetic pairs, random tiny model, offline), smollm2 (SmolLM2-135M on
hh-rlhf from ../shared/data, K heads on a shared backbone), llama3-8b (cluster). Arg switches:
`members=K`, `mode=heads|independent|lora` (lora: K LoRA adapter sets + heads on one frozen
backbone; set `--config.model.lora.rank`), `bootstrap=none|poisson|multinomial`, `cached` (frozen
backbone, heads trained on cached pooled embeddings: seconds once the embeddings exist).
"""

import ml_collections as mlc

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, members=5, mode="heads", bootstrap="poisson", cached=False)
  c = common.base_config(arg, task="ensemble")
  c.model.head = "ensemble"
  c.loss = mlc.ConfigDict(dict(label_smoothing=0.0, centering_coef=0.0, use_margin=False))
  c.ensemble = mlc.ConfigDict(dict(
      members=arg.members, mode=arg.mode, bootstrap=arg.bootstrap, seed=0,
      cached_embeddings=bool(arg.cached),
      # fast path (cached embeddings, under data.feature_cache): optax AdamW on [N, D] arrays
      head_steps=300, head_lr=1e-2, head_batch_size=256, head_weight_decay=1e-4))
  # How the members become one number is the reader's choice, not the RM's: `rmjax score` gives
  # mean, std and members; PPO and GRPO configs take `aggregate`, best-of-n overopt.aggregators.
  if arg.variant == "smollm2":
    c.data.source = "shared:hh_rlhf_helpful_test+hh_rlhf_harmless_test"
    c.data.eval_source = ""  # 10% held out by prompt hash
    c.data.max_length = 512
  return c


def get_sweep(arg=None):
  return [{"ensemble.bootstrap": b, "ensemble.seed": s} for b in ("none", "poisson") for s in (0, 1)]
