"""LoRA / QLoRA (rmjax.models.lora): fresh adapters are the base model, merged == unmerged, only
adapters and heads train and hold optimizer state, a LoRA BT run learns like a full fine-tune,
and the CLI trains, checkpoints and scores a LoRA workdir."""

import json
import os
import pathlib
import subprocess
import sys

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _util import fast_config
from configs import armorm as armorm_config
from configs import bt as bt_config
from configs import ensemble as ensemble_config
from configs import grm as grm_config
from configs import ppo as ppo_config
from configs import salmon as salmon_config
from rmjax.checkpoints.orbax import Checkpointer
from rmjax.errors import ConfigError
from rmjax.inference.scorer import Scorer
from rmjax.models import lora
from rmjax.models.reward_model import RewardModel
from rmjax import sharding as shd
from rmjax.rl import rollout
from rmjax.rl import value as value_lib
from rmjax.tasks import bt, common, ensemble, grm, ppo, ppo_setup, salmon
from rmjax.train import validate
from rmjax.train.loop import train

REPO = pathlib.Path(__file__).resolve().parents[1]
# the tiny backbone, LoRA-wrapped again and again: equal inits and steps compile once (conftest)
pytestmark = pytest.mark.usefixtures("jax_compile_cache")
LORA = {"rank": 4, "alpha": 8.0, "targets": "q_proj,k_proj,v_proj,o_proj", "dropout": 0.0,
        "quant": ""}


def _flat(tree):
  return {"/".join(map(str, k)): v for k, v in flax.traverse_util.flatten_dict(tree).items()}


def _ids(seed=0, b=4, t=12):
  ids = jax.random.randint(jax.random.PRNGKey(seed), (b, t), 3, 500)
  mask = jnp.ones_like(ids).at[0, :4].set(0)  # one left-padded row
  return ids, mask


@pytest.fixture(scope="module")
def tiny():
  cfg, backbone = common.backbone(bt_config.get_config("tiny"))
  return cfg, backbone


def _lora_params(model, backbone, seed=0):
  """Init params of the LoRA model with the pretrained backbone swapped in."""
  ids, mask = _ids()
  params = nn.unbox(model.init(jax.random.PRNGKey(seed), ids, mask)["params"])
  rest, adapters = lora.split(params)
  rest = dict(rest, backbone=jax.tree_util.tree_map(jnp.asarray, backbone))
  return lora.join(rest, adapters)


def _randomize_b(params, seed=1):
  """Nonzero B (as after training) so the adapters change the outputs."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: (0.05 * jax.random.normal(jax.random.PRNGKey(seed), x.shape)
                    if lora.path_str(p).endswith("_lora_b") else x), params)


def test_settings_validate_and_refuse_the_mlp():
  assert lora.settings({"rank": 0}) is None
  s = lora.settings(LORA)
  assert s.rank == 4 and s.scale == 2.0 and s.targets == ("q_proj", "k_proj", "v_proj", "o_proj")
  with pytest.raises(ConfigError, match="SwiGLU"):
    lora.settings(dict(LORA, targets="q_proj,gate_proj"))
  with pytest.raises(ConfigError, match="unknown"):
    lora.settings(dict(LORA, targets="qproj"))
  with pytest.raises(ConfigError, match="quant"):
    lora.settings(dict(LORA, quant="fp3"))
  with pytest.raises(ConfigError, match="dropout"):
    lora.settings(dict(LORA, dropout=1.0))


def test_fresh_adapters_give_the_base_models_rewards(tiny):
  """rank-r adapters with B = 0 at init: rewards identical to the base model's."""
  cfg, backbone = tiny
  base = RewardModel(cfg)
  model = lora.wrap(base, LORA)
  params = _lora_params(model, backbone)
  flat = _flat(params)
  bs = [v for k, v in flat.items() if k.endswith("_lora_b")]
  assert len(bs) == 4 and all(float(jnp.abs(b).max()) == 0.0 for b in bs)
  assert flat["backbone/layers/self_attn/q_proj/kernel_lora_a"].shape == (
      cfg.num_hidden_layers, cfg.hidden_size, 4)
  ids, mask = _ids()
  r_lora = model.apply({"params": params}, ids, mask)["reward"]
  r_base = base.apply({"params": lora.split(params)[0]}, ids, mask)["reward"]
  np.testing.assert_array_equal(np.asarray(r_lora), np.asarray(r_base))
  # trained (nonzero) adapters change the rewards; adapters_off gives the base back exactly
  trained = _randomize_b(params)
  assert float(jnp.abs(model.apply({"params": trained}, ids, mask)["reward"] - r_base).max()) > 1e-4
  off = model.apply({"params": lora.adapters_off(trained)}, ids, mask)["reward"]
  np.testing.assert_array_equal(np.asarray(off), np.asarray(r_base))


