"""A sixth method from outside rmjax: a hinge-loss pair RM, a loss plus one line
(`pair_spec(name, PairMethod(loss=...))`), run train -> score -> eval through the CLI
(`config.task` names the module; its SPEC is found on import); it gets what every pair method
gets without asking: LoRA adapters under `model.lora` (the base frozen) and `rmjax compile`
(the step `rmjax train` runs, compiled for a TPU slice)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from flax.traverse_util import flatten_dict as flatten

from _util import xla_flags
from conftest import REPO

HINGE_TASK = textwrap.dedent('''
    """Hinge-loss pair RM: max(0, margin - (r_c - r_r)), a loss on rmjax's pair assembly."""
    import jax.numpy as jnp

    from rmjax import losses
    from rmjax.tasks.pairs import PairMethod, forward_pairs, pair_spec


    def hinge_loss(config, model, cfg, margin=1.0):
      def loss_fn(params, batch, rng):
        c, r = forward_pairs(model, params, batch, rng=rng)
        w = batch["weight"]
        per = jnp.maximum(0.0, margin - (c["reward"] - r["reward"]))
        loss = jnp.sum(per * w) / jnp.maximum(jnp.sum(w), 1.0)
        return loss, losses.pair_metrics(c["reward"], r["reward"], w)
      return loss_fn


    SPEC = pair_spec("hinge_rm", PairMethod(loss=hinge_loss))
''')

HINGE_CONFIG = textwrap.dedent('''
    from configs import bt


    def get_config(arg=None):
      c = bt.get_config(arg)
      c.task = "hinge_rm"
      return c
''')


SMALL = ("--config.train.steps=6", "--config.train.checkpoint_every=6", "--config.train.eval_every=6",
         "--config.train.log_every=3", "--config.train.batch_size=8",
         "--config.data.source=synthetic:64", "--config.data.eval_source=synthetic:16",
         "--config.data.max_length=64", "--config.train.progress=False",
         "--config.train.tensorboard=False")


def _plugin(tmp_path):
  """(start(*args) -> Popen, finish(Popen) -> stdout) for `rmjax` with the plug-in importable."""
  (tmp_path / "hinge_rm.py").write_text(HINGE_TASK)
  (tmp_path / "hinge_config.py").write_text(HINGE_CONFIG)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]),
             XLA_FLAGS=xla_flags(2))

  def start(*args):
    return subprocess.Popen([sys.executable, "-m", "rmjax", *map(str, args)], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

  def finish(proc):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    return out
  return start, finish


def test_hinge_method_trains_scores_evaluates_and_trains_lora_adapters(tmp_path):
  """The plug-in through the CLI: `rmjax train`, then `rmjax score` and `rmjax eval` on its
  workdir; and, side by side with the plain run (two processes, one core each, mostly
  compiling), `--config.model.lora.rank=8`: the plug-in, which makes no LoRA call of its own,
  trains rank-8 adapters on every attention projection beside its head, and the base weights in
  the final checkpoint are the pretrained ones, bit for bit."""
  from configs import bt  # noqa: PLC0415 -- the other tests here stay out of jax
  from rmjax import checkpoints  # noqa: PLC0415
  from rmjax.checkpoints.orbax import Checkpointer  # noqa: PLC0415

  start, finish = _plugin(tmp_path)
  wd, lwd = tmp_path / "wd", tmp_path / "lora"
  config = f"--config={tmp_path / 'hinge_config.py'}:tiny"
  plain = start("train", config, f"--workdir={wd}", *SMALL)
  with_lora = start("train", config, f"--workdir={lwd}", "--config.model.lora.rank=8", *SMALL)
  finish(plain)
  rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [3, 6] and "eval_accuracy" in rows[-1]
  assert json.loads((wd / "config.json").read_text())["task"] == "hinge_rm"

  data = tmp_path / "in.jsonl"
  data.write_text("".join(json.dumps({"prompt": f"q{i}", "response": "word " * i}) + "\n"
                          for i in range(1, 6)))
  score = start("score", f"--workdir={wd}", f"--data={data}", f"--out={tmp_path / 'out.jsonl'}")
  finish(with_lora)
  evaluate = start("eval", f"--workdir={wd}", "--data=synthetic:16")

  assert json.loads((lwd / "config.json").read_text())["model"]["lora"]["rank"] == 8
  flat = flatten(Checkpointer(str(lwd / "checkpoints")).restore_raw(6)["params"], sep="/")
  adapters = {k: v for k, v in flat.items() if k.endswith(("_lora_a", "_lora_b"))}
  assert {k.split("/")[-2] for k in adapters} == {"q_proj", "k_proj", "v_proj", "o_proj"}
  for k, v in adapters.items():
    assert v.shape[-1 if k.endswith("_lora_a") else -2] == 8, (k, v.shape)
    if k.endswith("_lora_b"):  # B starts at zero: trained adapters have moved it
      assert abs(v).max() > 0, k
  assert any(k.startswith("reward_head/") for k in flat)
  _, pre = checkpoints.load_pretrained("tiny", seed=bt.get_config("tiny").seed)
  pre = flatten(pre, sep="/")
  base = {k[len("backbone/"):]: v for k, v in flat.items()
          if k.startswith("backbone/") and k not in adapters}
  assert sorted(base) == sorted(pre)
  for k, v in base.items():  # the frozen base: the pretrained weights, bit for bit
    assert v.dtype == pre[k].dtype and (v == pre[k]).all(), k

  finish(score)
  scores = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert len(scores) == 5 and all(isinstance(s["reward"], float) for s in scores)
  out = finish(evaluate)
  report = json.loads(out.strip().splitlines()[-1])
  assert report["n"] == 16 and 0.0 <= report["accuracy"] <= 1.0


def test_hinge_method_compiles_for_a_tpu_slice(tmp_path):
  """`rmjax compile --topology v5e:2x2` compiles the plug-in's train step (the one `rmjax train`
  runs, LoRA included) with no compile code of its own: FITS."""
  pytest.importorskip("libtpu", reason="TPU AOT compilation needs libtpu: pip install -e '.[tpu]'")
  start, finish = _plugin(tmp_path)
  out = finish(start("compile", f"--config={tmp_path / 'hinge_config.py'}:tiny",
                     "--topology=v5e:2x2", f"--workdir={tmp_path / 'compile'}",
                     "--config.model.lora.rank=8"))
  rows = json.loads((tmp_path / "compile" / "compile.json").read_text())
  assert [r["function"] for r in rows] == ["hinge_rm.train_step"]
  assert rows[0]["fits"] and rows[0]["lora_rank"] == 8 and rows[0]["task"] == "hinge_rm"
  assert "FITS" in out and "hinge_rm.train_step" in out
