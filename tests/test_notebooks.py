"""Every notebook runs top to bottom at smoke size (RMJAX_SMOKE=1) and shows its result."""

import pytest

from experiments import notebooks

# a line each notebook prints or a plot it shows when it worked
EXPECTED = {
    "armorm": "gated (T in training)",
    "grm": "ID accuracy",
    "inconsistency": "pairwise disagreement",
    "overoptimisation": "gold credibility",
    "ppo_uncertainty": "weighted_kl",
    "salmon": "H4 follow(Concise)",
    "uncertainty": "members:",
}
# rough seconds per notebook at smoke size on CPU (only orders the runs: the longest first)
COST = {"grm": 40, "ppo_uncertainty": 36, "salmon": 45, "armorm": 30, "inconsistency": 30,
        "overoptimisation": 60, "uncertainty": 13}


@pytest.fixture(scope="module")
def executed():
  """Every notebook, executed two kernels at a time, the longest first (a kernel mostly
  compiles on one core, so the second core runs the next notebook meanwhile)."""
  order = sorted(notebooks.NOTEBOOKS, key=lambda n: -COST.get(n, 0))
  return notebooks.execute_many(order, parallel=2)


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
