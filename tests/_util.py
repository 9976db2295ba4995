"""Shared test helpers: a tiny, fast, quiet training config on the built-in synthetic data, and
the XLA flags of the suite's processes."""

# XLA:CPU compilation dominates the suite (tiny models, a few steps each): LLVM without its
# optimisation passes compiles about twice as fast, and programs this small run about as fast.
# Every test process (pytest, its `rmjax` subprocesses, notebook kernels) uses the same flags.
XLA_TEST_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a test process with `devices` fake CPU devices."""
  return f"--xla_force_host_platform_device_count={devices} {XLA_TEST_FLAGS}"



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


def k_label_classifier(path, k: int = 3, seed: int = 1) -> None:
  """A random transformers LlamaForSequenceClassification with k labels and the byte tokenizer
  (rmjax's, as a `tokenizers` file) saved in `path`: an HF ensemble reward model in seconds."""
  import torch  # noqa: PLC0415 -- only the tests that build one need torch
  import transformers  # noqa: PLC0415
  from rmjax.checkpoints import tokenizer_export  # noqa: PLC0415
  torch.manual_seed(seed)
  config = transformers.LlamaConfig(
      vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
      num_attention_heads=2, num_key_value_heads=2, initializer_range=0.3, pad_token_id=0,
      eos_token_id=2, bos_token_id=3, num_labels=k)
  transformers.LlamaForSequenceClassification(config).eval().save_pretrained(path)
  tokenizer_export.byte_tokenizer_fast().save_pretrained(path)
