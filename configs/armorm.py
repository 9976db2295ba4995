"""ArmoRM (multi-objective RM + gating): `rmjax train --config configs/armorm.py:tiny`.

Variants: tiny (built-in synthetic multi-objective data, random tiny backbone trained end to end
on the ratings first, small gate; offline, a few minutes on 2 CPU cores), smollm2 (frozen
SmolLM2-135M embeddings; hh-rlhf harmless/helpful pairs (90% prompt-hash side) tag harmlessness /
helpfulness, USR Topical-Chat + XSTest ratings, length as verbosity; held-out 10% eval),
llama3-8b (the paper's sizes: 19 objectives, 3 x 1024 gate, 2000 steps x 1024 pairs).
"""

import ml_collections as mlc

from configs import common
from rmjax.data import objectives as objs
from rmjax.data import synthetic_multi


def get_config(arg=None):
  arg = common.parse_arg(arg, stage1="", smoke=False)
  c = common.base_config(arg, task="armorm")
  c.objectives = mlc.ConfigDict(dict(names=list(objs.ARMORM_NAMES), verbosity=""))
  c.armorm = mlc.ConfigDict(dict(
      stage1="ridge",               # 'ridge' (frozen backbone, closed form) | 'e2e'
      ridge_alphas=(1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 1e2, 1e3, 1e4),
      bt_probe_l2=1e-3, bt_probe_steps=300,
      e2e_steps=300, e2e_bt_coef=1.0,
      corr_threshold=0.03,
      apply_transform_in_training=True,   # paper: True; released stage-2 script: False
      reference="",                 # pairs for de-correlation ('' = the stage-2 train pairs)
      gate_hidden=1024, gate_layers=3, gate_dropout=0.2, temperature=10.0,
      embed_batch_size=16,
      prompt_pattern=(0,),          # filled from the tokenizer's chat template at run time
  ))
  # checkpoint_every: 0 = four saves a run (steps // 4); a caller that keeps only the final
  # params (experiments/armorm_gate.py's many short gate fits) sets it to steps
  c.stage2 = mlc.ConfigDict(dict(steps=2000, batch_size=1024, lr=1e-3, checkpoint_every=0))
  c.data.ratings = ""
  c.data.unrated = ()
  c.data.length_objective = ""    # an objective rated by response length (ratings.length_rating)
  c.data.objective_pairs = ""

  if arg.variant == "tiny":
    c.objectives.names = list(synthetic_multi.OBJECTIVES)
    c.data.ratings = "synthetic_multi:1500"
    c.data.unrated = ("safety",)   # safety is known only from tagged pairs (like hh-rlhf harmless)
    c.data.objective_pairs = "synthetic_multi:600=>safety"
    c.data.source = "synthetic_multi:1000"
    c.data.eval_source = "synthetic_multi:400"
    c.data.max_length = 64
    c.armorm.stage1 = "e2e"        # a random tiny backbone knows nothing: train it first
    c.armorm.e2e_steps = 800
    c.optim.lr = 3e-3
    c.armorm.update(gate_hidden=64, gate_layers=2, gate_dropout=0.1, embed_batch_size=64)
    c.stage2.update(steps=500, batch_size=128, lr=1e-2)  # tiny rewards move slowly at 1e-3
  elif arg.variant == "smollm2":
    # the shared data (experiments/armorm_shared.py runs the same with disjoint probe / gate
    # pairs, XSTest pairs in the gate set and OOD evals): hh-rlhf pairs tag helpfulness and
    # harmlessness, USR Topical-Chat and XSTest give ratings, verbosity = response length
    c.objectives.names = ["helpfulness", "harmlessness"] + [
        o.name for o in objs.SHARED_RATED] + ["verbosity"]
    c.objectives.verbosity = "verbosity"
    c.data.length_objective = "verbosity"
    c.data.ratings = "shared:usr_topicalchat+shared:xstest"
    c.data.objective_pairs = ("shared:hh_rlhf_harmless_test@train=>harmlessness;"
                              "shared:hh_rlhf_helpful_test@train=>helpfulness")
    c.data.source = "shared:hh_rlhf_harmless_test+hh_rlhf_helpful_test@train"  # = tagged pairs
    c.data.eval_source = "shared:hh_rlhf_harmless_test+hh_rlhf_helpful_test@eval"  # held out
    c.armorm.update(gate_hidden=256, gate_layers=3, embed_batch_size=8)
    c.stage2.update(steps=500, batch_size=256)
  if arg.stage1:
    c.armorm.stage1 = arg.stage1
  if arg.runlocal:  # the documented 20-step smoke run: every stage, not only the base loop
    c.armorm.update(e2e_steps=20, bt_probe_steps=20)
    c.stage2.steps = 20
  if arg.smoke:  # test size
    c.data.ratings = "synthetic_multi:300"
    c.data.objective_pairs = "synthetic_multi:100=>safety" if arg.variant == "tiny" else c.data.objective_pairs
    c.data.source = "synthetic_multi:200"
    c.data.eval_source = "synthetic_multi:100"
    c.armorm.e2e_steps = 20
    c.stage2.update(steps=20, batch_size=32)
    c.train.progress = False
  return c
