"""`TaskSpec`: everything a method declares so that train / score / eval / collect can run it.

A method is a loss plus a declaration. The CLI resolves `config.task` in the registry
(`rmjax.tasks.TASKS`) and calls only what the spec declares; nothing probes modules with
`hasattr`. Fields:

  name        the `config.task` value.
  make_model  (config, LlamaConfig, model_extras: dict) -> the Flax module that scores; its
              `apply(params, ids, mask)` returns a dict with 'reward' (and optionally
              'members', 'objectives', 'gate'). None for methods that train no reward model.
  build       config -> `rmjax.train.loop.Task`: a method trained by the supervised loop
              (pair methods: `rmjax.tasks.pairs.pair_spec` builds it from a `PairMethod`).
  run         (config, workdir) -> final metrics: a multi-stage or RL driver (on
              `rmjax.train.run.Run`); `rmjax train` runs it when set, else the loop over
              `build`; at least one of them is set.
  compile_steps  (config, mesh) -> [`rmjax.aot.Step`]: the functions `rmjax train` jits, on
              abstract arguments, for `rmjax compile` (the loop's from `rmjax.train.loop.plan`).
  score_ids   (encoder, config, messages, response, principles) -> token ids: how the model
              reads one (prompt, response) when scoring; None = the chat-rendered conversation.
  collect     (config, workdir) -> summary: a data-collection step (`rmjax collect`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from rmjax.errors import ConfigError
from rmjax.train.loop import train as loop_train


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  name: str
  make_model: Optional[Callable[..., Any]] = None
  build: Optional[Callable[[Any], Any]] = None
  run: Optional[Callable[[Any, str], dict]] = None
  score_ids: Optional[Callable[..., list]] = None
  collect: Optional[Callable[[Any, str], dict]] = None
  compile_steps: Optional[Callable[[Any, Any], list]] = None

  def __post_init__(self):
    if self.build is None and self.run is None:
      raise ValueError(f"task {self.name!r}: declare build= or run=")

  @property
  def takes_principles(self) -> bool:
    return self.score_ids is not None

  def train(self, config, workdir: str) -> dict:
    """`rmjax train`: the supervised loop over `build(config)`, or the method's own driver."""
    if self.run is not None:
      return self.run(config, workdir)
    return loop_train(config, workdir, self.build(config))

  def require(self, what: str):
    """The declared callable `what` (e.g. 'make_model', 'collect') or a one-line ConfigError."""
    fn = getattr(self, what)
    if fn is None:
      verb = {"make_model": "scores nothing (it trains no reward model)",
              "collect": "has no collect step",
              "compile_steps": "has no abstract train step (declare TaskSpec.compile_steps)"
              }.get(what, f"declares no {what}")
      raise ConfigError(f"task {self.name!r} {verb}")
    return fn
