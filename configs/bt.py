"""Bradley-Terry reward model: `rmjax train --config configs/bt.py:tiny`.

Variants: tiny (built-in synthetic pairs, random tiny model, offline, ~1 minute on 2 CPU cores),
smollm2 (SmolLM2-135M-Instruct on hh-rlhf from ../shared/data), llama3-8b (cluster).
Flag `lora`: the LoRA fine-tuning recipe (`configs/common.finetune_recipe`, E-d's BT arm), e.g.
`rmjax train --config configs/bt.py:smollm2,lora --workdir W` (~1 h on 2 CPU cores).
"""

import ml_collections as mlc

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, lora=False)
  c = common.base_config(arg, task="bt")
  c.loss = mlc.ConfigDict(dict(label_smoothing=0.0, centering_coef=0.0, use_margin=False))
  if arg.variant == "smollm2":
    c.data.source = "shared:hh_rlhf_helpful_test+hh_rlhf_harmless_test"
    c.data.eval_source = ""  # 10% held out by prompt hash
    c.data.max_length = 512
  if arg.lora:
    common.finetune_recipe(c)
  return c


def get_sweep(arg=None):
  """One dict of overrides per run; `rmjax sweep` runs them in order (or prints commands)."""
  return [{"optim.lr": lr, "loss.label_smoothing": ls}
          for lr in (3e-4, 1e-3) for ls in (0.0, 0.1)]
