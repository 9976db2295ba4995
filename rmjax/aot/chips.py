"""Public per-chip figures of the TPU generations that `rmjax.aot` compiles for.

Sources (Google Cloud TPU system-architecture pages, "key specifications" tables):
  v4:  https://cloud.google.com/tpu/docs/v4   275 TFLOP/s bf16, 32 GiB HBM2, 1200 GB/s
  v5e: https://cloud.google.com/tpu/docs/v5e  197 TFLOP/s bf16, 16 GB HBM2, 819 GB/s
  v5p: https://cloud.google.com/tpu/docs/v5p  459 TFLOP/s bf16, 95 GB HBM2e, 2765 GB/s
  v6e: https://cloud.google.com/tpu/docs/v6e  918 TFLOP/s bf16, 32 GB HBM, 1638 GB/s
HBM is physically GiB-sized (the pages' "GB" are GiB); the compiler keeps a little for itself
(v5e: it reports 15.75 GiB available), so `fits` is always the compiler's verdict, not a
comparison with these numbers. v4 and v5p have two TensorCores per chip, compiled as one
'megacore' device, so one JAX device is one chip for every entry here.
"""

from __future__ import annotations

import dataclasses

from rmjax.errors import ConfigError

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str               # 'v5e'
  hbm_bytes: int          # HBM per chip
  peak_bf16_flops: float  # peak dense bf16 FLOP/s per chip
  hbm_bandwidth: float    # HBM bytes/s per chip
  dims: int               # 2 (2D torus: 'v5e:4x4') or 3 (3D: 'v5p:2x2x1')
  libtpu_prefix: str      # generation name libtpu's topology strings use
  chip_config: str        # libtpu chip_config_name: 'default' or 'megacore'


CHIPS: dict = {
    "v4": Chip("v4", 32 * GiB, 275e12, 1200e9, 3, "v4", "megacore"),
    "v5e": Chip("v5e", 16 * GiB, 197e12, 819e9, 2, "v5e", "default"),
    "v5p": Chip("v5p", 95 * GiB, 459e12, 2765e9, 3, "v5", "megacore"),
    "v6e": Chip("v6e", 32 * GiB, 918e12, 1638e9, 2, "v6e", "default"),
}
# other spellings of the generation in topology / accelerator-type names
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v5": "v5p", "v6": "v6e", "trillium": "v6e"}


def chip_of(name: str) -> Chip:
  """The Chip of a generation or topology name: 'v5e', 'v5e:4x4', 'v5litepod-16', 'v5p:2x2x1'."""
  if isinstance(name, Chip):
    return name
  gen = str(name).strip().lower()
  for sep in (":", "-", "_", "="):
    gen = gen.split(sep)[0]
  gen = ALIASES.get(gen, gen)
  if gen not in CHIPS:
    raise ConfigError(f"unknown TPU generation in {name!r}: expected one of {', '.join(CHIPS)} "
                      f"(e.g. 'v5e:4x4', 'v5p:2x2x1')")
  return CHIPS[gen]