def test_merged_params_score_like_the_adapters(tiny):
  """merge(): W + alpha/r * A @ B into the plain model == the LoRA model, within 1e-5."""
  cfg, backbone = tiny
  base = RewardModel(cfg)
  model = lora.wrap(base, LORA)
  params = _randomize_b(_lora_params(model, backbone))
  merged = lora.merge(params, LORA)
  assert not any(k.endswith(lora.SUFFIXES) for k in _flat(merged))
  assert jax.tree_util.tree_structure(merged) == jax.tree_util.tree_structure(
      lora.split(params)[0])
  ids, mask = _ids(seed=3)
  r_lora = model.apply({"params": params}, ids, mask)["reward"]
  r_merged = base.apply({"params": merged}, ids, mask)["reward"]
  assert float(jnp.abs(r_lora - base.apply({"params": lora.split(params)[0]}, ids,
                                           mask)["reward"]).max()) > 1e-4
  np.testing.assert_allclose(np.asarray(r_merged), np.asarray(r_lora), atol=1e-5)


def _config(steps, rank=4, **lora_kw):
  c = fast_config(bt_config.get_config("tiny"), steps=steps)
  c.model.lora.rank = rank
  c.model.lora.alpha = 8.0
  c.model.lora.update(lora_kw)
  return c


def _losses(workdir):
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r["loss"] for r in rows if "loss" in r]


def test_only_adapters_and_heads_change_and_hold_optimizer_state(tmp_path, tiny):
  _, backbone = tiny
  c = _config(steps=3)
  task = bt.build(c)
  init = nn.unbox(task.init_params(jax.random.split(jax.random.PRNGKey(c.seed))[0]))
  _, state = train(c, str(tmp_path / "wd"), task, return_state=True)
  after, before, pre = _flat(state.params), _flat(init), _flat({"backbone": backbone})
  adapters = [k for k in after if k.endswith(lora.SUFFIXES)]
  heads = [k for k in after if k.startswith("reward_head/")]
  base = [k for k in after if k.startswith("backbone/") and k not in adapters]
  assert len(adapters) == 8 and heads and len(base) == len(pre)
  for k in base:  # the frozen base is the pretrained weights, bit for bit
    np.testing.assert_array_equal(np.asarray(after[k]), np.asarray(pre[k]), err_msg=k)
  for k in [k for k in adapters if k.endswith("_lora_b")] + heads:
    assert float(jnp.abs(after[k] - before[k]).max()) > 0, k
  # Adam moments exist for exactly the adapters and head leaves; the frozen branch holds none
  inner = state.opt_state.inner_states
  assert jax.tree_util.tree_leaves(inner["freeze"]) == []
  adam = inner["train"].inner_state[1][0]
  for moments in (adam.mu, adam.nu):
    held = sorted(lora.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(moments))
    assert held == sorted(adapters + heads)
  n_state = sum(x.size for x in jax.tree_util.tree_leaves(state.opt_state))
  n_trainable = sum(after[k].size for k in adapters + heads)
  assert n_state == 2 * n_trainable + 2  # mu, nu + the two step counters
  counts = lora.count(state.params)
  assert counts["adapter"] == sum(after[k].size for k in adapters) < counts["total"] // 10


