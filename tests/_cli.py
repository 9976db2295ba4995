"""Run the `rmjax` CLI in this process: `run_cli(argv) -> (exit code, stdout, stderr)`.

A subprocess costs seconds of jax import per call; this goes through the same entry point
(`rmjax.main.run`: flag parsing, dispatch, the one-line error handler) with absl's flags reset
between calls, so a test suite can try dozens of command lines quickly. A few tests still use a
real subprocess (`run_subprocess`) to prove the installed entry point behaves the same.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import subprocess
import sys

from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[1]


def _reset_flags() -> None:
  fv = flags.FLAGS
  fv.unparse_flags()
  for name in list(fv):  # --config.* overrides registered by an earlier parse
    if name.startswith("config."):
      delattr(fv, name)


def run_cli(argv, env: dict | None = None) -> tuple[int, str, str]:
  """`rmjax <argv...>` in-process: (exit code, stdout, stderr)."""
  from rmjax import main as rmjax_main  # noqa: PLC0415 -- imports jax; only tests that run it
  argv = ["rmjax", *map(str, argv)]
  out, err = io.StringIO(), io.StringIO()
  old_argv, old_env = sys.argv, dict(os.environ)
  _reset_flags()
  sys.argv = argv
  os.environ.update(env or {})
  code = 0
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      try:
        rmjax_main.run()
      except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  finally:
    sys.argv = old_argv
    os.environ.clear()
    os.environ.update(old_env)
    _reset_flags()
  return code, out.getvalue(), err.getvalue()


def run_subprocesses(*argvs, timeout: int = 300) -> list[tuple[int, str, str]]:
  """`python -m rmjax <argv...>` as real processes, run side by side: [(exit code, stdout,
  stderr)] in the order given."""
  procs = [subprocess.Popen([sys.executable, "-m", "rmjax", *map(str, argv)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for argv in argvs]
  outs = [p.communicate(timeout=timeout) for p in procs]
  return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


def run_subprocess(argv, timeout: int = 300) -> tuple[int, str, str]:
  """`python -m rmjax <argv...>` as a real process: (exit code, stdout, stderr)."""
  return run_subprocesses(argv, timeout=timeout)[0]
