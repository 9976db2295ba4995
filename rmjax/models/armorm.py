"""ArmoRM: frozen backbone -> per-objective linear rewards -> verbosity transform -> prompt gate.

  r      = W h(x, y)                      [B, O]   regression (no bias), stage 1
  r'     = r T                            [B, O]   T from the verbosity de-correlation
  g      = softmax(MLP(h_x) / tau)        [B, O]   gate on the prompt embedding, stage 2
  reward = beta * sum_j g_j r'_j          [B]

h(x, y) is the post-final-norm hidden state of the last token; h_x is the one at the first token
of the LAST occurrence of `prompt_pattern` (the end-of-user-turn token followed by the generation
prompt, e.g. Llama-3's `<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n`), taken
from the same forward pass. The pattern comes from the tokenizer's chat template
(`rmjax.inference.embed.prompt_end_pattern`), never from hard-coded ids.

Params: {'backbone': Llama, 'regression': {'kernel': [D, O]}, 'transform': [O, O],
'gate': GatingMLP, 'beta': []}. Outputs: reward [B], objectives [B, O] (r, the interpretable
per-objective scores), gate [B, O] (softmax weights, sum to 1; the released model's gating output
is beta * gate).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rmjax.models.heads import last_token_index
from rmjax.models.llama import Llama, LlamaConfig


def prompt_end_index(ids: jax.Array, mask: jax.Array, pattern: Sequence[int]) -> jax.Array:
  """[B] position of the first token of the last match of `pattern` among real tokens; rows
  without a match fall back to the last real token. ids, mask: [B, T]."""
  last = last_token_index(mask)
  if not pattern:
    return last
  t = ids.shape[1]
  ok = jnp.ones(ids.shape, bool)
  if len(pattern) > t:
    return last
  for k, tok in enumerate(pattern):
    shifted = jnp.pad(ids[:, k:], ((0, 0), (0, k)), constant_values=-1)   # shifted[:, i] = ids[:, i + k]
    valid = jnp.pad(mask[:, k:], ((0, 0), (0, k)))
    ok = ok & (shifted == int(tok)) & (valid > 0)
  found = jnp.max(jnp.where(ok, jnp.arange(t)[None], -1), axis=1)
  return jnp.where(found >= 0, found, last)


def gather_embeddings(hidden: jax.Array, ids: jax.Array, mask: jax.Array,
                      pattern: Sequence[int]) -> tuple:
  """(h_response [B, D], h_prompt [B, D]) in float32 from hidden [B, T, D]."""
  def at(idx):
    return jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0].astype(jnp.float32)
  return at(last_token_index(mask)), at(prompt_end_index(ids, mask, pattern))


class GatingMLP(nn.Module):
  """n_hidden x (Linear + ReLU + Dropout) -> Linear(objectives) -> softmax(logits / temperature).

  ArmoRM: 3 x 1024, dropout 0.2 in training, temperature 10 (fixed). Returns [B, O], rows sum
  to 1; beta scales outside (it is a separate parameter)."""
  objectives: int
  hidden: int = 1024
  n_hidden: int = 3
  dropout: float = 0.2
  temperature: float = 10.0

  @nn.compact
  def __call__(self, x, deterministic: bool = True):  # x: [B, D]
    x = x.astype(jnp.float32)
    names_in = "embed"
    for i in range(self.n_hidden):
      x = nn.Dense(self.hidden, name=f"layers_{i}",
                   kernel_init=nn.with_logical_partitioning(
                       nn.initializers.lecun_normal(), (names_in, "hidden")),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("hidden",)))(x)
      x = nn.relu(x)
      x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
      names_in = "hidden_in"
    logits = nn.Dense(self.objectives, name=f"layers_{self.n_hidden}",
                      kernel_init=nn.with_logical_partitioning(
                          nn.initializers.lecun_normal(), (names_in, "objectives")),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                             ("objectives",)))(x)
    return jax.nn.softmax(logits / self.temperature, axis=-1)


class ArmoHeads(nn.Module):
  """Everything of ArmoRM after the backbone: regression, transform, gate, beta.

  Works on embeddings, so stage 2 trains on cached embeddings with the very params the full
  model uses at inference. `apply_transform=False` reproduces the released stage-2 script,
  which trains the gate on untransformed rewards (ALGORITHMS.md 1.5)."""
  objectives: int
  gate_hidden: int = 1024
  gate_layers: int = 3
  gate_dropout: float = 0.2
  temperature: float = 10.0

  def setup(self):
    self.regression = nn.Dense(self.objectives, use_bias=False, kernel_init=nn.with_logical_partitioning(
        nn.initializers.zeros, ("embed", "objectives")))
    self.transform = self.param("transform", lambda _, n: jnp.eye(n, dtype=jnp.float32),
                                self.objectives)
    self.gate = GatingMLP(self.objectives, self.gate_hidden, self.gate_layers, self.gate_dropout,
                          self.temperature)
    self.beta = self.param("beta", nn.initializers.ones, ())

  def __call__(self, h_response, h_prompt, deterministic: bool = True,
               apply_transform: bool = True) -> dict:
    r = self.regression(h_response.astype(jnp.float32))            # [B, O]
    adjusted = r @ self.transform if apply_transform else r         # [B, O]
    g = self.gate(h_prompt, deterministic=deterministic)            # [B, O]
    return {"reward": self.beta * jnp.sum(g * adjusted, axis=-1), "objectives": r, "gate": g,
            "adjusted": adjusted}

  def rewards(self, h_response, apply_transform: bool = True):
    """(r [B, O], r T or r) from response embeddings alone."""
    r = self.regression(h_response.astype(jnp.float32))
    return r, (r @ self.transform if apply_transform else r)

  def pair_scores(self, h_chosen, h_rejected, h_prompt, deterministic: bool = True,
                  apply_transform: bool = True) -> tuple:
    """(s_c [B], s_r [B]) with ONE gate evaluation per pair (one dropout mask for both sides,
    as in stage-2_train.py)."""
    g = self.gate(h_prompt, deterministic=deterministic)            # [B, O]
    _, ac = self.rewards(h_chosen, apply_transform)
    _, ar = self.rewards(h_rejected, apply_transform)
    return self.beta * jnp.sum(g * ac, -1), self.beta * jnp.sum(g * ar, -1)


class ArmoRM(nn.Module):
  """Backbone + ArmoHeads; one forward gives both embeddings. Params as in the module doc
  (the heads' params sit at the top level next to 'backbone')."""
  cfg: LlamaConfig
  objectives: int
  prompt_pattern: tuple = ()
  gate_hidden: int = 1024
  gate_layers: int = 3
  gate_dropout: float = 0.2
  temperature: float = 10.0

  def setup(self):
    self.backbone = Llama(self.cfg)
    self.heads = ArmoHeads(self.objectives, self.gate_hidden, self.gate_layers, self.gate_dropout,
                           self.temperature)

  def embed(self, input_ids, attention_mask) -> tuple:
    """(h_response [B, D], h_prompt [B, D]) float32, from one forward."""
    if self.is_initializing():  # params always hold the full backbone (LM head included)
      _, hidden = self.backbone(input_ids, attention_mask, output="both")
    else:
      hidden = self.backbone(input_ids, attention_mask, output="hidden")
    return gather_embeddings(hidden, input_ids, attention_mask, self.prompt_pattern)

  def __call__(self, input_ids, attention_mask, deterministic: bool = True) -> dict:
    h, hx = self.embed(input_ids, attention_mask)
    out = self.heads(h, hx, deterministic=deterministic)
    return {k: out[k] for k in ("reward", "objectives", "gate")}



class RegressionRM(nn.Module):
  """Backbone + bias-free regression heads [B, O]: the end-to-end stage-1 variant (masked MSE on
  ratings and per-objective BT on tagged pairs train backbone and heads together). Params
  {'backbone', 'regression': {'kernel': [D, O]}} — the same names ArmoRM uses."""
  cfg: LlamaConfig
  objectives: int

  @nn.compact
  def __call__(self, input_ids, attention_mask) -> jax.Array:
    backbone = Llama(self.cfg, name="backbone")
    if self.is_initializing():
      _, hidden = backbone(input_ids, attention_mask, output="both")
    else:
      hidden = backbone(input_ids, attention_mask, output="hidden")
    h = jnp.take_along_axis(hidden, last_token_index(attention_mask)[:, None, None], axis=1)[:, 0]
    return nn.Dense(self.objectives, use_bias=False, name="regression",
                    kernel_init=nn.with_logical_partitioning(
                        nn.initializers.zeros, ("embed", "objectives")))(h.astype(jnp.float32))