def test_lora_bt_loss_falls_like_full_fine_tuning(tmp_path):
  """30 steps (batch 8) over 32 synthetic pairs, same data order: both losses fall, LoRA (r=8,
  attention only, + head) by at least half as much as the full fine-tune (here: full
  0.674 -> 0.308, LoRA 0.664 -> 0.166, mean of the first / last 5 steps)."""
  steps = 30
  runs = {}
  for name, rank in (("full", 0), ("lora", 8)):
    c = _config(steps=steps, rank=rank, alpha=16.0)
    c.optim.lr = 3e-3
    c.data.source = "synthetic:32"
    wd = tmp_path / name
    bt.SPEC.train(c, str(wd))
    ls = _losses(wd)
    runs[name] = (float(np.mean(ls[:5])), float(np.mean(ls[-5:])))
  print({k: {"first5": a, "last5": b} for k, (a, b) in runs.items()})
  drop = {k: a - b for k, (a, b) in runs.items()}
  assert drop["full"] > 0.1 and drop["lora"] > 0.1, runs
  assert drop["lora"] > 0.5 * drop["full"], runs


def _salmon_tiny():
  c = salmon_config.get_config("tiny")
  c.salmon.update(preferences="synthetic:64", eval_preferences="synthetic:8")
  return c


@pytest.mark.parametrize("name, make_config, module", [
    ("grm_dpo_ref", lambda: grm_config.get_config("tiny,reg=dpo_ref,alpha=0.5"), grm),
    ("ensemble", lambda: ensemble_config.get_config("tiny,members=3"), ensemble),
    ("salmon", _salmon_tiny, salmon)])
def test_pair_tasks_train_adapters_only(tmp_path, tiny, name, make_config, module):
  """GRM (dpo_ref: the reference is the base with adapters off, no 'reference' copy), the
  K-head ensemble and SALMON (with an eval): 2 steps, the base stays the
  pretrained weights, adapters move."""
  _, backbone = tiny
  c = fast_config(make_config(), steps=2)
  c.model.lora.update(rank=4, alpha=8.0)
  if name == "salmon":  # also an eval through the LoRA model
    c.train.eval_every = 2
  task = module.build(c)
  final, state = train(c, str(tmp_path / name), task, return_state=True)
  after, pre = _flat(state.params), _flat({"backbone": backbone})
  assert "reference" not in state.params
  if name == "salmon":
    assert 0.0 <= final["eval_accuracy"] <= 1.0
  for k, v in pre.items():
    np.testing.assert_array_equal(np.asarray(after[k]), np.asarray(v), err_msg=k)
  assert float(jnp.abs(after["backbone/layers/self_attn/q_proj/kernel_lora_b"]).max()) > 0
  held = {lora.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(
      state.opt_state.inner_states["train"].inner_state[1][0].mu)}
  assert held and all(k.endswith(lora.SUFFIXES) or not k.startswith("backbone/") for k in held)
  if name == "grm_dpo_ref":  # step 1 runs the fresh adapters: policy log-probs == reference's
    row = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])
    assert abs(row["chosen_logps"] - row["ref_chosen_logps"]) < 1e-4, row


def test_ensemble_of_lora_members_on_one_backbone(tmp_path, tiny):
  """ensemble.mode='lora': K adapter sets + K heads on one frozen backbone (held once), members
  differ after training, and `rmjax score`'s Scorer restores the workdir with member scores."""
  cfg, backbone = tiny
  k = 3
  c = fast_config(ensemble_config.get_config(f"tiny,members={k},mode=lora"), steps=3)
  c.model.lora.update(rank=4, alpha=8.0)
  wd = tmp_path / "lora_members"
  _, state = train(c, str(wd), ensemble.build(c), return_state=True)
  after, pre = _flat(state.params), _flat({"backbone": backbone})
  for key, v in pre.items():  # one backbone: not stacked, never moved
    np.testing.assert_array_equal(np.asarray(after[key]), np.asarray(v), err_msg=key)
  a = after["backbone/layers/self_attn/q_proj/kernel_lora_a"]
  assert a.shape == (k, cfg.num_hidden_layers, cfg.hidden_size, 4)
  assert after["reward_head/Dense_0/kernel"].shape == (k, cfg.hidden_size, 1)
  counts = lora.count(state.params)
  n_base = sum(v.size for v in pre.values())
  n_head = after["reward_head/Dense_0/kernel"].size + after.get("reward_head/Dense_0/bias",
                                                                np.zeros(0)).size
  assert counts["total"] == n_base + counts["adapter"] + n_head
  scorer = Scorer(str(wd), ensemble.SPEC)
  ids, mask = _ids()
  out = scorer.model.apply({"params": scorer.params}, ids, mask)
  m = np.asarray(out["members"])
  assert m.shape == (4, k) and np.ptp(m, axis=1).min() > 1e-4
  np.testing.assert_allclose(np.asarray(out["reward"]), m.mean(1), rtol=1e-6)


