"""What `rmjax compile` compiles: `Step`s a method declares (`TaskSpec.compile_steps`), each the
very function its trainer jits with the same shardings and donation, on abstract arguments.

The supervised loop's step comes from `rmjax.train.loop.plan` (the plan `train` itself runs);
RL and multi-stage methods build theirs from their own trainers. `compile_steps` compiles a
list of them for a slice, prints the table, writes the JSON and raises `DoesNotFit` when any
needs more HBM than a chip has.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from rmjax import sharding as shd
from rmjax.aot.report import compile_function, format_table, write_json
from rmjax.errors import ConfigError, RmjaxError


class DoesNotFit(RmjaxError):
  """A compiled function needs more HBM per chip than the slice has (one line, exit 2)."""


@dataclasses.dataclass
class Step:
  """One function to compile: `fn(*args)` jitted with these shardings and donation."""
  name: str
  fn: Callable
  args: tuple
  in_shardings: Any
  out_shardings: Any
  donate_argnums: tuple = ()
  model_flops: Optional[float] = None


def check_rows(rows: int, mesh, what: str) -> None:
  """A batch of `rows` must split over the mesh's batch axes (config key `what` named)."""
  div = shd.batch_divisor(mesh)
  if rows % div:
    raise ConfigError(f"{what}={rows} does not split over the mesh's batch axes "
                      f"(data x fsdp = {div}); use a multiple of {div}")


def batch_structs(spec: dict, sharding) -> dict:
  """{key: (shape, dtype)} -> {key: ShapeDtypeStruct with `sharding`}."""
  return {k: jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dt), sharding=sharding)
          for k, (shape, dt) in spec.items()}


def compile_steps(steps: list, mesh, chip, settings: dict, out: str) -> list:
  """Compile every step on `mesh` for `chip`; rows (each with `settings`) printed as a table
  and written to the JSON file `out`; `DoesNotFit` (after both) when any does not fit."""
  rows = []
  where = f"{settings.get('topology', chip)} x{settings.get('num_slices', 1)}"
  for s in steps:
    print(f"[compile] {s.name} for {where} ...", flush=True)
    row = compile_function(s.name, s.fn, s.args, s.in_shardings, s.out_shardings, mesh, chip,
                           donate_argnums=s.donate_argnums, model_flops=s.model_flops)
    rows.append(dict(row, **settings))
  print(format_table(rows))
  print(f"results: {write_json(rows, out)}")
  bad = [r for r in rows if not r["fits"]]
  if bad:
    r = bad[0]
    gib = lambda x: "?" if x is None else f"{x / (1 << 30):.2f}G"  # noqa: E731
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    raise DoesNotFit(f"{r['function']}{more} does not fit {where} "
                     f"({r['chips']} chips, mesh {r['mesh']}): needs {gib(r['total_bytes'])} of "
                     f"{gib(r['hbm_available_bytes'] or r['hbm_bytes'])} HBM per chip "
                     f"[{(r['error'] or '')[:200]}]")
  return rows
