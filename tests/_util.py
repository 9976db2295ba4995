"""Shared test helpers: a tiny, fast, quiet training config on the built-in synthetic data."""


def fast_config(c, steps=3, train_pairs=200, eval_pairs=16, batch_size=8):
  """`c` set up for a few-step run: synthetic data, no progress bar, TensorBoard or async saves,
  metrics every step, one checkpoint at the end."""
  c.data.source = f"synthetic:{train_pairs}"
  c.data.eval_source = f"synthetic:{eval_pairs}"
  c.train.steps = steps
  c.train.batch_size = batch_size
  c.train.log_every = 1
  c.train.eval_every = 0
  c.train.checkpoint_every = steps
  c.train.progress = False
  c.train.tensorboard = False
  c.train.async_checkpoint = False
  c.optim.warmup_steps = 1
  return c
