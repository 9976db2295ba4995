"""GRM: reward model with a retained LM head and a text-generation regulariser.

  rmjax train --config configs/grm.py:tiny                      # synthetic pairs, offline, ~1 min
  rmjax train --config configs/grm.py:smollm2                   # SmolLM2-135M on hh-rlhf (90/10)
  rmjax train --config configs/grm.py:tiny,reg=dpo_ref,alpha=0.1

arg keys: variant (tiny | smollm2 | llama3-8b), reg (sft | sft_plain | dpo_noref | dpo_ref),
alpha (weight of L_reg, paper 0.01), beta (0.1), head (mlp | scalar), runlocal.
Paper defaults (ALGORITHMS.md 4.1-4.4): MLP head d->1024->1 with dropout 0.1 on the pooled
hidden state, alpha 0.01, beta 0.1, SFT regulariser, AdamW cosine with 3% warmup, grad clip 5.
"""

import ml_collections as mlc

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, reg="sft", alpha=0.01, beta=0.1, head="mlp")
  c = common.base_config(arg, task="grm")
  c.model.head = arg.head
  c.model.head_hidden = 1024
  c.model.head_dropout = 0.1 if arg.head == "mlp" else 0.0
  c.optim.clip_norm = 5.0
  c.optim.warmup_steps = max(1, int(0.03 * c.train.steps))
  c.loss = mlc.ConfigDict(dict(
      alpha=arg.alpha, reg=arg.reg, beta=arg.beta,
      # the BT part, same fields as configs/bt.py (alpha = 0 reduces GRM to that task)
      label_smoothing=0.0, centering_coef=0.0, use_margin=False))
  if arg.variant == "smollm2":
    c.data.source = "shared:hh_rlhf_helpful_test+hh_rlhf_harmless_test"
    c.data.eval_source = ""  # 10% held out by prompt hash
    c.data.max_length = 512
  return c


def get_sweep(arg=None):
  """BT-equivalent (alpha 0) vs each regulariser at the paper's alpha."""
  runs = [{"loss.alpha": 0.0}]
  runs += [{"loss.alpha": 0.01, "loss.reg": reg} for reg in ("sft", "sft_plain", "dpo_noref",
                                                             "dpo_ref")]
  return runs
