"""The process entry point (rmjax/launch.py): `rmjax` re-executes itself once with glibc's
transparent-huge-page tunable, and leaves a user's own GLIBC_TUNABLES or RMJAX_NO_REEXEC alone."""

import os
import subprocess
import sys

import pytest

from rmjax import launch


def test_tuned_environ_sets_the_tunable_once():
  env = launch.tuned_environ({"PATH": "/bin"})
  assert env == {"PATH": "/bin", "GLIBC_TUNABLES": launch.TUNABLE}
  assert launch.tuned_environ(env) is None  # the re-executed process does not loop
  assert launch.tuned_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) is None
  assert launch.tuned_environ({"RMJAX_NO_REEXEC": "1"}) is None


def test_run_reexecs_python_m_rmjax_with_the_same_arguments(monkeypatch):
  calls = []
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
  monkeypatch.delenv("RMJAX_NO_REEXEC", raising=False)
  monkeypatch.setattr(sys, "argv", ["rmjax", "train", "--config.train.steps=3"])
  monkeypatch.setattr(os, "execve", lambda exe, argv, env: calls.append((exe, argv, env)))
  monkeypatch.setattr("rmjax.main.run", lambda: calls.append("main"))
  launch.run()
  exe, argv, env = calls[0]
  assert (exe, argv) == (sys.executable, [sys.executable, "-m", "rmjax", "train",
                                          "--config.train.steps=3"])
  assert env["GLIBC_TUNABLES"] == launch.TUNABLE
  assert calls[1] == "main"  # (a real execve never returns)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunable: Linux only")
def test_a_real_process_reexecs_under_the_tunable():
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "RMJAX_NO_REEXEC")}
  run = lambda env: subprocess.run([sys.executable, "-m", "rmjax.launch"], env=env,  # noqa: E731
                                   capture_output=True, text=True, timeout=120)
  out = run(env)
  assert out.returncode == 0 and out.stdout.strip() == launch.TUNABLE, out.stderr
  assert run(dict(env, RMJAX_NO_REEXEC="1")).stdout.strip() == ""
