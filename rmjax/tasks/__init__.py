"""The method registry: `config.task` -> `TaskSpec` (see `rmjax.tasks.spec`).

    from rmjax import tasks
    tasks.get("bt").train(config, workdir)
    tasks.register(pair_spec("hinge", PairMethod(loss=hinge_loss)))     # a new pair method, or
    config.task = "mylab.hinge_rm"      # a module whose SPEC is a TaskSpec, found on import

One module per method: bt, grm, ensemble, salmon (+ salmon_collect), armorm, ppo (the RL
learner) and grpo (GRPO / RLOO on it), overopt;
`pairs` is the assembly pair methods share, `common` the backbone / tokenizer loaders, `runs`
what the commands do with a task (train it into a workdir, load a trained one to score).
"""

from __future__ import annotations

import importlib
import importlib.util

from rmjax.errors import ConfigError
from rmjax.tasks import armorm, bt, ensemble, grm, grpo, overopt, ppo, salmon
from rmjax.tasks.spec import TaskSpec

TASKS: dict[str, TaskSpec] = {s.name: s for s in (
    bt.SPEC, grm.SPEC, ensemble.SPEC, salmon.SPEC, armorm.SPEC, ppo.SPEC, grpo.SPEC,
    overopt.SPEC)}


def register(spec: TaskSpec) -> TaskSpec:
  """Add (or replace) a method; returns the spec, so it can be used as a module-level line."""
  TASKS[spec.name] = spec
  return spec


def get(name: str) -> TaskSpec:
  """The spec of `config.task`: a registered name, or an importable module path whose `SPEC`
  is a TaskSpec (a method living outside rmjax, e.g. `config.task = "mylab.hinge_rm"`)."""
  if name not in TASKS and "." in name or name not in TASKS and _importable(name):
    module = importlib.import_module(name)
    spec = getattr(module, "SPEC", None)
    if not isinstance(spec, TaskSpec):
      raise ConfigError(f"task module {name!r} defines no SPEC = TaskSpec(...)")
    TASKS[name] = spec
  if name not in TASKS:
    raise ConfigError(f"unknown task {name!r}; registered: {', '.join(sorted(TASKS))} (or a "
                      f"module path whose SPEC is a TaskSpec)")
  return TASKS[name]


def _importable(name: str) -> bool:
  try:
    return importlib.util.find_spec(name) is not None
  except (ImportError, ValueError):
    return False

