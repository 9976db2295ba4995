"""Ensemble task: one einsum, per-member init/bootstrap, sharded == single device, fast path,
independent members, uncertainty report, errors."""


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ensemble as ensemble_config
from rmjax import losses, sharding
from rmjax.checkpoints.presets import PRESET_CONFIGS
from rmjax.errors import ConfigError
from rmjax.eval.uncertainty import auroc, uncertainty_report
from rmjax.models.heads import EnsembleHead
from rmjax.train import head_fit as ec
from rmjax.tasks import ensemble
from rmjax.train.loop import train
from _util import fast_config

# tiny models built again and again in this module: their compiles are shared (conftest)
pytestmark = pytest.mark.usefixtures("jax_compile_cache")


def tiny_config(steps=3, **ens):
  c = fast_config(ensemble_config.get_config("tiny,members=4"), steps=steps, train_pairs=96)
  for k, v in ens.items():
    setattr(c.ensemble, k, v)
  return c


def test_ensemble_head_is_one_einsum():
  head = EnsembleHead(members=5)
  x = jnp.ones((3, 16))
  params = head.init(jax.random.PRNGKey(0), x)
  jaxpr = jax.make_jaxpr(lambda p: head.apply(p, x))(params)
  prims = [e.primitive.name for e in jaxpr.jaxpr.eqns]
  assert prims.count("dot_general") == 1, prims
  assert not {"scan", "while"} & set(prims)
  assert head.apply(params, x).shape == (3, 5)
  specs = nn.get_partition_spec(params)["params"]
  assert specs["kernel"][0] == "ensemble" and specs["bias"][0] == "ensemble"


def test_bootstrap_weights_deterministic_and_per_member():
  a = ensemble.bootstrap_weights(50, 3, "poisson", seed=1)
  np.testing.assert_array_equal(a, ensemble.bootstrap_weights(50, 3, "poisson", seed=1))
  np.testing.assert_array_equal(a[:, :2], ensemble.bootstrap_weights(50, 2, "poisson", seed=1))
  assert not np.array_equal(a[:, 0], a[:, 1])
  m = ensemble.bootstrap_weights(40, 2, "multinomial", seed=0)
  assert m.sum(0).tolist() == [40, 40]
  assert np.all(ensemble.bootstrap_weights(5, 2, "none") == 1)


def test_member_losses_match_single_bt():
  from rmjax import losses
  rng = np.random.default_rng(0)
  c, r = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
  w = np.array([1, 1, 1, 1, 0, 0], np.float32)
  boot = rng.poisson(1.0, (6, 3)).astype(np.float32)
  per = losses.member_bradley_terry(jnp.asarray(c), jnp.asarray(r), jnp.asarray(w), jnp.asarray(boot))
  for k in range(3):
    ref = losses.bradley_terry(jnp.asarray(c[:, k]), jnp.asarray(r[:, k]), weight=jnp.asarray(w * boot[:, k]))
    assert float(per[k]) == pytest.approx(float(ref), rel=1e-5)


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory):
  config = tiny_config()
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  final, state = train(config, str(tmp_path_factory.mktemp("one")), ensemble.build(config),
                       mesh=mesh, return_state=True)
  return final, jax.device_get(state.params)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2)])
def test_k_head_training_sharded_equals_single_device(shape, single_device_run, tmp_path):
  ref_final, ref_params = single_device_run
  config = tiny_config()
  config.mesh.shape = shape
  final, state = train(config, str(tmp_path), ensemble.build(config), return_state=True)
  assert final["loss"] == pytest.approx(ref_final["loss"], rel=1e-4)
  for k in range(4):
    assert final[f"member_loss_{k}"] == pytest.approx(ref_final[f"member_loss_{k}"], rel=1e-4)
  got = jax.device_get(state.params)
  np.testing.assert_allclose(got["reward_head"]["kernel"], ref_params["reward_head"]["kernel"],
                             rtol=2e-4, atol=2e-5)
  assert ref_params["reward_head"]["kernel"].shape[0] == 4
  # members start from different inits and stay different
  k = ref_params["reward_head"]["kernel"]
  assert not np.allclose(k[0], k[1])


