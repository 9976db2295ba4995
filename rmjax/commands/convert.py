"""Import a pretrained checkpoint into a workdir, or export a trained workdir to HF format."""

from __future__ import annotations

import os

from absl import flags

from rmjax import checkpoints, tasks
from rmjax.commands.common import FLAGS, require
from rmjax.errors import ConfigError

SUMMARY = "import hf:DIR / gguf:FILE into --workdir, or export --workdir to hf:OUT"
EXAMPLE = "rmjax convert --workdir /tmp/bt --to hf:/tmp/bt-hf"
USES = ("workdir", "from", "to", "step")

flags.DEFINE_string("from", None, "convert source: hf:DIR | gguf:FILE | preset name")
flags.DEFINE_string("to", None, "convert target: hf:OUT")


def main():
  workdir = require("workdir")
  src, dst = FLAGS["from"].value, FLAGS.to
  if bool(src) == bool(dst):
    raise ConfigError("convert needs exactly one of --from hf:DIR|gguf:FILE (import into --workdir) "
                      "or --to hf:OUT (export from --workdir)")
  if src:
    cfg, params = checkpoints.load_pretrained(src)
    checkpoints.save_pretrained(params, cfg, f"hf:{os.path.join(workdir, 'hf')}")
    print(f"converted {src} -> {os.path.join(workdir, 'hf')}")
    return
  if not dst.startswith("hf:"):
    raise ConfigError(f"--to must be hf:OUT, got {dst!r}")
  scorer = tasks.load_scorer(workdir, step=FLAGS.step)
  checkpoints.save_pretrained(scorer.params["backbone"], scorer.cfg, dst)
  print(f"exported backbone of {workdir} -> {dst[3:]}")
