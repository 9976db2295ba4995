"""Packed pair batches: many sequences per row instead of one padded sequence per row.

A padded pair batch pads chosen and rejected of every pair to the longest sequence's bucket; on
a wide length distribution (hh-rlhf) most of a step's tokens are padding. `pack_batch` takes the
pairs of a padded batch (the same pairs, in the same order, so a packed run sees exactly the
data of a padded run and resumes the same way) and places each pair's chosen then rejected
sequence side by side in one row (a pair is never split across rows), first-fit decreasing.

With `share_prompt` (`data.share_prompt`), a pair's prompt is laid out ONCE, followed by the
chosen response and then the rejected response; both responses see the prompt as their shared
prefix (and not each other: `rmjax.models.attention`), and the rejected response's positions
continue from the prompt's end. Each response then sees exactly the context it has in its own
padded row, so rewards and losses equal the padded ones, while the prompt's tokens are computed
once instead of twice (on hh-rlhf at max_length 256 that is 1.47x fewer tokens before any
padding is removed). chosen and rejected share their prompt's token ids by construction
(`rmjax.data.tokenize.truncate` cuts one prompt for both).

Packed batch (numpy; R rows of `row_length` tokens, B = the padded batch's pair count):
  input_ids     int32 [R, L]   sequences back to back, pad id after the last one
  segment_ids   int32 [R, L]   0 on padding, k >= 1 for the k-th segment of the row
  positions     int32 [R, L]   each token's position in its own sequence (0 on padding)
  chosen_at     int32 [B, 2]   (row, column) of each pair's chosen LAST token: its reward
  rejected_at   int32 [B, 2]   the same for rejected
  chosen_len, rejected_len  int32 [B]  sequence lengths (prompt + response; LM regularisers)
  prompt_len, margin, weight, index   as in the padded batch ([B]); weight-0 filler pairs are
                                      not packed and point at (0, 0)
  and with share_prompt:
  prefix_ids    int32 [R, L]   the prompt's segment id on response tokens (0 elsewhere)
  prompt_at     int32 [B, 2]   (row, column) of each pair's last prompt token: the logits that
                               score both responses' first tokens (GRM's LM regularisers)
Shapes (R, L) come from a small fixed set, so a run compiles a handful of train steps and its
first steps do not pay a compile per new batch (`ladder=True`, `data.pack_ladder`, the default):
R is `row_multiple` x a power of two (1, 2, 4, 8, ... row multiples: rows that divide the mesh's
batch axes) and L is `row_length` or, with `length_multiple` (`data.pack_length_multiple`), one
of `row_lengths(row_length, length_multiple)` = {row_length / 2, 3/4 x row_length, row_length}
rounded up to the multiple; per batch the (R, L) of that set with the fewest tokens R x L
(ties: longer rows) that first-fit packs every pair into. `shape_ladder` lists the whole set:
at most 3 x (log2(pairs per batch) + 1) shapes (12 for 8 pairs), of which an hh-rlhf epoch in
batches of 8 pairs at max_length 256 (row_length 768, prompt-shared) uses 4, 2 of them in its
first 10 batches, with 77% of its computed tokens real (2.70M; the exact shapes below: 10
shapes, 3 in the first 10, 89%, 2.35M; the former default, exact shapes in rows of 2 x
max_length: 12 shapes, 5 in the first 10, 82%, 2.54M; `experiments.benchmarks.packing`'s
`epoch`).
`ladder=False` keeps the exact fewest-token shape of every batch (R any multiple of
`row_multiple`, L any multiple of `length_multiple` up to `row_length`): fewer padding tokens,
one compiled program per new (R, L). Every pair is always packed (the set's largest R holds one
pair per row); the shape changes only padding, never which pairs a batch holds, so losses,
gradients and the resume position are those of the padded batches. Positions restart at every
segment (`Llama` derives them).
"""

from __future__ import annotations

import numpy as np

from rmjax.data.batching import MappedBatches

PACKED_KEYS = ("input_ids", "segment_ids", "positions", "chosen_at", "rejected_at")
DEFAULT_PACK_FACTOR = 3  # data.pack_length = 0: rows of 3 x max_length (a pair fits in 2 x)


def _first_fit(lengths, row_length):
  """Row per item (first-fit decreasing) and the row count; items must fit a row."""
  order = np.argsort(-np.asarray(lengths), kind="stable")
  free, rows = [], np.zeros(len(lengths), np.int64)
  for i in order:
    row = next((r for r, room in enumerate(free) if room >= lengths[i]), None)
    if row is None:
      free.append(row_length)
      row = len(free) - 1
    free[row] -= lengths[i]
    rows[i] = row
  return rows, len(free)


