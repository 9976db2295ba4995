"""PPO end to end on the synthetic task: reward rises with bounded KL, exact resume, 8 devices
== 1 device for the update step, reward normalisation and uncertainty terms, bad configs."""

import json
import os

import jax
import numpy as np
import pytest

from configs import ppo as ppo_config
from rmjax import sharding as shd
from rmjax.errors import ConfigError
from rmjax.rl import rollout
from rmjax.tasks import ppo, ppo_setup

# PPO runs of equal tiny configs (the resume check alone runs three): rollout, scoring and update
# programs compile once and load from the shared cache after (conftest)
pytestmark = pytest.mark.usefixtures("jax_compile_cache")


def _one_device():
  return shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_tiny_ppo_raises_gold_reward_with_bounded_kl(tmp_path):
  c = ppo_config.get_config("tiny")
  c.ppo.rollout_batch = 16                 # the smoke shapes below: compiled once for the file
  c.train.steps = 14
  c.train.eval_every = 0
  c.train.checkpoint_every = 12
  c.train.progress = c.train.tensorboard = c.train.async_checkpoint = False
  c.ppo.kl_coef = 0.1
  ppo.run(c, str(tmp_path), mesh=_one_device())
  rows = _rows(tmp_path)
  first = np.mean([r["reward_mean"] for r in rows[:2]])
  last = np.mean([r["reward_mean"] for r in rows[-2:]])
  assert last > first + 1.5, (first, last)
  assert all(r["kl"] < 12.0 for r in rows)           # 8 tokens, KL penalty on: stays bounded
  assert rows[-1]["gold_mean"] == pytest.approx(rows[-1]["reward_mean"])
  for key in ("reward_std", "penalty", "entropy", "clipfrac", "vf_loss", "response_length"):
    assert key in rows[-1]


def _smoke(**kw):
  c = ppo_config.get_config("tiny,smoke")
  c.train.eval_every = 0
  for k, v in kw.items():
    setattr(c.ppo, k, v)
  return c


def test_resume_is_exact(tmp_path):
  c = _smoke(reward_norm="running", adaptive_kl=True)
  c.train.steps, c.train.checkpoint_every = 4, 2
  mesh = _one_device()
  _, full = ppo.run(c, str(tmp_path / "a"), return_state=True, mesh=mesh)
  c.train.steps = 2
  ppo.run(c, str(tmp_path / "b"), mesh=mesh)
  c.train.steps = 4
  _, resumed = ppo.run(c, str(tmp_path / "b"), return_state=True, mesh=mesh)
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(full)),
                  jax.tree_util.tree_leaves(jax.device_get(resumed))):
    np.testing.assert_array_equal(a, b)
  ra, rb = _rows(tmp_path / "a"), _rows(tmp_path / "b")
  assert [r["reward_mean"] for r in ra] == [r["reward_mean"] for r in rb]


def test_update_step_8_devices_equals_1():
  c = _smoke(minibatches=2)
  outs = []
  for mesh in (_one_device(), shd.make_mesh((2, 2, 2))):
    setup = ppo_setup.build(c, "/tmp/unused", mesh)
    trainer = ppo.Trainer(c, setup, mesh)
    state = trainer.init_state(setup.policy_params, setup.value_params, jax.random.PRNGKey(3))
    if not outs:  # one rollout, fed to both meshes (sampling parity is generate's own test)
      records = setup.train_prompts[:c.ppo.rollout_batch]
      batch, _, _, _ = trainer.experience(state, records, jax.random.PRNGKey(4))
      host = jax.device_get(batch)
    batch = shd.shard_batch(host, mesh)
    new, um = trainer.update(state, batch)
    outs.append((jax.device_get(new), jax.device_get(um), host))
  (s1, m1, _), (s8, m8, _) = outs
  for a, b in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s8)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
  for k in m1:
    np.testing.assert_allclose(m1[k], m8[k], rtol=1e-3, atol=1e-5)


