"""Every notebook runs top to bottom at smoke size (RMJAX_SMOKE=1) and shows its result."""

import pytest

from experiments import notebooks

# a line each notebook prints or a plot it shows when it worked
EXPECTED = {
    "armorm": "gated (T in training)",
    "grm": "ID accuracy",
    "inconsistency": "pairwise disagreement",
    "overoptimisation": "gold credibility",
    "ppo_uncertainty": "risk - vanilla",
    "salmon": "H4 follow(Concise)",
    "uncertainty": "members:",
}
# kernel CPU seconds per notebook at smoke size, measured on one core (only orders the runs:
# the longest first)
COST = {"armorm": 41, "grm": 31, "inconsistency": 26, "overoptimisation": 30,
        "ppo_uncertainty": 53, "salmon": 49, "uncertainty": 12}


@pytest.fixture(scope="module")
def executed(_jax_cache_dir):
  """Every notebook, executed two kernels at a time, the longest first (a kernel mostly
  compiles on one core, so the second core runs the next notebook meanwhile). The kernels share
  the session's persistent JAX compilation cache (conftest): programs several notebooks compile
  alike (the tiny backbone's init, its feature forward at the feature cache's shapes) are
  compiled once."""
  order = sorted(notebooks.NOTEBOOKS, key=lambda n: -COST.get(n, 0))
  cache = {"JAX_COMPILATION_CACHE_DIR": _jax_cache_dir,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.1",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  return notebooks.execute_many(order, parallel=2, env=cache)


# real-data experiments (E-c, E-a, E-b, E-e)
NEEDS_SHARED_DATA = ("armorm", "inconsistency", "overoptimisation", "salmon")


@pytest.mark.parametrize("name", notebooks.NOTEBOOKS)
def test_notebook_executes(name, executed):
  from rmjax.data import shared_data_root  # noqa: PLC0415
  if name in NEEDS_SHARED_DATA and shared_data_root() is None:
    pytest.skip("shared data not found (../shared/data or $RMJAX_SHARED_DATA)")
  nb = executed[name]
  if isinstance(nb, BaseException):
    raise nb
  assert not notebooks.errors(nb)
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  text = "".join(o.get("text", "") for o in outputs) + "".join(
      str(o.get("data", {}).get("text/plain", "")) for o in outputs)
  assert EXPECTED[name] in text
  assert any(o.get("output_type") == "display_data" for o in outputs)  # a plot is shown


def test_committed_notebooks_carry_outputs():
  """A reader sees results without running anything: every code cell that prints or plots has
  stored outputs (refresh with `python -m experiments.notebooks`)."""
  import nbformat  # noqa: PLC0415 -- test-only dependency
  for name in notebooks.NOTEBOOKS:
    nb = nbformat.read(notebooks.REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert sum(bool(c.get("outputs")) for c in code) >= len(code) // 2, name
