"""`rmjax compile`: the train steps of a config compiled for a TPU slice that is not attached
(libtpu's compile-only devices), through the CLI as a user runs it (and `compile_config` in
process for the LoRA comparison). Compiling needs libtpu (the `tpu` extra); those tests are
skipped without it. The LoRA optimizer-state check needs only abstract shapes on a CPU mesh.
Tiny configs: each compile takes seconds."""

import json
import pathlib
import subprocess
import sys

import jax
import pytest

from configs import bt as bt_config
from configs import grm as grm_config
from configs import ppo as ppo_config
from rmjax import sharding as shd
from rmjax import tasks
from rmjax.commands.compile import compile_config
from rmjax.models import lora

REPO = pathlib.Path(__file__).resolve().parents[1]


def compile_cli(tmp_path, config, *overrides, topology="v5e:2x2"):
  proc = subprocess.run(
      [sys.executable, "-m", "rmjax", "compile", f"--config={REPO}/configs/{config}",
       f"--topology={topology}", f"--workdir={tmp_path}", *overrides],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  rows = None
  if (tmp_path / "compile.json").exists():
    rows = {r["function"]: r for r in json.loads((tmp_path / "compile.json").read_text())}
  return proc, rows


def test_tiny_bt_step_fits_v5e_2x2_with_splash_attention(tmp_path):
  pytest.importorskip("libtpu", reason="TPU AOT compilation needs libtpu: pip install -e '.[tpu]'")
  proc, rows = compile_cli(tmp_path, "bt.py:tiny", "--config.model.attention=splash")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  row = rows["bt.train_step"]
  assert row["fits"] is True and row["error"] is None
  assert row["chip"] == "v5e" and row["chips"] == 4 and row["attention"] == "splash"
  assert row["batch_size"] == 32 and row["max_length"] == 128 and row["task"] == "bt"
  # the state (f32 params + Adam moments of a ~0.2M-param model) is donated and updated in place
  assert row["argument_bytes"] > 1 << 20 and row["alias_bytes"] > 1 << 20
  assert 1 << 20 < row["total_bytes"] < row["hbm_bytes"]
  assert row["model_flops"] > 0 and row["roofline_step_s"] > 0
  assert "FITS" in proc.stdout and "bt.train_step" in proc.stdout


def test_tiny_ppo_update_prefill_decode_fit_v5e_2x2(tmp_path):
  pytest.importorskip("libtpu", reason="TPU AOT compilation needs libtpu: pip install -e '.[tpu]'")
  proc, rows = compile_cli(tmp_path, "ppo.py:tiny", "--config.ppo.rollout_batch=8",
                           "--config.ppo.minibatches=2", "--config.ppo.epochs=1")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert set(rows) == {"ppo.update", "ppo.score", "ppo.prefill", "ppo.decode"}
  assert all(r["fits"] for r in rows.values())
  up = rows["ppo.update"]
  assert up["rollout_batch"] == 8 and up["alias_bytes"] > 0  # the PPOState is donated
  assert up["argument_bytes"] > 100_000  # policy + value params and their two AdamW states
  assert rows["ppo.decode"]["alias_bytes"] > 0  # the KV cache is updated in place


def test_oversized_batch_exits_2_with_one_oom_line(tmp_path):
  pytest.importorskip("libtpu", reason="TPU AOT compilation needs libtpu: pip install -e '.[tpu]'")
  proc, rows = compile_cli(tmp_path, "bt.py:tiny", f"--config.train.batch_size={1 << 20}")
  assert proc.returncode == 2, proc.stdout + proc.stderr
  lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
  assert len(lines) == 1, proc.stderr
  line = lines[0]
  assert line.startswith("rmjax: error: bt.train_step does not fit v5e:2x2"), line
  assert "HBM per chip" in line and "G of " in line and "Traceback" not in proc.stderr
  assert rows["bt.train_step"]["fits"] is False and "OOM" in proc.stdout  # table + JSON first


def test_task_without_abstract_step_is_one_line_config_error(tmp_path):
  proc, _ = compile_cli(tmp_path, "overopt.py:tiny")
  assert proc.returncode == 2, proc.stdout + proc.stderr
  lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
  assert len(lines) == 1 and "task 'overopt' has no abstract train step" in lines[0], proc.stderr


def _lora_config(config, rank=4):
  config.model.lora.update(rank=rank, alpha=8.0)
  return config


def _adam_paths(opt_state) -> list:
  """'/'-joined paths of the leaves that hold Adam's first moment (the trained ones)."""
  if hasattr(opt_state, "inner_states"):  # a masked optimizer (frozen leaves)
    opt_state = opt_state.inner_states["train"].inner_state
  mu = opt_state[1][0].mu
  return sorted(lora.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(mu))


def test_lora_steps_hold_adam_state_for_adapters_and_heads_only():
  """No libtpu needed (a CPU mesh, abstract shapes only): under model.lora the compiled train
  steps carry `rmjax train`'s freeze mask, so only adapters and heads hold optimizer state (bt,
  GRM's dpo_ref without a reference copy, PPO's policy and value model), and PPO's scoring pass
  and sampler take the plain (merged) trees."""
  mesh = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  for config in (bt_config.get_config("tiny"), grm_config.get_config("tiny,reg=dpo_ref,alpha=0.5")):
    step = tasks.get(config.task).compile_steps
    full = step(config, mesh)[0].args[0]
    every = [lora.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(full.params)]
    assert _adam_paths(full.opt_state) == sorted(k for k in every if not k.startswith("reference/"))
    state = step(_lora_config(config), mesh)[0].args[0]
    flat = [lora.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.params)]
    trained = [k for k in flat if lora.is_adapter(k) or not k.startswith("backbone/")]
    assert "reference" not in state.params and any(map(lora.is_adapter, trained))
    assert _adam_paths(state.opt_state) == sorted(trained), config.task
    assert jax.tree_util.tree_leaves(state.opt_state.inner_states["freeze"]) == []
  c = _lora_config(ppo_config.get_config("tiny,smoke"))
  c.model.lora.targets = "q_proj,v_proj,lm_head"
  steps = {s.name: s for s in tasks.get("ppo").compile_steps(c, mesh)}
  state = steps["ppo.update"].args[0]
  assert _adam_paths(state.policy_opt) == sorted(
      f"{m}/kernel_lora_{x}" for m in ("layers/self_attn/q_proj", "layers/self_attn/v_proj",
                                       "lm_head") for x in "ab")
  assert _adam_paths(state.value_opt) == sorted(
      [f"backbone/layers/self_attn/{m}/kernel_lora_{x}" for m in ("q_proj", "v_proj")
       for x in "ab"] + ["value_head/Dense_0/kernel"])
  for name in ("ppo.score", "ppo.prefill", "ppo.decode"):
    for tree in steps[name].args[:3 if name == "ppo.score" else 1]:
      assert not any(lora.is_adapter(lora.path_str(p))
                     for p, _ in jax.tree_util.tree_leaves_with_path(tree)), name


