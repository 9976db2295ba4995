"""Compile a config's train steps for a TPU slice from abstract inputs (no TPU needed).

The steps are the task's own (`TaskSpec.compile_steps`): the supervised loop's from the same
`rmjax.train.loop.plan` `rmjax train` runs (pair methods through `rmjax.tasks.pairs.pair_spec`,
a plug-in method's too), the RL learner's from its `Trainer`, ArmoRM's from its stages' Tasks;
each is compiled on libtpu's compile-only devices (`rmjax.aot`), with per-chip HBM, FLOPs and a
roofline; an OOM ends as `DoesNotFit` (one line, exit 2).
"""

from __future__ import annotations

import os
import time
from typing import Optional

from absl import flags

from rmjax.commands.common import FLAGS, config, require

SUMMARY = "AOT-compile the config's train steps for a TPU slice: per-chip memory, FLOPs"
EXAMPLE = "rmjax compile --config configs/bt.py:llama3-8b --topology v5e:4x4"
USES = ("config", "topology", "num_slices", "workdir")

flags.DEFINE_string("topology", None, "compile: TPU slice to compile for (v5e:4x4, v5p:2x2x1, v5e-16)")
flags.DEFINE_integer("num_slices", 1, "compile, sweep xpk: number of slices (the mesh's 'data' axis spans them)")


def settings(config) -> dict:
  """The config's settings every row of compile.json carries."""
  m = config.model
  out = {"task": config.task, "spec": m.spec, "remat": m.remat, "attention": m.get("attention", "xla"),
         "dtype": m.dtype, "param_dtype": m.param_dtype, "batch_size": config.train.batch_size,
         "max_length": config.data.max_length, "accum_steps": config.optim.accum_steps}
  s = (m.get("lora") or {})
  if s.get("rank", 0):  # LoRA: the state holds Adam moments for adapters and heads only
    out.update(lora_rank=int(s["rank"]), lora_targets=str(s.get("targets", "")),
               lora_quant=str(s.get("quant", "") or ""))
  rl = config.get(config.task)
  if rl is not None and "rollout_batch" in rl:  # the RL learner's section (ppo, grpo)
    out.update({k: rl[k] for k in ("rollout_batch", "prompt_len", "max_new_tokens", "minibatches")})
  return out


def compile_config(config, topology: str, num_slices: int = 1, workdir: Optional[str] = None) -> list:
  """Compile every function `rmjax train` would run for `config` on `num_slices` x `topology`;
  prints the table, writes `<workdir>/compile.json`, returns the rows; raises `DoesNotFit`
  (after the table and JSON) when any function needs more HBM than a chip has."""
  from rmjax import aot, tasks  # noqa: PLC0415 -- lazy: only this command needs them
  compile_steps = tasks.get(config.task).require("compile_steps")
  mesh = aot.topology_mesh(topology, tuple(config.mesh.shape), num_slices)
  steps = compile_steps(config, mesh)
  workdir = workdir or os.path.join("workdirs", f"compile-{time.strftime('%Y%m%d-%H%M%S')}")
  return aot.compile_steps(steps, mesh, aot.chip_of(topology),
                           dict(settings(config), topology=topology, num_slices=int(num_slices)),
                           os.path.abspath(os.path.join(workdir, "compile.json")))


def main():
  compile_config(config(), require("topology"), FLAGS.num_slices, FLAGS.workdir)
