"""Gold-RM over-optimisation study (best-of-n): `rmjax train --config configs/overopt.py:tiny`.

tiny: synthetic base policy + the known synthetic gold reward, a 5-member proxy (tiny random
backbone + 5 heads trained with the generic loop), BoN pool 64 -> KL up to 3.2 nats; a couple of
minutes on 2 CPU cores. smollm2: SmolLM2-135M-Instruct samples the responses (rmjax.inference.generate),
the synthetic gold reward labels them, and 5 heads train on cached frozen SmolLM2 embeddings.
Args: noise=0.25 (label noise), members=K, pool=N, smoke (a seconds-long run for tests).
"""

import ml_collections as mlc

from configs import common
from configs import ensemble as ensemble_config


def get_config(arg=None):
  arg = common.parse_arg(arg, noise=0.25, members=5, pool=64, smoke=False)
  variant = arg.variant
  c = ensemble_config.get_config(f"{variant},members={arg.members},bootstrap=poisson")
  c.task = "overopt"
  c.overopt = mlc.ConfigDict(dict(
      gold="synthetic", policy="synthetic", label_noise=arg.noise,
      label_prompts=1500, eval_prompts=200, bon_prompts=64, pool=arg.pool,
      aggregators=("mean", "uwo", "wco", "lcb"), lam=0.5, beta=1.0, std="population",
      standardize=True,
      # 'lm' policy sampling
      max_new_tokens=32, temperature=1.0, top_p=1.0, generate_batch_size=16))
  c.train.steps = 250
  c.train.batch_size = 16
  c.train.log_every = 25
  c.train.eval_every = 250
  c.train.checkpoint_every = 250
  c.train.keep_checkpoints = 1
  c.optim.lr = 1e-3
  if variant == "smollm2":
    c.overopt.policy = "lm"
    c.overopt.label_prompts = 400
    c.overopt.eval_prompts = 64
    c.overopt.bon_prompts = 16
    c.overopt.pool = min(arg.pool, 16)
    c.ensemble.cached_embeddings = True
    c.ensemble.head_steps = 400
    c.ensemble.head_lr = 3e-3
    c.data.max_length = 128
  if arg.smoke:
    c.overopt.label_prompts, c.overopt.eval_prompts = 64, 16
    c.overopt.bon_prompts, c.overopt.pool = 8, 8
    c.overopt.max_new_tokens = 8
    c.train.steps = c.train.eval_every = c.train.checkpoint_every = 4
    c.train.batch_size = 8
    c.train.log_every = 2
    c.train.progress = False
    c.train.tensorboard = False
    c.train.async_checkpoint = False
    c.ensemble.head_steps = 20
    c.optim.warmup_steps = 1
  return c