def test_lora_config_conflicts_are_refused():
  c = ensemble_config.get_config("tiny,mode=independent")
  c.model.lora.rank = 4
  cfg, _ = common.backbone(c)
  with pytest.raises(ConfigError, match="independent"):
    ensemble.make_model(c, cfg)
  c = bt_config.get_config("tiny")
  c.model.lora.rank = 4
  c.train.freeze_backbone = True
  with pytest.raises(ConfigError, match="freeze_backbone"):
    bt.make_model(c, cfg)


def _lora_errors(config, **lora_kw):
  """The one-line up-front errors (`rmjax.train.validate`) of `config` with model.lora set."""
  config.model.lora.update(dict(dict(rank=4, alpha=8.0), **lora_kw))
  return [str(e) for e in validate.config_errors(config)]


def test_bad_lora_combinations_are_refused_up_front():
  """Before anything is built, one line naming the key: LoRA in a frozen backbone, QLoRA or a
  random frozen value backbone in PPO, ArmoRM (no adapters), ensemble modes that do not fit, and
  bad model.lora values; the settings it checks are lora.py's own."""
  assert (validate.LORA_QUANT, validate.LORA_TARGETS, validate.LORA_MLP) == (
      lora.QUANT, lora.TARGETS, lora.MLP_TARGETS)
  ok = [bt_config.get_config("tiny"), ppo_config.get_config("tiny,smoke"),
        ensemble_config.get_config("tiny,mode=lora")]
  for c in ok:
    assert _lora_errors(c, targets="q_proj,lm_head") == [], c.task
  assert _lora_errors(bt_config.get_config("tiny"), quant="nf4") == []
  c = bt_config.get_config("tiny")
  c.train.freeze_backbone = True
  cases = [
      (c, {}, "config key train.freeze_backbone: must be False"),
      (ppo_config.get_config("tiny,smoke"), dict(quant="int8"), "config key model.lora.quant: QLoRA"),
      (ppo_config.get_config("tiny,smoke"), dict(quant="nf4"), "config key model.lora.quant: QLoRA"),
      (armorm_config.get_config("tiny"), {}, "config key model.lora.rank: must be 0 for task armorm"),
      (ensemble_config.get_config("tiny,mode=independent"), {}, "config key ensemble.mode:"),
      (ensemble_config.get_config("tiny,mode=lora"), dict(rank=0), "config key ensemble.mode:"),
      (bt_config.get_config("tiny"), dict(rank=-1), "config key model.lora.rank:"),
      (bt_config.get_config("tiny"), dict(alpha=-1.0), "config key model.lora.alpha:"),
      (bt_config.get_config("tiny"), dict(dropout=1.0), "config key model.lora.dropout:"),
      (bt_config.get_config("tiny"), dict(quant="fp3"), "config key model.lora.quant:"),
      (bt_config.get_config("tiny"), dict(targets="q_proj,up_proj"), "SwiGLU"),
      (bt_config.get_config("tiny"), dict(targets=""), "config key model.lora.targets:")]
  p = ppo_config.get_config("tiny,smoke")
  p.ppo.value_init = "random"
  cases.append((p, {}, "config key ppo.value_init: 'random' with model.lora.rank > 0"))
  for config, kw, match in cases:
    errors = _lora_errors(config, **kw)
    assert len(errors) == 1 and match in errors[0] and "\n" not in errors[0], (match, errors)
  with pytest.raises(ConfigError, match="value_init"):
    validate.validate_config(p)