def test_lora_bt_step_compiles_with_fewer_argument_bytes_than_full(tmp_path):
  """`rmjax compile`'s plan for a LoRA config (rank 4): the donated state holds Adam moments for
  adapters + head only, so its argument bytes are well under the full fine-tune's (params +
  two moments for every weight: ~3x the params)."""
  pytest.importorskip("libtpu", reason="TPU AOT compilation needs libtpu: pip install -e '.[tpu]'")
  rows = {}
  for name, config in (("full", bt_config.get_config("tiny")),
                       ("lora", _lora_config(bt_config.get_config("tiny")))):
    [rows[name]] = compile_config(config, "v5e:2x2", workdir=str(tmp_path / name))
  full, low = rows["full"], rows["lora"]
  assert full["fits"] and low["fits"] and low["lora_rank"] == 4 and "lora_rank" not in full
  n_params = full["argument_bytes"] / 3  # f32 params + mu + nu (batch: a few KB)
  assert low["argument_bytes"] < 0.5 * full["argument_bytes"], (low, full)
  assert low["argument_bytes"] > n_params * 0.9  # the frozen base itself is still an argument


def test_grpo_steps_are_the_learners_without_a_critic():
  """No libtpu needed: GRPO's compile steps are the RL learner's own (`ppo.compile_steps`), with
  no value model in the state or the scoring pass, and the update's batch is the one
  `Trainer.experience` hands it for `kl_in='loss'` (reference log-probs and KL coefficients,
  no values or returns)."""
  from configs import grpo as grpo_config  # noqa: PLC0415
  mesh = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  c = grpo_config.get_config("tiny")
  steps = {s.name: s for s in tasks.get("grpo").compile_steps(c, mesh)}
  assert set(steps) == {"grpo.update", "grpo.score", "grpo.prefill", "grpo.decode"}
  state, batch = steps["grpo.update"].args
  assert state.value == {} and steps["grpo.score"].args[2] is None
  assert set(batch) == {"ids", "mask", "resp_mask", "old_logp", "advantages", "ref_logp",
                        "kl_coef"}
  assert "values" not in steps["grpo.score"].out_shardings
