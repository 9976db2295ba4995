"""The package layout: no import circles, no import from a lower layer to a higher one,
intra-package imports at module top (unless a comment on the line says why), small files."""

import ast
import pathlib
import re

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "rmjax"

# Layers, lowest first: a module may import its own layer or lower ones only.
LAYERS = [
    {"errors", "losses", "lm_losses", "client"},
    {"models", "data", "checkpoints", "sharding", "eval", "aot"},
    {"rl", "inference", "train", "sweep"},
    {"tasks"},
    {"launch", "main", "__main__", "commands"},
]


def _modules():
  for path in sorted(PKG.rglob("*.py")):
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    yield ".".join(parts), path


def _layer(module: str) -> int:
  top = module.split(".")[1] if "." in module else "__init__"
  for i, names in enumerate(LAYERS):
    if top in names:
      return i
  return 0 if top == "__init__" else -1


def _imports(path: pathlib.Path):
  """(imported rmjax module, line, at module top?) for every import in the file."""
  tree = ast.parse(path.read_text())
  top_level = {id(n) for n in tree.body}
  lines = path.read_text().splitlines()
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    for name in names:
      if name == "rmjax" or name.startswith("rmjax."):
        yield name, node.lineno, id(node) in top_level or "#" in lines[node.lineno - 1]


def _known(name, modules):
  while name and name not in modules:
    name = name.rpartition(".")[0]
  return name


def test_no_upward_imports_and_imports_at_top():
  modules = dict(_modules())
  bad = []
  for mod, path in modules.items():
    for name, line, at_top in _imports(path):
      target = _known(name, modules)
      if not target or target == "rmjax":
        continue
      if _layer(target) > _layer(mod):
        bad.append(f"{path.name}:{line} {mod} -> {target} (upward)")
      if not at_top:
        bad.append(f"{path.name}:{line} {mod} -> {target} (inside a function, no comment why)")
  assert not bad, "\n".join(bad)


def test_no_import_circles():
  modules = dict(_modules())
  graph = {m: set() for m in modules}
  for mod, path in modules.items():
    for name, _, at_top in _imports(path):
      target = _known(name, modules)
      if target and target != mod and target != "rmjax" and not mod.startswith(target + "."):
        graph[mod].add(target)
  state, stack, cycles = {}, [], []

  def visit(m):
    state[m] = 1
    stack.append(m)
    for n in graph[m]:
      if state.get(n) == 1:
        cycles.append(stack[stack.index(n):] + [n])
      elif n not in state:
        visit(n)
    stack.pop()
    state[m] = 2
  for m in graph:
    if m not in state:
      visit(m)
  assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_commands_import_no_train_module():
  """The commands reach training and scoring through the task layer (`rmjax.tasks.runs`), so
  train/ stays an implementation the tasks own; every import counts, lazy ones too."""
  modules = dict(_modules())
  bad = [f"{path.name}:{line} {mod} -> {name}" for mod, path in modules.items()
         if mod.startswith("rmjax.commands") for name, line, _ in _imports(path)
         if name == "rmjax.train" or name.startswith("rmjax.train.")]
  assert not bad, "\n".join(bad)


def test_task_registry_imports_no_scorer():
  """`rmjax.tasks` (the registry) imports no scorer when it is imported: `load_scorer` lives in
  `rmjax.tasks.runs`."""
  tree = ast.parse((PKG / "tasks" / "__init__.py").read_text())
  names = [n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module]
  names += [a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names]
  bad = [m for m in names if m.startswith("rmjax.inference") or m == "rmjax.tasks.runs"]
  assert not bad, bad


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_files_stay_small(path):
  assert len(path.read_text().splitlines()) <= 420, f"{path}: split it by what it holds"


def test_test_helpers_are_imported_by_module_name():
  """tests/ is not a package: its helpers are imported as `_cli` / `_util` (conftest puts this
  directory on sys.path). `from tests._cli import ...` breaks wherever a distribution installs a
  top-level `tests` package into site-packages, as openrlhf 0.11.2 (installed for the remote-RM
  client test) does: collection then fails with ModuleNotFoundError."""
  tests_dir = pathlib.Path(__file__).resolve().parent
  bad = [f"{p.name}:{i}" for p in sorted(tests_dir.glob("*.py"))
         for i, line in enumerate(p.read_text().splitlines(), 1)
         if re.match(r"\s*(from|import)\s+tests(\.|\s|$)", line)]
  assert not bad, f"import test helpers by module name (from _cli import ...): {bad}"
