"""Attention backends (rmjax.models.attention): blocked, dot_product and splash (Pallas interpret
mode on CPU) against the xla reference path, in logits and parameter gradients of a tiny GQA
Llama, and on packed (segment and shared-prefix) masks."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import bt as bt_config
from rmjax import sharding as shd
from rmjax.inference.generate import SamplingConfig, generate, left_pad
from rmjax.models import Llama, LlamaConfig, RewardModel
from rmjax.models import attention as attn
from rmjax.train import validate

CFG = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  attention="xla")


def _params(cfg=CFG, seed=0):
  return jax.jit(lambda r: nn.unbox(Llama(cfg).init(r, jnp.zeros((1, 2), jnp.int32))["params"]))(
      jax.random.PRNGKey(seed))


@pytest.fixture(scope="module")
def params():
  return _params()


@functools.lru_cache(maxsize=None)
def _reference(t):
  """(ids, mask, xla logits and grads) of `_batch(t)`, computed once per length."""
  ids, mask = _batch(t)
  return ids, mask, _logits_and_grads(_params(), CFG, ids, mask)


def _batch(t, b=4):
  """Rows: unpadded, left-padded, right-padded, heavily left-padded."""
  ids = np.asarray(jax.random.randint(jax.random.PRNGKey(t), (b, t), 1, 97), np.int32)
  mask = np.ones((b, t), np.int32)
  mask[1, : t // 4] = 0
  mask[2, t - t // 3:] = 0
  mask[3, : t - 5] = 0
  return ids * mask, mask


def _logits_and_grads(params, cfg, ids, mask):
  """Logits and d(loss)/d(params), the loss reading real positions only."""
  w = jax.random.normal(jax.random.PRNGKey(7), ids.shape + (cfg.vocab_size,)) * mask[..., None]

  @jax.jit
  def run(p):
    def loss(p):
      logits = Llama(cfg).apply({"params": p}, ids, mask)
      return jnp.sum(logits * w) / mask.sum(), logits
    (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(p)
    return logits, grads
  return run(params)


def _assert_close(got, ref, mask):
  (lg, gg), (lr, gr) = got, ref
  real = np.asarray(mask, bool)
  np.testing.assert_allclose(np.asarray(lg)[real], np.asarray(lr)[real], atol=1e-5, rtol=1e-5)
  for path, a in jax.tree_util.tree_leaves_with_path(gg):
    b = _get(gr, path)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5,
                               err_msg=jax.tree_util.keystr(path))


def _get(tree, path):
  for k in path:
    tree = tree[k.key]
  return tree


# splash at T=128 runs on the (2,2,2) mesh below (one interpret-mode compile fewer)
@pytest.mark.parametrize("backend,t", [("dot_product", 128), ("dot_product", 256), ("splash", 256),
                                       ("blocked", 37), ("blocked", 256)])
def test_backend_matches_xla_logits_and_grads(params, backend, t):
  ids, mask, ref = _reference(t)
  got = _logits_and_grads(params, CFG.replace(attention=backend), ids, mask)
  _assert_close(got, ref, mask)


@pytest.mark.parametrize("backend", ["blocked", "dot_product"])
def test_packed_segment_and_prefix_masks_match_xla(backend):
  """Packed rows: segments, padding, and responses that also see a shared prefix segment."""
  b, t, n, kv, d = 2, 150, 6, 2, 8
  r = np.random.default_rng(0)
  q, k, v = (jnp.asarray(r.normal(size=(b, t, h, d)), jnp.float32) for h in (n, kv, kv))
  seg = np.zeros((b, t), np.int32)
  seg[:, :40], seg[:, 40:90], seg[:, 90:140] = 1, 2, 3  # 3: a response of prompt 1
  prefix = np.where(seg == 3, 1, 0)
  slots = jnp.broadcast_to(jnp.arange(t), (b, t))
  for key_mask in (jnp.asarray(seg), attn.packed_mask(jnp.asarray(seg), jnp.asarray(prefix))):
    real = np.asarray(attn.segment_ids(key_mask) > 0)
    w = jnp.asarray(r.normal(size=(b, t, n * d)), jnp.float32) * real[..., None]
    run = lambda be: jax.jit(jax.value_and_grad(  # noqa: E731
        lambda q, k, v: jnp.vdot(attn.attend(q, k, v, key_mask, slots, be), w), argnums=(0, 1, 2)))
    (ref, gref), (got, ggot) = run("xla")(q, k, v), run(backend)(q, k, v)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    for a, c in zip(ggot, gref):
      np.testing.assert_allclose(a, c, atol=1e-5)
    out = attn.attend(q, k, v, key_mask, slots, backend)
    ref_out = attn.attend(q, k, v, key_mask, slots, "xla")
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref_out)[real], atol=1e-5)
  # the prefix is seen: segment 3 differs with and without it
  with_prefix = attn.attend(q, k, v, attn.packed_mask(jnp.asarray(seg), jnp.asarray(prefix)), slots, backend)
  alone = attn.attend(q, k, v, jnp.asarray(seg), slots, backend)
  assert np.abs(np.asarray(with_prefix - alone)[:, 90:140]).max() > 1e-3
  np.testing.assert_allclose(np.asarray(with_prefix)[:, :90], np.asarray(alone)[:, :90], atol=1e-6)


def test_splash_pads_odd_lengths(params):
  assert attn.splash_block(100) == (128, 128) and attn.splash_block(384) == (384, 128)
  assert attn.splash_block(512) == (512, 512) and attn.splash_block(600) == (640, 128)
  ids, mask, ref = _reference(37)
  _assert_close(_logits_and_grads(params, CFG.replace(attention="splash"), ids, mask), ref, mask)


def test_splash_under_shard_map_on_a_2x2x2_mesh(params):
  mesh = shd.make_mesh((2, 2, 2))
  ids, mask, ref = _reference(128)
  cfg = CFG.replace(attention="splash")
  with jax.set_mesh(mesh), nn.logical_axis_rules(shd.DEFAULT_RULES):
    p = shd.shard_params(params, cfg, mesh)
    batch = shd.shard_batch({"ids": ids, "mask": mask}, mesh)
    assert attn._mesh_specs(4, 4, 2)[1:] == (("data", "fsdp"), "tensor")
    got = _logits_and_grads(p, cfg, batch["ids"], batch["mask"])
    hlo = jax.jit(lambda p: Llama(cfg).apply({"params": p}, batch["ids"], batch["mask"])).lower(
        p).as_text()
  assert "manual_computation" in hlo  # the kernel runs inside shard_map
  _assert_close(got, ref, mask)


def test_reward_model_rewards_match_with_splash():
  ids, mask = _batch(128)
  rm = RewardModel(CFG)
  variables = jax.jit(lambda r: nn.unbox(rm.init(r, ids[:1], mask[:1])))(jax.random.PRNGKey(3))
  reward = lambda cfg: jax.jit(lambda v: RewardModel(cfg).apply(v, ids, mask)["reward"])(variables)
  ref, got = reward(CFG), reward(CFG.replace(attention="splash"))
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=1e-5)


def test_greedy_decode_with_splash_config():
  """generate() with a splash config (its cache path runs xla) matches the no-cache splash
  forward's argmax at every generated step."""
  scale = lambda path, x: x if "norm" in jax.tree_util.keystr(path) else x * 4.0
  params = jax.tree_util.tree_map_with_path(scale, _params(seed=1))
  cfg = CFG.replace(attention="splash")
  prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [3], [40, 41, 42, 43]]
  n = 4
  ids, mask = left_pad(prompts, 0, multiple=8)
  greedy = SamplingConfig(max_new_tokens=n, temperature=0.0, pad_id=0)
  out = np.asarray(generate(params, cfg, ids, mask, jax.random.PRNGKey(0), greedy)["tokens"])
  # no-cache reference with the splash forward on the left-padded prompt + generated tokens
  full = np.concatenate([ids, out], axis=1)
  full_mask = np.concatenate([mask, np.ones_like(out)], axis=1)
  logits = jax.jit(lambda p: Llama(cfg).apply({"params": p}, full, full_mask))(params)
  t = ids.shape[1]
  np.testing.assert_array_equal(np.argmax(np.asarray(logits)[:, t - 1:-1], -1), out)


def test_config_field_defaults_and_validation():
  old = CFG.to_dict()
  del old["attention"]  # a model_config.json written before the field existed
  assert LlamaConfig(**old).attention == "auto" and LlamaConfig(**CFG.to_dict()) == CFG
  with pytest.raises(ValueError, match="attention must be one of"):
    CFG.replace(attention="flash")
  assert [attn.resolve("auto", p) for p in ("tpu", "gpu", "cpu")] == ["splash", "dot_product",
                                                                       "blocked"]
  assert attn.resolve("splash", "cpu") == "splash"


def test_validator_accepts_every_backend_and_no_other():
  """`rmjax.train.validate` reads the backend list from this module: each backend passes the
  up-front config check, an unknown one fails naming the key and the backends."""
  assert validate.ENUMS["model.attention"] is attn.BACKENDS
  config = bt_config.get_config("tiny")
  for backend in attn.BACKENDS:
    config.model.attention = backend
    assert validate.config_errors(config) == [], backend
  config.model.attention = "flash"
  [error] = validate.config_errors(config)
  assert "model.attention" in str(error) and ", ".join(attn.BACKENDS) in str(error)