def test_reward_normalisation_modes():
  r1, r2 = np.array([1.0, 3.0], np.float32), np.array([10.0, 10.0], np.float32)
  s = rollout.norm_init()
  out, s = rollout.normalize_rewards(r1, s, "frozen")
  np.testing.assert_allclose(out, [-1, 1], rtol=1e-5)
  out, s_frozen = rollout.normalize_rewards(r2, s, "frozen")
  np.testing.assert_allclose(out, [8, 8], rtol=1e-5)           # first batch's mean 2, std 1
  s = rollout.norm_init()
  _, s = rollout.normalize_rewards(r1, s, "running")
  out, s = rollout.normalize_rewards(r2, s, "running")
  allr = np.array([1, 3, 10, 10.0])
  np.testing.assert_allclose(out, (r2 - allr.mean()) / allr.std(), rtol=1e-5)
  out, _ = rollout.normalize_rewards(r1, rollout.norm_init(), "none")
  np.testing.assert_array_equal(out, r1)
  with pytest.raises(ConfigError, match="normalisation"):
    rollout.normalize_rewards(r1, s, "whiten")


def test_uncertainty_terms():
  members = np.array([[1.0, 1.2, 2.6], [0.0, 0.0, 0.0]])
  reward = members.mean(-1)
  score, w, var = rollout.uncertainty_terms(reward, members, "uwo", "reward", 0.5, 1.0, 0.1, 10)
  np.testing.assert_allclose(score, [1.3467, 0.0], atol=1e-4)   # ALGORITHMS.md 2.6 worked example
  np.testing.assert_allclose(w, [1, 1])
  score, w, var = rollout.uncertainty_terms(reward, members, "uwo", "variance_kl", 0.5, 1.0, 0.1, 10)
  np.testing.assert_allclose(score, reward, rtol=1e-6)          # reward untouched, KL reweighted
  np.testing.assert_allclose(w, [2.0, 0.1], rtol=1e-4)          # var / mean(var), clipped at 0.1
  _, _, var = rollout.uncertainty_terms(reward, members, "wco", "both", 0.5, 1.0, 0.1, 10)
  np.testing.assert_allclose(var, [0.50667, 0.0], atol=1e-4)
  with pytest.raises(ConfigError, match="ensemble members"):
    rollout.uncertainty_terms(reward, None, "mean", "reward", 0.5, 1.0, 0.1, 10)


@pytest.mark.parametrize("field,value,match", [
    ("rollout_batch", 15, "divide"), ("policy_loss", "ppo2", "policy_loss"),
    ("kl_estimator", "k9", "kl_estimator"), ("reward_norm", "z", "reward_norm"),
    ("uncertainty", "reward", "ensemble reward")])
def test_bad_config_one_line_errors(field, value, match):
  c = _smoke()
  setattr(c.ppo, field, value)
  with pytest.raises(ConfigError, match=match):
    ppo_setup.check(c)


def test_prompt_sources(shared_data):
  recs = ppo_setup.load_prompts("shared:mt_bench:5", data_dir=str(shared_data))
  assert len(recs) == 5 and all(isinstance(r["prompt"], str) and r["prompt"] for r in recs)
  with pytest.raises(ConfigError, match="unknown shared prompt set"):
    ppo_setup.load_prompts("shared:nope")


def test_proxy_label_responses_are_cached_per_sampling_settings(tmp_path, monkeypatch):
  from rmjax.tasks import overopt
  c = ppo_config.get_config("tiny,reward=proxy,smoke").proxy
  prompts = ["Say something kind about cats.", "Say something harsh about rain."]
  path = str(tmp_path / "responses.json")
  first = ppo_setup.label_responses(c, prompts, 3, path)
  assert len(first) == 2 and all(len(r) == 2 for r in first)
  monkeypatch.setattr(overopt, "sample_responses", lambda *a, **k: pytest.fail("re-sampled"))
  assert ppo_setup.label_responses(c, prompts, 3, path) == first     # same settings: cached
  monkeypatch.setattr(overopt, "sample_responses", lambda cfg, p, n, seed: [["x", "y"]] * len(p))
  c.overopt.temperature = 0.5
  assert ppo_setup.label_responses(c, prompts, 3, path) == [["x", "y"]] * 2


def test_smollm2_proxy_config_scores_the_policys_own_text():
  c = ppo_config.get_config("smollm2,reward=proxy")
  o = c.proxy.overopt
  assert c.proxy.ensemble.cached_embeddings and o.policy == "lm"
  assert c.proxy.model.spec == c.model.spec and c.ppo.prompts.startswith("synthetic:")
  assert (o.temperature, o.top_p, o.max_new_tokens) == (c.ppo.temperature, c.ppo.top_p,
                                                        c.ppo.max_new_tokens)
  assert ppo_config.get_config("tiny,reward=proxy").proxy.overopt.policy == "synthetic"
