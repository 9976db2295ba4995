"""How `rmjax serve` runs its forwards: the planner that picks the next forward over the queued
rows (`plan`), the batch sizes and lengths it may use, and the per-shape forward cost timed at
warm-up and fitted (`ForwardCost`, `warm_up`). Split from `rmjax.inference.server` (the ASGI app
and its request batcher), which re-exports these names."""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import numpy as np

from rmjax import sharding as shd
from rmjax.inference.embed import MIN_BUCKET, bucket_length


def token_slots(batch: int, length: int) -> float:
  """The default forward cost: padded tokens."""
  return float(batch * length)


def plan(buckets: Sequence[int], sizes: Sequence[int], cost=token_slots) -> tuple[list[int], int]:
  """The next forward over queued rows, given their padded lengths (`bucket_length`, oldest row
  first): (indices of the rows it runs, sorted; its batch size). It always holds the oldest row
  (no row waits behind younger ones for ever), and of the batch sizes and lengths it could run is
  the one doing the most useful work per `cost(batch, length)`: a row's useful work is what it
  costs in a full batch of its own length (what offline scoring of length-sorted rows pays), so a
  half-empty batch and a short row padded to a long one's length both count as waste. It takes
  the longest rows that fit (shorter ones are left for a shorter forward), oldest first within a
  length; of equally good forwards, the one running more rows."""
  full = sizes[-1]
  by_length: dict[int, list[int]] = {}
  for i, length in enumerate(buckets):
    by_length.setdefault(length, []).append(i)
  own = {length: cost(full, length) / full for length in by_length}
  best = None
  for top in sorted(length for length in by_length if length >= buckets[0]):
    take = [0]
    for length in sorted((l for l in by_length if l <= top), reverse=True):
      take += [i for i in by_length[length][:full + 1] if i != 0][:full - len(take)]
      if len(take) == full:
        break
    for b in sizes:
      rows = take[:b]
      value = sum(own[buckets[i]] for i in rows) / cost(b, max(buckets[i] for i in rows))
      if best is None or value > best[0] * (1 + 1e-9) or (
          value >= best[0] * (1 - 1e-9) and len(rows) > len(best[1])):
        best = (value, rows, b)
  return sorted(best[1]), best[2]


def batch_sizes(scorer) -> list[int]:
  """The forward's batch sizes: powers of two from the mesh's batch divisor up to the scorer's
  batch size, so a forward of a few rows (low concurrency) is not padded to a full batch."""
  div = shd.batch_divisor(scorer.mesh)
  full = max(div, scorer.batch_size - scorer.batch_size % div)
  sizes, b = [], div
  while b < full:
    sizes.append(b)
    b *= 2
  return sizes + [full]


def warm_lengths(max_length: int) -> list[int]:
  """One row length per padded bucket a request can reach (every compiled shape)."""
  top, lengths, b = bucket_length(max_length), [], MIN_BUCKET
  while b <= top:
    lengths.append(min(b, max_length))
    b *= 2
  return lengths


@dataclasses.dataclass(frozen=True)
class ForwardCost:
  """Seconds of one forward of `batch` rows padded to `length`: per_forward + per_token x
  batch x length + per_token_length x batch x length^2 (fitted to the warm-up's timings, every
  coefficient >= 0, so a larger batch or length never costs less)."""
  per_forward: float = 0.0
  per_token: float = 1.0
  per_token_length: float = 0.0

  def __call__(self, batch: int, length: int) -> float:
    return self.per_forward + batch * length * (self.per_token + length * self.per_token_length)

  @classmethod
  def fit(cls, timings: dict) -> "ForwardCost":
    """From {(batch, length): seconds}; the token count alone where the fit says nothing."""
    from scipy.optimize import nnls  # noqa: PLC0415 -- a jax dependency

    if not timings:
      return cls()
    keys = sorted(timings)
    design = np.asarray([[1.0, b * n, b * n * n] for b, n in keys])
    scale = design.max(0)
    coef = nnls(design / scale, np.asarray([timings[k] for k in keys], float))[0] / scale
    return cls(*map(float, coef)) if coef[1:].any() else cls()


def warm_up(scorer) -> tuple[list[str], ForwardCost]:
  """Compiles the forward for every batch size and length bucket before serving, then times each
  once: (the output keys, the forward's cost model for `plan`)."""
  token = getattr(scorer.tokenizer, "eos_token_id", None) or 1
  out, timings = {}, {}
  for b in batch_sizes(scorer):
    for n in warm_lengths(scorer.encoder.max_length):
      rows = [[int(token)] * n] * b
      out = scorer.score_rows(rows, batch_size=b)
      start = time.perf_counter()
      scorer.score_rows(rows, batch_size=b)
      timings[(b, bucket_length(n))] = time.perf_counter() - start
  return sorted(out), ForwardCost.fit(timings)
