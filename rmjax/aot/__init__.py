"""Ahead-of-time compilation for TPU slices that are not attached (the core of `rmjax compile`).

libtpu describes a slice ('v5e:4x4', 2 slices...) as compile-only devices; a function jitted
onto a mesh of them with abstract sharded arguments is compiled by the real TPU compiler on a CPU
host, which tells whether a model/mesh/batch fits in HBM and what one chip would compute.
Needs libtpu (the `tpu` extra) and JAX_PLATFORMS=cpu on hosts without TPUs.
"""

from rmjax.aot.chips import CHIPS, Chip, chip_of
from rmjax.aot.flops import llama_flops, llama_matmul_params
from rmjax.aot.report import compile_function, format_table, oom_summary, write_json
from rmjax.aot.steps import DoesNotFit, Step, batch_structs, check_rows, compile_steps
from rmjax.aot.topology import parse_topology, topology_devices, topology_mesh

__all__ = ["CHIPS", "Chip", "chip_of", "parse_topology", "topology_devices", "topology_mesh",
           "compile_function", "format_table", "write_json", "oom_summary",
           "llama_flops", "llama_matmul_params", "DoesNotFit", "Step", "batch_structs", "check_rows",
           "compile_steps"]
