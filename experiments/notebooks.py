"""Execute the notebooks at smoke size and store their outputs, so a reader sees results on GitHub.

  python -m experiments.notebooks                 # all notebooks, outputs written in place
  python -m experiments.notebooks armorm grm      # some of them
  RMJAX_SMOKE=0 python -m experiments.notebooks   # the full-size runs (slow on CPU)

`execute(name)` is what tests/test_notebooks.py runs (without writing). One switch for all:
`RMJAX_SMOKE` (default 1).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys

import nbformat
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ("armorm", "grm", "inconsistency", "overoptimisation", "ppo_uncertainty", "salmon",
             "uncertainty")


def _kernel_env(smoke: bool) -> dict:
  """The kernel's environment: this process's, plus the smoke switch, offline hub, repo on path."""
  return dict(os.environ, RMJAX_SMOKE="1" if smoke else "0",
              JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"), HF_HUB_OFFLINE="1",
              PYTHONPATH=os.pathsep.join([str(REPO)] + [
                  p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))


def _client(name: str, timeout: int):
  nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
  return nb, NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO)}})


def execute(name: str, smoke: bool = True, timeout: int = 600):
  """The executed notebook `notebooks/<name>.ipynb` (kernel cwd = the repo root)."""
  nb, client = _client(name, timeout)
  client.execute(env=_kernel_env(smoke))
  return nb


def execute_many(names, smoke: bool = True, timeout: int = 600, parallel: int = 2,
                 env: dict | None = None) -> dict:
  """{name: executed notebook, or the exception its run raised}, `parallel` kernels at a time
  (a kernel mostly compiles on one core: two side by side use a second one). `env`: extra
  variables for the kernels (the tests give them a shared JAX compilation cache)."""
  env = dict(_kernel_env(smoke), **(env or {}))

  async def run_all():
    gate = asyncio.Semaphore(parallel)

    async def one(name):
      async with gate:
        nb, client = _client(name, timeout)
        await client.async_execute(env=env)
        return nb
    return await asyncio.gather(*map(one, names), return_exceptions=True)
  return dict(zip(names, asyncio.run(run_all())))


def errors(nb) -> list:
  return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
          if o.get("output_type") == "error"]


def main(names):
  smoke = os.environ.get("RMJAX_SMOKE", "1") != "0"
  for name in names or NOTEBOOKS:
    nb = execute(name, smoke=smoke, timeout=600 if smoke else 7200)  # a full-size cell runs long
    if errors(nb):
      raise SystemExit(f"{name}: a cell failed: {errors(nb)[0].get('ename')}")
    nbformat.write(nb, REPO / "notebooks" / f"{name}.ipynb")
    print(f"executed notebooks/{name}.ipynb ({'smoke' if smoke else 'full'} size)", flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
