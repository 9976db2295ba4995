"""The `rmjax` process entry point: process-level settings that must exist before Python starts,
then the command line (`rmjax.main`).

XLA:CPU allocates each step's temporaries afresh, and glibc serves those large blocks with new
mmaps, so every step page-faults all of its activation memory in 4 KiB pages (a 113 MB buffer:
27,649 minor faults per call). `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` makes glibc advise
transparent huge pages for them (55 faults per call for the same buffer): the SmolLM2 train step
used ~10% less CPU time (experiments/benchmarks/RESULTS.md). glibc reads the tunable only at
process start, so the launcher re-executes itself once with it set; `RMJAX_NO_REEXEC=1` (or a
GLIBC_TUNABLES the user set) leaves the process alone.
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"


def tuned_environ(environ=None) -> dict | None:
  """The environment to re-execute with, or None when nothing needs to change."""
  env = dict(os.environ if environ is None else environ)
  if (not sys.platform.startswith("linux") or env.get("RMJAX_NO_REEXEC")
      or "GLIBC_TUNABLES" in env):
    return None
  env["GLIBC_TUNABLES"] = TUNABLE
  return env


def reexec_tuned(module: str) -> None:
  """Re-executes `python -m <module> <args>` with the tuned environment, once; returns when
  nothing needs to change or the re-exec is impossible. Benchmarks call it too, so that they
  measure what `rmjax train` runs."""
  env = tuned_environ()
  if env is None:
    return
  try:
    os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], env)
  except OSError:
    pass  # cannot re-exec (unusual interpreters): run as is


def run():
  """Console-script and `python -m rmjax` entry: re-exec once with the tunable, then run."""
  reexec_tuned("rmjax")
  from rmjax.main import run as main_run  # noqa: PLC0415 (after the re-exec decision)
  main_run()


if __name__ == "__main__":  # `python -m rmjax.launch`: the tunable this process runs with
  reexec_tuned("rmjax.launch")
  print(os.environ.get("GLIBC_TUNABLES", ""))
