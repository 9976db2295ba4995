"""Model FLOPs of a Llama step, counted from the architecture (the 'model FLOPs' of MFU).

The TPU compiler's cost analysis counts the body of a loop once, so for a model whose layers run
under `nn.scan` its FLOPs are roughly one layer's worth; pass these figures as `model_flops` to
`rmjax.aot.report.compile_function` for a meaningful roofline.
"""

from __future__ import annotations


def llama_matmul_params(cfg) -> int:
  """Parameters that take part in a matmul per token: every projection plus the LM head (the
  input embedding is a gather, norms are elementwise)."""
  d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
  q = cfg.num_attention_heads * cfg.head_dim
  kv = cfg.num_key_value_heads * cfg.head_dim
  return cfg.num_hidden_layers * (d * (q + 2 * kv) + q * d + 3 * d * f) + v * d


def llama_flops(cfg, batch: int, seq_len: int, train: bool = True) -> float:
  """Global FLOPs of one step over `batch` x `seq_len` tokens: 2 per multiply-add, forward
  = 2 * matmul params + attention scores and values (4 * seq_len * q_dim per layer; rmjax
  computes the full, masked score matrix), training = 3 x forward (PaLM, appendix B)."""
  tokens = batch * seq_len
  q = cfg.num_attention_heads * cfg.head_dim
  forward = 2 * llama_matmul_params(cfg) + 4 * cfg.num_hidden_layers * seq_len * q
  return float(tokens * forward * (3 if train else 1))