def test_qlora_int8_trains_only_adapters(tmp_path, tiny):
  """QLoRA: targeted base kernels stored as int8 (quantized once from the pretrained weights),
  float adapters train, the quantized base never changes; fresh adapters score close to the
  float base model (int8 rounding)."""
  cfg, backbone = tiny
  c = _config(steps=2, quant="int8")
  task = bt.build(c)
  _, state = train(c, str(tmp_path / "wd"), task, return_state=True)
  q = state.params["backbone"]["layers"]["self_attn"]["q_proj"]["kernel"]
  assert isinstance(q, lora.WithAux) and q.array.qvalue.dtype == jnp.int8
  w = np.asarray(backbone["layers"]["self_attn"]["q_proj"]["kernel"])
  np.testing.assert_allclose(np.asarray(lora._dequantized(q)), w, atol=float(np.abs(w).max()) / 100)
  assert np.isfinite(_losses(tmp_path / "wd")).all()
  # fresh adapters on the int8 base ~ the float base model
  model = bt.make_model(c, cfg)
  fresh = lora.adapters_off(state.params)
  ids, mask = _ids()
  r_q = model.apply({"params": fresh}, ids, mask)["reward"]
  base = RewardModel(cfg).apply({"params": dict(lora.split(lora.merge(fresh, c.model.lora))[0],
                                                backbone=backbone)}, ids, mask)["reward"]
  np.testing.assert_allclose(np.asarray(r_q), np.asarray(base), atol=2e-2)


def _bits(x):
  """A leaf as a numpy array that compares bit for bit (uint4 codes widened to uint8)."""
  x = np.asarray(x)
  return x.astype(np.uint8) if x.dtype == jnp.uint4 else x


