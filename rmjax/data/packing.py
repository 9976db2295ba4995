"""Packed pair batches: many sequences per row instead of one padded sequence per row.

A padded pair batch pads chosen and rejected of every pair to the longest sequence's bucket; on
a wide length distribution (hh-rlhf) most of a step's tokens are padding. `pack_batch` takes the
pairs of a padded batch (the same pairs, in the same order, so a packed run sees exactly the
data of a padded run and resumes the same way) and places each pair's chosen then rejected
sequence side by side in one row (a pair is never split across rows), first-fit decreasing.

Packed batch (numpy; R rows of `row_length` tokens, B = the padded batch's pair count):
  input_ids     int32 [R, L]   sequences back to back, pad id after the last one
  segment_ids   int32 [R, L]   0 on padding, k >= 1 for the k-th sequence of the row
  chosen_at     int32 [B, 2]   (row, column) of each pair's chosen LAST token: its reward
  rejected_at   int32 [B, 2]   the same for rejected
  chosen_len, rejected_len  int32 [B]  sequence lengths (prompt + response; LM regularisers)
  prompt_len, margin, weight, index   as in the padded batch ([B]); weight-0 filler pairs are
                                      not packed and point at (0, 0)
R is rounded up to a multiple of `row_multiple` (a handful of shapes for jit, and rows that
divide the mesh's batch axes). Positions restart at every segment (`Llama` derives them).
"""

from __future__ import annotations

import numpy as np

from rmjax.data.batching import MappedBatches

PACKED_KEYS = ("input_ids", "segment_ids", "chosen_at", "rejected_at")


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


def pack_batch(batch: dict, data, row_length: int, row_multiple: int = 1) -> dict:
  """The packed form of a padded pair batch (see the module docstring). `data`:
  `TokenizedPairs` the batch's 'index' refers to."""
  idx, weight = np.asarray(batch["index"]), np.asarray(batch["weight"])
  live = [i for i in range(len(idx)) if weight[i] > 0]
  seqs = {i: (data.chosen[idx[i]], data.rejected[idx[i]]) for i in live}
  lengths = [len(seqs[i][0]) + len(seqs[i][1]) for i in live]
  if lengths and max(lengths) > row_length:
    raise ValueError(f"a pair of {max(lengths)} tokens does not fit a packed row of {row_length}; "
                     f"set data.pack_length >= 2 * data.max_length")
  rows_of, n_rows = _first_fit(lengths, row_length)
  n_rows = max(1, -(-max(n_rows, 1) // row_multiple) * row_multiple)
  ids = np.full((n_rows, row_length), data.pad_id, np.int32)
  seg = np.zeros((n_rows, row_length), np.int32)
  fill = np.zeros(n_rows, np.int64)
  n_seg = np.zeros(n_rows, np.int64)
  at = {"chosen_at": np.zeros((len(idx), 2), np.int32),
        "rejected_at": np.zeros((len(idx), 2), np.int32),
        "chosen_len": np.zeros(len(idx), np.int32), "rejected_len": np.zeros(len(idx), np.int32)}
  for slot, i in enumerate(live):
    row = rows_of[slot]
    for key, seq in zip(("chosen_at", "rejected_at"), seqs[i]):
      start, n_seg[row] = fill[row], n_seg[row] + 1
      ids[row, start:start + len(seq)] = seq
      seg[row, start:start + len(seq)] = n_seg[row]
      fill[row] += len(seq)
      at[key][i] = (row, fill[row] - 1)
      at[key.replace("_at", "_len")][i] = len(seq)
  out = {k: v for k, v in batch.items() if not k.endswith(("_ids", "_mask"))}
  out.update(input_ids=ids, segment_ids=seg, **at)
  return out


class PackedBatches(MappedBatches):
  """A pair batcher whose batches are packed (same pairs, order and position state as the
  wrapped `PairBatcher`: resuming is exact)."""

  def __init__(self, batcher, row_length: int, row_multiple: int = 1):
    super().__init__(batcher, lambda b: pack_batch(b, batcher.data, row_length, row_multiple))
    self.row_length, self.row_multiple = row_length, row_multiple
