"""A task run in a workdir, as the commands use it: train a config into one (the up-front checks,
one writer, `--overwrite` staging) and load a trained reward model to score with. The commands
reach `rmjax.train` and the scorer only through here (tests/test_layout.py)."""

from __future__ import annotations

import os
import shutil

import jax

from rmjax import sharding
from rmjax.checkpoints.workdir import read_config
from rmjax.errors import CheckpointError, ConfigError
from rmjax.inference.scorer import Scorer
from rmjax.tasks import get
from rmjax.train import run as train_run
from rmjax.train.lock import WorkdirLock
from rmjax.train.run import all_finite, check_workdir
from rmjax.train.validate import check_workdir_writable, validate_config  # noqa: F401 (commands)


def staging_dir(workdir: str) -> str:
  """Where `overwrite` trains until the new run is done (a rerun resumes there)."""
  return os.path.abspath(workdir).rstrip("/") + ".overwrite"


def train(config, workdir: str, *, overwrite: bool = False, strict: bool = False,
          distributed: dict | None = None) -> dict:
  """`config`'s task trained (or resumed) in `workdir`; its final metrics. Refused up front: an
  unwritable workdir, or one holding another method's or model's run unless `overwrite` (then
  the run trains in `staging_dir(workdir)` and replaces it when done). `strict`: a dropped or
  truncated record fails the run. `distributed`: `sharding.maybe_initialize_distributed`'s
  arguments, applied after those checks, before process 0 takes the workdir lock."""
  train_run.STRICT = strict
  spec = get(config.task)
  check_workdir_writable(workdir)
  replace = False
  try:
    check_workdir(config, workdir)
  except ConfigError:
    if not overwrite:
      raise
    replace = True
  sharding.maybe_initialize_distributed(**(distributed or {}))
  with WorkdirLock(workdir, enabled=jax.process_index() == 0):
    target = workdir
    if replace:  # the old run stays untouched until the new one has finished in a staging folder
      target = staging_dir(workdir)
      try:
        check_workdir(config, target)  # a staged run of this config resumes; of another, restarts
      except ConfigError:
        shutil.rmtree(target)
      print(f"--overwrite: training in {target}; it replaces {workdir} when done", flush=True)
    final = spec.train(config, target)
    if target != workdir and jax.process_index() == 0:  # swap in, then remove the old run
      old = os.path.abspath(workdir).rstrip("/") + f".old-{os.getpid()}"
      os.replace(workdir, old)
      os.replace(target, workdir)
      shutil.rmtree(old, ignore_errors=True)
  return final


def load_scorer(source: str, step=None, *, config=None, finite: bool = False, **kw) -> Scorer:
  """A reward model ready to score: trained in the workdir `source` (its task looked up from
  its config.json, or from `config` when the caller has read it already), or an HF reward model
  for `source` = 'hf:DIR' (no workdir, no steps). `finite`: refuse parameters that are not all
  finite (a diverged run's weights would score NaN). `kw`: `Scorer`'s batch_size, max_length."""
  if isinstance(source, str) and source.startswith("hf:"):
    if step is not None:
      raise ConfigError(f"--step selects a workdir checkpoint; {source} has none")
    scorer = Scorer.from_hf(source[3:], **kw)
  else:
    config = read_config(source) if config is None else config
    scorer = Scorer(source, get(config.task), step=step, config=config, **kw)
  if finite and not bool(all_finite(getattr(scorer, "params", {}))):
    raise CheckpointError(f"{source}: step {scorer.step} holds non-finite parameters (a diverged "
                          f"run?); refusing to score with it")
  return scorer
