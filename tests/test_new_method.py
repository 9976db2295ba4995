"""A sixth method from outside rmjax: a hinge-loss pair RM declared through the public TaskSpec,
run train -> score -> eval through the CLI (`config.task` names the module; its SPEC is found
on import)."""

import json
import os
import subprocess
import sys
import textwrap

from _util import xla_flags
from conftest import REPO

HINGE_TASK = textwrap.dedent('''
    """Hinge-loss pair RM: max(0, margin - (r_c - r_r)), on rmjax's pair assembly."""
    import jax.numpy as jnp

    from rmjax import losses
    from rmjax.tasks import bt, common
    from rmjax.tasks.pairs import forward_pairs, pair_task
    from rmjax.tasks.spec import TaskSpec


    def hinge_loss_fn(model, margin):
      def loss_fn(params, batch, rng):
        c, r = forward_pairs(model, params, batch, rng=rng)
        w = batch["weight"]
        per = jnp.maximum(0.0, margin - (c["reward"] - r["reward"]))
        loss = jnp.sum(per * w) / jnp.maximum(jnp.sum(w), 1.0)
        return loss, losses.pair_metrics(c["reward"], r["reward"], w)
      return loss_fn


    def build(config):
      backbone = common.backbone(config)
      model = bt.make_model(config, backbone[0])
      return pair_task(config, model, hinge_loss_fn(model, 1.0), backbone=backbone)


    SPEC = TaskSpec(name="hinge_rm", make_model=bt.make_model, build=build)
''')

HINGE_CONFIG = textwrap.dedent('''
    from configs import bt


    def get_config(arg=None):
      c = bt.get_config(arg)
      c.task = "hinge_rm"
      return c
''')


def test_hinge_method_train_score_eval(tmp_path):
  (tmp_path / "hinge_rm.py").write_text(HINGE_TASK)
  (tmp_path / "hinge_config.py").write_text(HINGE_CONFIG)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]),
             XLA_FLAGS=xla_flags(2))
  wd = tmp_path / "wd"

  def start(*args):
    return subprocess.Popen([sys.executable, "-m", "rmjax", *map(str, args)], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

  def finish(proc):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    return out

  def rmjax(*args):
    return finish(start(*args))

  rmjax("train", f"--config={tmp_path / 'hinge_config.py'}:tiny", f"--workdir={wd}",
        "--config.train.steps=6", "--config.train.checkpoint_every=6", "--config.train.eval_every=6",
        "--config.train.log_every=3", "--config.train.batch_size=8", "--config.data.source=synthetic:64",
        "--config.data.eval_source=synthetic:16", "--config.data.max_length=64",
        "--config.train.progress=False", "--config.train.tensorboard=False")
  rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [3, 6] and "eval_accuracy" in rows[-1]
  assert json.loads((wd / "config.json").read_text())["task"] == "hinge_rm"

  data = tmp_path / "in.jsonl"
  data.write_text("".join(json.dumps({"prompt": f"q{i}", "response": "word " * i}) + "\n"
                          for i in range(1, 6)))
  score = start("score", f"--workdir={wd}", f"--data={data}", f"--out={tmp_path / 'out.jsonl'}")
  evaluate = start("eval", f"--workdir={wd}", "--data=synthetic:16")  # side by side
  finish(score)
  scores = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert len(scores) == 5 and all(isinstance(s["reward"], float) for s in scores)

  out = finish(evaluate)
  report = json.loads(out.strip().splitlines()[-1])
  assert report["n"] == 16 and 0.0 <= report["accuracy"] <= 1.0