def test_member_init_independent_of_k():
  cfg = tiny_config()
  mcfg = PRESET_CONFIGS["tiny"]
  p3 = nn.unbox(ensemble.make_model(cfg, mcfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32),
                                                    jnp.ones((1, 4), jnp.int32))["params"])
  a = ensemble.member_head_init(p3, seed=3)["reward_head"]["kernel"]
  assert np.allclose(a[:2], ec.init_heads(2, a.shape[1], seed=3)["kernel"])


def test_independent_members_forward():
  cfg = tiny_config(mode="independent", members=2)
  mcfg = PRESET_CONFIGS["tiny"]
  model = ensemble.make_model(cfg, mcfg)
  ids = jnp.ones((3, 8), jnp.int32)
  boxed = model.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids))["params"]
  params = nn.unbox(boxed)
  out = model.apply({"params": params}, ids, jnp.ones_like(ids))
  assert out["members"].shape == (3, 2) and out["reward"].shape == (3,)
  emb = params["ensemble"]["backbone"]["embed_tokens"]["embedding"]
  assert emb.shape[0] == 2 and not np.allclose(emb[0], emb[1])
  spec = nn.get_partition_spec(boxed)["ensemble"]["backbone"]["embed_tokens"]["embedding"]
  assert spec[0] == "ensemble"


def test_fast_path_learns_separable_pairs():
  rng = np.random.default_rng(0)
  w = rng.normal(size=16)
  x = rng.normal(size=(400, 2, 16))
  good = (x @ w)[:, 0] > (x @ w)[:, 1]
  ec_, er_ = np.where(good[:, None], x[:, 0], x[:, 1]), np.where(good[:, None], x[:, 1], x[:, 0])
  boot = ensemble.bootstrap_weights(400, 3, "poisson", 0)
  head, hist = ec.train_heads(ec_, er_, 3, steps=200, lr=3e-2, batch_size=128, boot=boot)
  assert hist[-1] < hist[0]
  mc, mr = np.asarray(ec.head_scores(head, ec_)), np.asarray(ec.head_scores(head, er_))
  assert ((mc - mr) > 0).mean(0).min() > 0.9
  rep = uncertainty_report(mc, mr)
  assert rep["accuracy"] > 0.9 and rep["members"] == 3


def test_uncertainty_report_hand_example():
  assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
  assert auroc([1, 1, 1], [0, 1, 0]) == pytest.approx(0.5)
  # pair 0: members agree, right; pair 1: disagree, wrong; pair 2: disagree, right
  mc = np.array([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
  mr = np.array([[0.0, 0.0], [-1.0, 2.0], [0.0, 0.9]])
  rep = uncertainty_report(mc, mr)
  assert rep["accuracy"] == pytest.approx(2 / 3)
  assert rep["auroc_std_wrong"] == pytest.approx(1.0)
  assert rep["accuracy_certain_half"] == 1.0 and rep["accuracy_uncertain_half"] == 0.5


@pytest.mark.parametrize("call,err,msg", [
    (lambda: uncertainty_report(np.ones((3, 1)), np.ones((3, 1))), ValueError, "at least 2"),
    (lambda: uncertainty_report(np.ones((3, 2)), np.ones((2, 2))), ValueError, "must both be"),
    (lambda: uncertainty_report(np.full((3, 2), np.nan), np.ones((3, 2))), ValueError, "NaN"),
    (lambda: ensemble.bootstrap_weights(3, 2, "jackknife"), ConfigError, "bootstrap must be"),
    (lambda: ensemble.make_model(tiny_config(mode="bagged"), None), ConfigError, "ensemble.mode"),
    (lambda: ensemble.make_model(tiny_config(members=0), None), ConfigError, "members must be"),
])
def test_bad_input(call, err, msg):
  with pytest.raises(err, match=msg) as e:
    call()
  assert "\n" not in str(e.value)
