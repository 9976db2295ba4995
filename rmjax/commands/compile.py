"""Compile a config's train steps for a TPU slice from abstract inputs (no TPU needed)."""

from __future__ import annotations

from absl import flags

from rmjax.commands.common import FLAGS, config, require

SUMMARY = "AOT-compile the config's train steps for a TPU slice: per-chip memory, FLOPs"
EXAMPLE = "rmjax compile --config configs/bt.py:llama3-8b --topology v5e:4x4"
USES = ("config", "topology", "num_slices", "workdir")

flags.DEFINE_string("topology", None, "compile: TPU slice to compile for (v5e:4x4, v5p:2x2x1, v5e-16)")
flags.DEFINE_integer("num_slices", 1, "compile, sweep xpk: number of slices (the mesh's 'data' axis spans them)")


def main():
  from rmjax.tasks import aot  # lazy: only this command needs libtpu's compile-only devices
  aot.compile_config(config(), require("topology"), FLAGS.num_slices, FLAGS.workdir)
