"""Heads fitted on cached backbone features ([N, D] arrays, no backbone pass per step).

  K linear BT heads   `train_heads`: the stacked [K, D] kernel + [K] bias of `EnsembleHead`
                      (one einsum), each member with its own BT loss, init key and bootstrap
                      weights, trained with AdamW inside one `lax.scan` (ensembles' fast path).
  ridge               `fit_ridge`: closed-form per-objective regression with alpha chosen by
                      validation MSE (ArmoRM stage 1).
  BT probe            `fit_bt_probe`: an L2 logistic head on tagged pairs (ArmoRM objectives
                      known only from pairs).
These are pure array functions; the tasks that call them write their workdirs through
`rmjax.train.run.Run`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rmjax import losses

def init_heads(members: int, dim: int, seed: int = 0) -> dict:
  """Stacked heads like EnsembleHead: kernel [K, D] with member k ~ fold_in(PRNGKey(seed), k)."""
  base = jax.random.PRNGKey(seed)
  rows = jnp.stack([jax.random.normal(jax.random.fold_in(base, k), (dim,)) for k in range(members)])
  return {"kernel": rows / dim ** 0.5, "bias": jnp.zeros((members,), jnp.float32)}


def head_scores(head: dict, emb) -> jax.Array:
  """[N, D] -> [N, K]: one einsum, as EnsembleHead."""
  return jnp.einsum("bd,kd->bk", jnp.asarray(emb, jnp.float32), head["kernel"]) + head["bias"]


def train_heads(emb_c, emb_r, members: int, *, steps: int = 300, lr: float = 1e-2,
                batch_size: int = 256, seed: int = 0, boot=None, weight_decay: float = 1e-4,
                label_smoothing: float = 0.0, standardize_inputs: bool = True):
  """Train K heads on cached pairs: emb_c, emb_r [N, D]; boot [N, K] bootstrap weights or None.

  Minibatches of `batch_size` rows drawn per step (with replacement when N < batch_size) from
  PRNGKey(seed); AdamW; returns (head params, per-step mean member loss [steps]). With
  `standardize_inputs`, features are centred/scaled by the chosen+rejected mean/std first and the
  returned head is folded back so it applies to raw embeddings.
  """
  ec, er = jnp.asarray(emb_c, jnp.float32), jnp.asarray(emb_r, jnp.float32)
  n, d = ec.shape
  mu = jnp.zeros((d,)) if not standardize_inputs else jnp.concatenate([ec, er]).mean(0)
  sd = jnp.ones((d,)) if not standardize_inputs else jnp.concatenate([ec, er]).std(0) + 1e-6
  xc, xr = (ec - mu) / sd, (er - mu) / sd
  table = jnp.ones((n, members)) if boot is None else jnp.asarray(boot, jnp.float32)
  head = init_heads(members, d, seed)
  tx = optax.adamw(lr, weight_decay=weight_decay)
  opt = tx.init(head)
  bs = min(batch_size, n)

  def loss(h, idx):
    per = losses.member_bradley_terry(head_scores(h, xc[idx]), head_scores(h, xr[idx]), jnp.ones((bs,)),
                           table[idx], label_smoothing=label_smoothing)
    return jnp.mean(per)

  def step(carry, key):
    h, o = carry
    idx = jax.random.choice(key, n, (bs,), replace=n < batch_size)
    l, g = jax.value_and_grad(loss)(h, idx)
    up, o = tx.update(g, o, h)
    return (optax.apply_updates(h, up), o), l

  keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), 10_000), steps)
  (head, _), hist = jax.jit(lambda c, k: jax.lax.scan(step, c, k))((head, opt), keys)
  raw = {"kernel": head["kernel"] / sd, "bias": head["bias"] - jnp.einsum("kd,d->k", head["kernel"] / sd, mu)}
  return jax.device_get(raw), np.asarray(hist)


RIDGE_ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 1e2, 1e3, 1e4)


def ridge(x, y, alpha):
  """Closed-form ridge without intercept: (X^T X + alpha I)^{-1} X^T y. x [N, D], y [N] -> [D]."""
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  return jnp.linalg.solve(x.T @ x + alpha * jnp.eye(x.shape[1], dtype=x.dtype), x.T @ y)


def ridge_grid(x, y, alphas):
  """Ridge weights for every alpha at once (vmap over the grid): [A, D]."""
  return jax.vmap(lambda a: ridge(x, y, a))(jnp.asarray(alphas, jnp.float32))


def split_80_20(n: int, seed: int = 42):
  """(train idx, val idx): a shuffled 80/20 split (stage-1_train.py's train_test_split)."""
  perm = np.random.default_rng(seed).permutation(n)
  cut = int(round(n * 0.8))
  return perm[:cut], perm[cut:]


def fit_ridge(x, ratings, alphas=RIDGE_ALPHAS, seed: int = 42):
  """Per objective: drop rows without a label, split 80/20, pick alpha by val MSE, keep the fit
  on the train part. x [N, D], ratings [N, O] (NaN = missing) -> (W [D, O], info per objective).
  Objectives without labels get a zero column and info None."""
  x = np.asarray(x, np.float32)
  w = np.zeros((x.shape[1], ratings.shape[1]), np.float32)
  info = []
  for j in range(ratings.shape[1]):
    keep = ~np.isnan(ratings[:, j])
    if keep.sum() < 5:
      info.append(None)
      continue
    xj, yj = x[keep], ratings[keep, j]
    tr, va = split_80_20(len(yj), seed)
    ws = np.asarray(ridge_grid(xj[tr], yj[tr], alphas))                # [A, D]
    mse = ((xj[va] @ ws.T - yj[va, None]) ** 2).mean(axis=0)          # [A]
    best = int(np.argmin(mse))
    w[:, j] = ws[best]
    info.append({"alpha": float(alphas[best]), "val_mse": float(mse[best]),
                 "val_mse_mean_baseline": float(((yj[va] - yj[tr].mean()) ** 2).mean()),
                 "n": int(keep.sum())})
  return w, info


def fit_bt_probe(hc, hr, l2: float = 1e-3, steps: int = 300, lr: float = 0.05, seed: int = 0):
  """Linear BT head on tagged pairs: argmin_w mean softplus(-(h_c - h_r) w) + l2 |w|^2 (Adam,
  full batch). Returns (w [D], info with val accuracy on a 20% split)."""
  diff = np.asarray(hc, np.float32) - np.asarray(hr, np.float32)
  tr, va = split_80_20(len(diff), seed)
  d = jnp.asarray(diff[tr])
  loss = lambda w: jnp.mean(jax.nn.softplus(-(d @ w))) + l2 * jnp.sum(w * w)
  tx = optax.adam(lr)
  w = jnp.zeros(diff.shape[1])
  state = tx.init(w)

  @jax.jit
  def step(w, state):
    g = jax.grad(loss)(w)
    u, state = tx.update(g, state)
    return optax.apply_updates(w, u), state
  for _ in range(steps):
    w, state = step(w, state)
  w = np.asarray(w, np.float32)
  acc = float(((diff[va] @ w) > 0).mean()) if len(va) else float("nan")
  return w, {"bt_val_accuracy": acc, "n": int(len(diff))}


# ------------------------------------------------------------------ independent member heads

def init_mlp_heads(members: int, dim: int, hidden: int, seeds) -> dict:
  """Stacked member heads, member k initialised from PRNGKey(seeds[k]): an MLP d -> hidden ->
  ReLU -> 1 (hidden > 0; He init) or a linear d -> 1 head (hidden 0; zero-mean normal / sqrt d)."""
  def one(seed):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    if hidden == 0:
      return {"w": jax.random.normal(k1, (dim,)) / dim ** 0.5, "b": jnp.zeros(())}
    return {"w1": jax.random.normal(k1, (dim, hidden)) * (2.0 / dim) ** 0.5,
            "b1": jnp.zeros((hidden,)), "w2": jax.random.normal(k2, (hidden,)) / hidden ** 0.5,
            "b2": jnp.zeros(())}
  return jax.vmap(one)(jnp.asarray(seeds, jnp.uint32))


def _member_score(p: dict, x, key=None, dropout: float = 0.0):
  """One member's scores [N] of standardised features x [N, D]; dropout on the input of the
  hidden layer's output when `key` is given (training)."""
  if "w" in p:
    return x @ p["w"] + p["b"]
  h = jax.nn.relu(x @ p["w1"] + p["b1"])
  if key is not None and dropout > 0:
    keep = jax.random.bernoulli(key, 1.0 - dropout, h.shape)
    h = jnp.where(keep, h / (1.0 - dropout), 0.0)
  return h @ p["w2"] + p["b2"]


def member_scores(heads: dict, x) -> np.ndarray:
  """[N, D] raw features -> [K, N] scores of every member (features standardised with the
  statistics stored in `heads` at training time)."""
  z = (jnp.asarray(x, jnp.float32) - heads["mu"]) / heads["sd"]
  return np.asarray(_all_members(heads["params"], z))


@jax.jit
def _all_members(params, z):
  return jax.vmap(lambda p: _member_score(p, z))(params)


def train_member_heads(emb_c, emb_r, seeds, *, hidden: int = 256, dropout: float = 0.1,
                       steps: int = 500, lr: float = 1e-3, batch_size: int = 64,
                       weight_decay: float = 1e-2, boot=None, val=None) -> tuple:
  """K independently seeded BT heads on cached pairs, trained side by side (vmap).

  Member k owns everything a seed decides: its init, its minibatch order, its dropout masks
  (all from PRNGKey(seeds[k])). emb_c, emb_r [N, D]; boot [K, N] per-pair weights (Poisson
  bootstrap) or None; AdamW; features standardised by the chosen+rejected mean/std (stored in the
  result). `val` = (val_c, val_r): the mean validation BT loss is recorded every step (to pick a
  step count on a split of the training data). Returns (heads, history {'train', 'val'} [steps, K]).
  One compiled program per (shapes, hyper-parameters): repeated calls (datasets of one size,
  seeds, bootstrap draws) reuse it."""
  ec, er = np.asarray(emb_c, np.float32), np.asarray(emb_r, np.float32)
  n, d = ec.shape
  both = np.concatenate([ec, er])
  mu, sd = both.mean(0), both.std(0) + 1e-6
  k = len(seeds)
  weights = np.ones((k, n), np.float32) if boot is None else np.asarray(boot, np.float32)
  vc, vr = ((np.zeros((1, d), np.float32),) * 2 if val is None else
            ((np.asarray(val[0]) - mu) / sd, (np.asarray(val[1]) - mu) / sd))
  params = init_mlp_heads(k, d, hidden, seeds)
  p, tl, vl = _train_members(params, jnp.asarray(weights), jnp.asarray(seeds, jnp.uint32),
                             jnp.asarray((ec - mu) / sd), jnp.asarray((er - mu) / sd),
                             jnp.asarray(vc, jnp.float32), jnp.asarray(vr, jnp.float32),
                             steps=int(steps), bs=min(batch_size, n), dropout=float(dropout),
                             lr=float(lr), weight_decay=float(weight_decay))
  heads = {"params": jax.device_get(p), "mu": mu, "sd": sd}
  return heads, {"train": np.asarray(tl).T, "val": np.asarray(vl).T}


@functools.partial(jax.jit, static_argnames=("steps", "bs", "dropout", "lr", "weight_decay"))
def _train_members(params, weights, seeds, xc, xr, vc, vr, *, steps, bs, dropout, lr,
                   weight_decay):
  """vmap over members of: AdamW on the weighted BT loss, `steps` minibatches of `bs` pairs."""
  n = xc.shape[0]
  tx = optax.adamw(lr, weight_decay=weight_decay)

  def loss(p, idx, w, key):
    kc, kr = jax.random.split(key)
    m = _member_score(p, xc[idx], kc, dropout) - _member_score(p, xr[idx], kr, dropout)
    wi = w[idx]
    return jnp.sum(wi * jax.nn.softplus(-m)) / jnp.maximum(jnp.sum(wi), 1.0)

  def member(p, w, seed):
    opt = tx.init(p)
    keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), 1), steps)

    def step(carry, key):
      p, o = carry
      kb, kd = jax.random.split(key)
      idx = jax.random.choice(kb, n, (bs,), replace=n < bs)
      l, g = jax.value_and_grad(loss)(p, idx, w, kd)
      up, o = tx.update(g, o, p)
      p = optax.apply_updates(p, up)
      vl = jnp.mean(jax.nn.softplus(-(_member_score(p, vc) - _member_score(p, vr))))
      return (p, o), (l, vl)

    (p, _), (tl, vl) = jax.lax.scan(step, (p, opt), keys)
    return p, tl, vl

  return jax.vmap(member)(params, weights, seeds)
