"""One way to initialise any rmjax model: `model.init` on a dummy batch of token ids.

Every model here (`Llama`, `RewardModel`, `ValueModel`, `RegressionRM`, `ArmoRM`, ensembles,
LoRA-wrapped ones) takes `(input_ids, attention_mask)` and gets its parameter shapes from its
config alone, so a [2, 8] batch of zeros with an all-ones mask builds the full tree (Linen's
initialisers draw from the rng and each parameter's path, not from the inputs).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def init_params(model, rng=None, *inputs) -> Any:
  """The boxed 'params' of `model.init(rng, *inputs)` (default rng PRNGKey(0); default inputs
  zero token ids [2, 8] and an all-ones mask)."""
  if not inputs:
    ids = jnp.zeros((2, 8), jnp.int32)
    inputs = (ids, jnp.ones_like(ids))
  return model.init(jax.random.PRNGKey(0) if rng is None else rng, *inputs)["params"]


def abstract_params(model, *inputs) -> Any:
  """`init_params` as shapes only (`jax.eval_shape`): no weights are allocated."""
  return jax.eval_shape(lambda: init_params(model, None, *inputs))
