"""The decoder's matmuls with hand-written VJPs: the attention projections (`nn.Dense`'s
`dot_general`) and the SwiGLU MLP.

Both route their weight gradients through `weight_grad`, which on CPU keeps them on XLA:CPU's
YNNPACK library dots (experiments/benchmarks/RESULTS.md, "Stop 20"); the math is plain
autodiff's (tests/test_llama.py).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

_LAX_DOT_GENERAL = jax.lax.dot_general
_LAX_DOT_GENERAL_CODE = jax.lax.dot_general.__code__


def _dot_general_intercepted() -> bool:
  """Whether `jax.lax.dot_general` is patched now: qwix's LoRA swaps the function's code (or
  the attribute) while a LoRA model runs, and adds its adapters in that call."""
  f = jax.lax.dot_general
  return f is not _LAX_DOT_GENERAL or f.__code__ is not _LAX_DOT_GENERAL_CODE


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                      **kw):
  """`nn.Dense`'s `x @ W` with `matmul`'s VJP (the weight gradient through `weight_grad`).

  Falls back to `jax.lax.dot_general` (plain autodiff) for any other contraction, precision or
  dtype, and while `jax.lax.dot_general` is intercepted (qwix LoRA: a custom VJP here would
  hide the adapters' dots inside it from qwix and from autodiff)."""
  plain = (((lhs.ndim - 1,), (0,)), ((), ()))
  if (_dot_general_intercepted() or dimension_numbers != plain or kw or precision is not None
          or preferred_element_type is not None or lhs.dtype != rhs.dtype):
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type, **kw)
  return matmul(lhs, rhs)


@jax.custom_vjp
def matmul(x: Array, w: Array) -> Array:
  """x @ w for x [..., I], w [I, O]; the VJP forms dW with `weight_grad`."""
  return x @ w


def _matmul_fwd(x, w):
  return x @ w, (x, w)


def _matmul_bwd(res, g):
  x, w = res
  return (g @ w.T).astype(x.dtype), weight_grad(x, g).astype(w.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def weight_grad(x: Array, g: Array, transposed: bool = False) -> Array:
  """x^T g over all leading dims: [..., I], [..., O] -> [I, O] (the weight gradient of x @ W);
  with `transposed` formed as (g^T x)^T, so the operand copied below is g, not x.

  On CPU x^T (or g^T) is materialised behind an optimization barrier: XLA otherwise folds the
  transpose into the dot as a contraction over the lhs's first dim, which XLA:CPU's YNNPACK
  library dots do not take, and its fallback dot ran at ~60% of their speed inside the layer
  scan (experiments/benchmarks/RESULTS.md). Other platforms get the plain contraction."""
  x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
  if transposed:
    x2, g2 = g2, x2
  barrier = jax.lax.optimization_barrier
  return jax.lax.platform_dependent(
      x2, g2, cpu=lambda a, b: barrier(barrier(a.T) @ b).T if transposed else barrier(a.T) @ b,
      default=lambda a, b: (a.T @ b).T if transposed else a.T @ b)


@jax.custom_vjp
def swiglu(x: Array, w_gate: Array, w_up: Array, w_down: Array) -> Array:
  """SwiGLU MLP `(silu(x @ w_gate) * (x @ w_up)) @ w_down`, x: [B, T, D] -> [B, T, D].

  A hand-written VJP because XLA:CPU's autodiff of this block fuses the silu derivative into
  transposed copies feeding the weight-gradient dots, which ran ~2x slower than the nine
  matmuls alone (experiments/benchmarks/RESULTS.md). The backward keeps only the two
  pre-activations and recomputes silu; the weight gradients go through `weight_grad` (the
  down projection's as (g^T h)^T, so the transposed operand XLA:CPU copies is the [B*T, D]
  gradient, not the wider [B*T, F] activation fused with its elementwise producer). The
  sigmoid is 0.5 tanh(x / 2) + 0.5 (`_sigmoid`).
  """
  return _swiglu_fwd(x, w_gate, w_up, w_down)[0]


def _sigmoid(x):
  """sigmoid(x) as 0.5 * tanh(x / 2) + 0.5: the same function, but XLA:CPU's tanh is ~4x
  faster than its logistic on a [2048, 1536] float32 activation (2.1 vs 9.2 ms for silu * up)."""
  return 0.5 * jnp.tanh(0.5 * x) + 0.5


def _mlp_constraint(h):
  return nn.with_logical_constraint(h, ("act_batch", "act_length", "act_mlp"))


def _swiglu_fwd(x, w_gate, w_up, w_down):
  gate = _mlp_constraint(jnp.einsum("btd,df->btf", x, w_gate))
  up = _mlp_constraint(jnp.einsum("btd,df->btf", x, w_up))
  out = jnp.einsum("btf,fd->btd", gate * _sigmoid(gate) * up, w_down)
  return out, (x, w_gate, w_up, w_down, gate, up)


def _swiglu_bwd(res, g):
  x, w_gate, w_up, w_down, gate, up = res
  gate32 = gate.astype(jnp.float32)
  sig = _sigmoid(gate32)
  act = (gate32 * sig).astype(up.dtype)
  dh = _mlp_constraint(jnp.einsum("btd,fd->btf", g, w_down))
  dh32 = dh.astype(jnp.float32)
  d_up = _mlp_constraint((dh32 * act.astype(jnp.float32)).astype(up.dtype))
  d_gate = _mlp_constraint(
      (dh32 * up.astype(jnp.float32) * sig * (1 + gate32 * (1 - sig))).astype(gate.dtype))
  h = _mlp_constraint(act * up)
  dx = jnp.einsum("btf,df->btd", d_gate, w_gate) + jnp.einsum("btf,df->btd", d_up, w_up)
  dw_gate = weight_grad(x, d_gate)
  dw_up = weight_grad(x, d_up)
  dw_down = weight_grad(h, g, transposed=True)
  return (dx.astype(x.dtype), dw_gate.astype(w_gate.dtype), dw_up.astype(w_up.dtype),
          dw_down.astype(w_down.dtype))


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)