def test_qlora_nf4_saves_resumes_and_scores_identically(tmp_path, tiny):
  """nf4 QLoRA: qwix's uint4 base codes (which tensorstore cannot write) are checkpointed as
  uint8 and restored as uint4: a run stopped after its step-2 checkpoint and resumed ends at the
  same bits (params, Adam state, losses) as an uninterrupted 4-step run, and `rmjax score`'s
  Scorer restores the nf4 base and scores exactly like the in-memory state."""
  def config(steps):
    c = _config(steps=steps, quant="nf4")
    c.optim.schedule = "constant"  # a step's lr does not depend on train.steps
    c.train.checkpoint_every = 2
    return c
  a, b = tmp_path / "a", tmp_path / "b"
  _, full = train(config(4), str(a), bt.build(config(4)), return_state=True)
  train(config(2), str(b), bt.build(config(2)))
  _, resumed = train(config(4), str(b), bt.build(config(4)), return_state=True)
  q = resumed.params["backbone"]["layers"]["self_attn"]["q_proj"]["kernel"]
  assert isinstance(q, lora.WithAux) and q.array.qvalue.dtype == jnp.uint4
  full_leaves, resumed_leaves = (jax.tree_util.tree_leaves(jax.device_get(s))
                                 for s in (full, resumed))
  assert len(full_leaves) == len(resumed_leaves)
  for x, y in zip(full_leaves, resumed_leaves):
    np.testing.assert_array_equal(_bits(x), _bits(y))
  assert _losses(a) == _losses(b) and len(_losses(b)) == 4  # steps 1-2 + resumed 3-4
  assert float(jnp.abs(_flat(resumed.params)[
      "backbone/layers/self_attn/q_proj/kernel_lora_b"]).max()) > 0
  # on disk: the codes as uint8 (no uint4 leaf), values 0..15
  raw = Checkpointer(str(b / "checkpoints")).restore_raw(2)
  stored = [x for x in jax.tree_util.tree_leaves(raw) if x.dtype == np.uint8]
  assert stored and all(int(x.max()) <= 15 for x in stored)
  assert not any(x.dtype == jnp.uint4 for x in jax.tree_util.tree_leaves(raw))
  # the scorer restores the same uint4 codes and scores like the trained state
  ids, mask = _ids()
  model = bt.make_model(config(4), tiny[0])
  want = np.asarray(model.apply({"params": resumed.params}, ids, mask)["reward"])
  for wd in (a, b):
    scorer = Scorer(str(wd), bt.SPEC)
    sq = scorer.params["backbone"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert sq.array.qvalue.dtype == jnp.uint4
    for x, y in zip(jax.tree_util.tree_leaves(jax.device_get(scorer.params)),
                    jax.tree_util.tree_leaves(jax.device_get(resumed.params))):
      np.testing.assert_array_equal(_bits(x), _bits(y))
    got = scorer.model.apply({"params": scorer.params}, ids, mask)["reward"]
    np.testing.assert_array_equal(np.asarray(got), want)


def test_cli_lora_train_checkpoint_and_score(tmp_path, jax_compile_cache):
  """`rmjax train` / `rmjax score` processes on a LoRA workdir. The train config is the
  in-process `_config(steps=3)` of test_only_adapters_... (fast_config flags, rank 4, alpha 8),
  so with the module's compilation cache the processes load its programs instead of compiling
  them again."""
  wd = tmp_path / "bt_lora"
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax_compile_cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.1",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  run = lambda *a: subprocess.run([sys.executable, "-m", "rmjax", *map(str, a)], cwd=REPO,  # noqa: E731
                                  capture_output=True, text=True, timeout=600, env=env)
  proc = run("train", f"--config={REPO}/configs/bt.py:tiny", f"--workdir={wd}",
             "--config.model.lora.rank=4", "--config.model.lora.alpha=8.0",
             "--config.train.steps=3", "--config.train.checkpoint_every=3",
             "--config.train.eval_every=0", "--config.train.log_every=1",
             "--config.data.source=synthetic:200", "--config.data.eval_source=synthetic:16",
             "--config.train.batch_size=8", "--config.optim.warmup_steps=1",
             "--config.train.progress=False", "--config.train.tensorboard=False",
             "--config.train.async_checkpoint=False")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  saved = json.loads((wd / "config.json").read_text())
  assert saved["model"]["lora"]["rank"] == 4
  # the checkpoint holds the adapters (restored through the scorer, as `rmjax score` does)
  flat = _flat(Scorer(str(wd), bt.SPEC).params)
  b = flat["backbone/layers/self_attn/v_proj/kernel_lora_b"]
  assert b.shape[-2] == 4 and float(jnp.abs(b).max()) > 0
  inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
  inp.write_text(json.dumps({"prompt": "Say something kind.", "response": "good cats."}) + "\n")
  proc = run("score", f"--workdir={wd}", f"--data={inp}", f"--out={out}")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  assert len(rows) == 1 and np.isfinite(rows[0]["reward"])


