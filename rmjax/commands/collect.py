"""Synthetic preference collection (SALMON): the config's task declares `collect`."""

from __future__ import annotations

import json

from rmjax import tasks
from rmjax.commands.common import config, require

SUMMARY = "collect synthetic preferences (SALMON self-judging) into --workdir"
EXAMPLE = "rmjax collect --config configs/salmon.py:tiny --workdir /tmp/salmon-data"
USES = ("config", "workdir")


def main():
  cfg = config()
  collect = tasks.get(cfg.task).require("collect")
  print(json.dumps(collect(cfg, require("workdir")), default=float))