def _pieces(chosen, rejected, prompt_len: int, share_prompt: bool):
  """The segments of one pair in row order: [(tokens, first position, prefix piece or None,
  'chosen' | 'rejected' | None = whose last token is this piece's end)]."""
  if not share_prompt or prompt_len == 0:  # no prompt to share: two plain sequences
    return [(chosen, 0, None, "chosen"), (rejected, 0, None, "rejected")]
  p = prompt_len
  return [(chosen[:p], 0, None, None), (chosen[p:], p, 0, "chosen"), (rejected[p:], p, 0, "rejected")]


def _round_up(n: int, multiple: int) -> int:
  return -(-max(int(n), 1) // multiple) * multiple


LADDER_FRACTIONS = (2, 3, 4)  # ladder row lengths: these quarters of row_length


def row_lengths(row_length: int, length_multiple: int, ladder: bool = True, longest: int = 1):
  """The row lengths a batch may get, longest first: `row_length` alone without
  `length_multiple`; with it, the ladder's {1/2, 3/4, 1} x row_length rounded up to the multiple
  (`ladder`) or every multiple up to row_length; only those >= `longest` (a pair must fit)."""
  if not length_multiple:
    return [row_length]
  if ladder:
    sizes = {min(_round_up(row_length * q // 4, length_multiple), row_length)
             for q in LADDER_FRACTIONS}
  else:
    sizes = {*range(_round_up(longest, length_multiple), row_length, length_multiple), row_length}
  return sorted((s for s in sizes if s >= longest), reverse=True) or [row_length]


def row_count(n_rows: int, row_multiple: int, ladder: bool = True) -> int:
  """Rows of a packed batch that needs `n_rows`: the next multiple of `row_multiple`, or with
  `ladder` the next row_multiple x 2^k."""
  units = -(-max(n_rows, 1) // row_multiple)
  if ladder:
    units = 1 << (units - 1).bit_length()
  return units * row_multiple


def shape_ladder(pairs: int, row_length: int, row_multiple: int = 1, length_multiple: int = 0) -> list:
  """Every (R, L) a ladder-packed batch of at most `pairs` pairs can get (see the module
  docstring): 3 x (log2(pairs) + 1) shapes at most."""
  rows = sorted({row_count(n, row_multiple) for n in range(1, max(pairs, 1) + 1)})
  return [(r, l) for r in rows for l in sorted(row_lengths(row_length, length_multiple))]


def _row_shape(lengths, row_length: int, row_multiple: int, length_multiple: int,
               ladder: bool = True):
  """(row of each item, row count R, row length L) with the fewest tokens R x L (ties: longer
  rows) over the allowed shapes (`row_lengths`, `row_count`)."""
  best = None
  for size in row_lengths(row_length, length_multiple, ladder, max(lengths, default=1)):
    rows_of, n_rows = _first_fit(lengths, size)
    n_rows = row_count(n_rows, row_multiple, ladder)
    if best is None or n_rows * size < best[1] * best[2]:
      best = (rows_of, n_rows, size)
  return best


def pack_batch(batch: dict, data, row_length: int, row_multiple: int = 1,
               share_prompt: bool = False, length_multiple: int = 0, ladder: bool = True) -> dict:
  """The packed form of a padded pair batch (see the module docstring). `data`:
  `TokenizedPairs` the batch's 'index' refers to; `ladder`: shapes from the fixed set
  (`shape_ladder`), else each batch's exact fewest-token shape."""
  idx, weight = np.asarray(batch["index"]), np.asarray(batch["weight"])
  live = [i for i in range(len(idx)) if weight[i] > 0]
  pieces = {i: _pieces(data.chosen[idx[i]], data.rejected[idx[i]], int(data.prompt_len[idx[i]]),
                       share_prompt) for i in live}
  lengths = [sum(len(t) for t, *_ in pieces[i]) for i in live]
  if lengths and max(lengths) > row_length:
    raise ValueError(f"a pair of {max(lengths)} tokens does not fit a packed row of {row_length}; "
                     f"set data.pack_length >= 2 * data.max_length")
  rows_of, n_rows, row_length = _row_shape(lengths, row_length, row_multiple, length_multiple,
                                           ladder)
  ids = np.full((n_rows, row_length), data.pad_id, np.int32)
  seg, pos, pre = (np.zeros((n_rows, row_length), np.int32) for _ in range(3))
  fill = np.zeros(n_rows, np.int64)
  n_seg = np.zeros(n_rows, np.int64)
  n = len(idx)
  at = {"chosen_at": np.zeros((n, 2), np.int32), "rejected_at": np.zeros((n, 2), np.int32),
        "chosen_len": np.zeros(n, np.int32), "rejected_len": np.zeros(n, np.int32)}
  prompt_at = np.zeros((n, 2), np.int32)
  for slot, i in enumerate(live):
    row = rows_of[slot]
    first_seg, last_col = n_seg[row] + 1, {}
    for k, (toks, pos0, prefix, side) in enumerate(pieces[i]):
      start, n_seg[row] = fill[row], n_seg[row] + 1
      end = start + len(toks)
      ids[row, start:end] = toks
      seg[row, start:end] = n_seg[row]
      pos[row, start:end] = np.arange(pos0, pos0 + len(toks))
      if prefix is not None:
        pre[row, start:end] = first_seg + prefix
      fill[row] = end
      last_col[k] = end - 1 if len(toks) else last_col.get(prefix, start - 1)
      if side is not None:
        at[f"{side}_at"][i] = (row, last_col[k])
    if share_prompt:  # (-1, -1): this pair was laid out unshared (no prompt tokens)
      prompt_at[i] = (row, last_col[0]) if len(pieces[i]) == 3 else (-1, -1)
    at["chosen_len"][i] = len(data.chosen[idx[i]])
    at["rejected_len"][i] = len(data.rejected[idx[i]])
  out = {k: v for k, v in batch.items() if not k.endswith(("_ids", "_mask"))}
  out.update(input_ids=ids, segment_ids=seg, positions=pos, **at)
  if share_prompt:
    out.update(prefix_ids=pre, prompt_at=prompt_at)
  return out


PAIR_AT_KEYS = ("chosen_at", "rejected_at", "prompt_at")


def as_process_block(packed: dict, rows: int, block: int, pad_id: int = 0,
                     length: int | None = None) -> dict:
  """One process's packed batch as block `block` of a global batch of equal blocks of `rows`
  rows of `length` tokens (default: its own): padding rows and columns appended, and the
  (row, column) pointers moved to global row numbers (a pair's rows live in its own process's
  block; (-1, -1) pointers stay)."""
  out = dict(packed)
  have_rows, have_length = packed["input_ids"].shape
  length = have_length if length is None else length
  if rows < have_rows or length < have_length:
    raise ValueError(f"a block of {have_rows} x {have_length} tokens does not fit {rows} x {length}")
  for key in ("input_ids", "segment_ids", "positions", "prefix_ids"):
    if key in packed:
      fill = pad_id if key == "input_ids" else 0
      out[key] = np.pad(packed[key], [(0, rows - have_rows), (0, length - have_length)],
                        constant_values=fill)
  for key in PAIR_AT_KEYS:
    if key in packed:
      at = packed[key].copy()
      at[:, 0] = np.where(at[:, 0] >= 0, at[:, 0] + block * rows, at[:, 0])
      out[key] = at
  return out


def max_over_processes(shape: tuple) -> tuple:
  """The elementwise largest `shape` (a tuple of ints) of all processes (every process calls
  it in the same order)."""
  import jax  # noqa: PLC0415 -- multi-process only: data/ stays importable without a backend
  from jax.experimental import multihost_utils  # noqa: PLC0415 -- same
  if jax.process_count() == 1:
    return tuple(shape)
  gathered = multihost_utils.process_allgather(np.asarray(shape, np.int64))
  return tuple(int(n) for n in np.max(gathered.reshape(-1, len(shape)), axis=0))


class PackedBatches(MappedBatches):
  """A pair batcher whose batches are packed (same pairs, order and position state as the
  wrapped `PairBatcher`: resuming is exact).

  Several processes (`block` = this process's (index, count) of the batch, as
  `rmjax.sharding.batch_shard` gives it): each packs its own pairs, the processes agree on the
  row count (the largest, through `agree`) and each pads to it and points its pairs at its
  block's global rows (`as_process_block`), so the global batch is the processes' blocks side
  by side. `row_multiple` is then per block, and the row length is the longest any process
  chose (`length_multiple`); with `ladder` the agreed shape is still in the set (the largest of
  ladder row counts and row lengths is one of them)."""

  def __init__(self, batcher, row_length: int, row_multiple: int = 1, share_prompt: bool = False,
               block: tuple = (0, 1), agree=max_over_processes, length_multiple: int = 0,
               ladder: bool = True):
    self.row_length, self.row_multiple = row_length, row_multiple
    self.share_prompt, self.block, self.agree = share_prompt, block, agree
    self.length_multiple, self.ladder = length_multiple, ladder
    super().__init__(batcher, self._pack)

  def _pack(self, batch):
    packed = pack_batch(batch, self.batcher.data, self.row_length, self.row_multiple,
                        self.share_prompt, self.length_multiple, self.ladder)
    index, count = self.block
    if count == 1:
      return packed
    rows, length = self.agree(packed["input_ids"].shape)
    return as_process_block(packed, rows, index, self.batcher.data.pad_id, length)