def test_ppo_lora_policy_and_value_train_adapters_only(tmp_path):
  """PPO with model.lora (targets include lm_head): the run holds one policy backbone (no
  reference copy; param count); policy and value model train only their adapters (the value
  model: the attention adapters, none on the LM head it never runs) plus the value head, which
  alone hold Adam state and move, while both frozen bases stay bit for bit; the reference
  log-probs equal a separately held base model's within 1e-5 after the adapters have trained."""
  c = ppo_config.get_config("tiny,smoke")
  c.train.eval_every = 0
  c.train.steps, c.train.checkpoint_every = 3, 3
  c.model.lora.update(rank=4, alpha=8.0, targets="q_proj,k_proj,v_proj,o_proj,lm_head")
  mesh = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  setup = ppo_setup.build(c, str(tmp_path), mesh)
  assert setup.ref_params is None
  base_cfg = setup.cfg
  base = jax.tree_util.tree_map(np.asarray, lora.split(setup.policy_params)[0])
  value0 = _flat(jax.tree_util.tree_map(np.asarray, setup.value_params))
  _, state = ppo.run(c, str(tmp_path / "run"), return_state=True, mesh=mesh)
  n_base = sum(x.size for x in jax.tree_util.tree_leaves(base))
  counts = lora.count(state.policy)
  assert counts["total"] == n_base + counts["adapter"] and counts["adapter"] < n_base // 10
  policy = _flat(jax.device_get(state.policy))
  for k, v in _flat(base).items():  # the base never moves
    np.testing.assert_array_equal(policy[k], v, err_msg=k)
  assert float(np.abs(policy["layers/self_attn/q_proj/kernel_lora_b"]).max()) > 0
  assert float(np.abs(policy["lm_head/kernel_lora_b"]).max()) > 0
  held = {lora.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(
      state.policy_opt.inner_states["train"].inner_state[1][0].mu)}
  assert held and all(k.endswith(lora.SUFFIXES) for k in held)
  # the value model: adapters on the policy's attention targets, none on its unused LM head
  value = _flat(jax.device_get(state.value))
  v_adapters = sorted(k for k in value if k.endswith(lora.SUFFIXES))
  assert v_adapters == sorted(f"backbone/{k}" for k in policy
                              if k.endswith(lora.SUFFIXES) and not k.startswith("lm_head/"))
  v_heads = sorted(k for k in value if k.startswith("value_head/"))
  v_base = [k for k in value if k.startswith("backbone/") and k not in v_adapters]
  flat_base = _flat(base)
  assert v_heads and len(v_base) == len(flat_base)
  for k in v_base:  # the frozen value backbone is the policy's base (value_init='policy')
    np.testing.assert_array_equal(value[k], value0[k], err_msg=k)
    np.testing.assert_array_equal(value[k], flat_base[k[len("backbone/"):]], err_msg=k)
  for k in [k for k in v_adapters if k.endswith("_lora_b")] + v_heads:  # what trains, moved
    assert float(np.abs(value[k] - value0[k]).max()) > 0, k
  # Adam moments for exactly the value adapters and the value head; the frozen branch: none
  v_inner = state.value_opt.inner_states
  assert jax.tree_util.tree_leaves(v_inner["freeze"]) == []
  for moments in (v_inner["train"].inner_state[1][0].mu, v_inner["train"].inner_state[1][0].nu):
    assert sorted(lora.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(
        moments)) == sorted(v_adapters + v_heads)
  # reference log-probs (adapters off) == a separately held base Llama's
  trainer = ppo.Trainer(c, setup, mesh)
  ids = jax.random.randint(jax.random.PRNGKey(5), (4, 16), 2, base_cfg.vocab_size)
  mask = jnp.ones_like(ids)
  resp = jnp.ones((4, 16 - c.ppo.prompt_len), jnp.int32)
  with jax.set_mesh(mesh):
    scored = rollout.score_sequences(
        trainer.policy_params(state.policy), trainer.ref_params(state.policy),
        trainer.value_params(state.value), ids, mask, resp, cfg=base_cfg, value_cfg=base_cfg,
        prompt_len=c.ppo.prompt_len)
  held_out = rollout.policy_forward(base, ids, mask, cfg=base_cfg, prompt_len=c.ppo.prompt_len)[0]
  np.testing.assert_allclose(np.asarray(scored["ref_logp"]), np.asarray(held_out), atol=1e-5)
  assert float(np.abs(np.asarray(scored["old_logp"]) - np.asarray(held_out)).max()) > 1e-4
  # the merged value view scores like the LoRA ValueModel itself
  v_lora = lora.wrap(value_lib.ValueModel(base_cfg), trainer.value_lora).apply(
      {"params": jax.device_get(state.value)}, ids, mask)
  np.testing.assert_allclose(np.asarray(scored["values"]),
                             np.asarray(v_lora[:, c.ppo.prompt_len - 1:-1] * resp), atol=1e-5)


def test_adapter_dropout_trains(tmp_path):
  """model.lora.dropout > 0: Llama's layer scan splits the 'dropout' rng per layer, so the
  adapters' dropout runs in training (finite, changing losses)."""
  c = _config(steps=3, rank=4, dropout=0.2)
  c.optim.lr = 3e-3
  bt.SPEC.train(c, str(tmp_path / "drop"))
  ls = _losses(tmp_path / "drop")
  assert len(ls) == 3 and np.all(np.isfinite(ls))
