"""Tokenized pairs -> fixed-key numpy batches, bucketed by length, resumable.

Batch (all numpy, B = batch_size, T = bucket length shared by chosen and rejected):
  chosen_ids, rejected_ids    int32 [B, T]  prompt + response tokens, RIGHT-padded with pad id
  chosen_mask, rejected_mask  int32 [B, T]  1 on real tokens
  prompt_len                  int32 [B]     prompt tokens (the same for both sides); the last
                                            prompt token is at prompt_len - 1
  margin                      float32 [B]   0 where the data gave none
  weight                      float32 [B]   1 for real rows, 0 for filler rows
  index                       int32 [B]     example index into TokenizedPairs (filler rows repeat
                                            a real row, so every row is a valid sequence)
Bucketing keeps a handful of shapes, so jit compiles a handful of times.
"""

import dataclasses

import numpy as np
from tqdm.auto import tqdm

from rmjax.errors import ConfigError, DataError

BATCH_KEYS = ('chosen_ids', 'chosen_mask', 'rejected_ids', 'rejected_mask', 'prompt_len',
              'margin', 'weight', 'index')


@dataclasses.dataclass
class TokenizedPairs:
  """Token ids per example (prompt + response), with prompt lengths and metadata for eval."""
  chosen: list  # of int32 arrays
  rejected: list
  prompt_len: np.ndarray  # int32 [N]
  margin: np.ndarray  # float32 [N]
  subsets: list
  sources: list
  pad_id: int = 0

  def __len__(self):
    return len(self.chosen)

  @property
  def max_length(self):
    return max((max(len(c), len(r)) for c, r in zip(self.chosen, self.rejected)), default=0)


def _where(source):
  path, _, line = str(source).rpartition(':')
  line = line.split('#')[0]
  return (path, int(line)) if line.isdigit() else (str(source), None)


def tokenize_pairs(examples, encoder, *, on_overlong='truncate', progress=None):
  """PairExamples -> (TokenizedPairs, stats) with ChatEncoder `encoder`.

  on_overlong: 'truncate' (prompt cut left, responses right; counted), 'drop' (counted) or
  'fail' (DataError naming the example's file:line). stats: pairs, kept, truncated, dropped,
  identical (chosen and rejected token ids equal after tokenization, kept but useless).
  """
  if on_overlong not in ('truncate', 'drop', 'fail'):
    raise ValueError(f'on_overlong must be truncate|drop|fail, got {on_overlong!r}')
  stats = {'pairs': len(examples), 'kept': 0, 'truncated': 0, 'dropped': 0, 'identical': 0}
  chosen, rejected, prompt_len, margin, subsets, sources = [], [], [], [], [], []
  show = progress if progress is not None else len(examples) >= 2000
  for ex in tqdm(examples, desc='tokenize', disable=not show, leave=False):
    prompt, responses = encoder.encode_untruncated(ex.messages, [ex.chosen, ex.rejected])
    prompt, (c, r), cut = encoder.cut(prompt, responses)
    if cut:
      if on_overlong == 'fail':
        n = len(prompt) + max(len(x) for x in responses)
        path, line = _where(ex.source)
        raise DataError(path, line, 'chosen' if len(responses[0]) >= len(responses[1])
                        else 'rejected', f'{n} tokens > max_length {encoder.max_length}')
      if on_overlong == 'drop':
        stats['dropped'] += 1
        continue
      stats['truncated'] += 1
    if c == r:
      stats['identical'] += 1
    chosen.append(np.asarray(prompt + c, np.int32))
    rejected.append(np.asarray(prompt + r, np.int32))
    prompt_len.append(len(prompt))
    margin.append(0.0 if ex.margin is None else ex.margin)
    subsets.append(ex.subset)
    sources.append(ex.source)
  stats['kept'] = len(chosen)
  return TokenizedPairs(chosen, rejected, np.asarray(prompt_len, np.int32),
                        np.asarray(margin, np.float32), subsets, sources, encoder.pad_id), stats


def bucket_length(n, buckets, pad_multiple=1):
  """Smallest bucket >= n (beyond the largest: n), rounded up to a multiple of pad_multiple."""
  t = next((b for b in sorted(buckets or ()) if b >= n), n)
  return -(-max(t, 1) // pad_multiple) * pad_multiple


class PairBatcher:
  """Infinite, deterministic, resumable iterator of training batches over TokenizedPairs.

  Epoch e visits the examples in np.random.default_rng([seed, e]).permutation(N) order (or in
  order when shuffle=False). `state()` -> {'epoch', 'index'} (plain ints, for the checkpoint);
  `restore(state)` continues with exactly the next batch. drop_remainder=False emits the last
  partial batch of an epoch, filled with weight-0 rows.
  """

  def __init__(self, tokenized, batch_size, *, buckets=(64, 128, 256, 512, 1024, 2048), seed=0,
               shuffle=True, drop_remainder=True, pad_multiple=1):
    n = len(tokenized)
    if batch_size < 1:
      raise ConfigError(f'batch_size must be >= 1, got {batch_size}')
    if n == 0 or (drop_remainder and n < batch_size):
      raise ConfigError(f'{n} examples cannot fill one batch of {batch_size} '
                        '(lower the batch size or set drop_remainder=False)')
    self.data, self.batch_size = tokenized, int(batch_size)
    self.buckets, self.seed, self.shuffle = tuple(buckets or ()), int(seed), shuffle
    self.drop_remainder, self.pad_multiple = drop_remainder, int(pad_multiple)
    self.epoch, self.index = 0, 0
    self._order_epoch, self._order = None, None

  @property
  def steps_per_epoch(self):
    n, b = len(self.data), self.batch_size
    return n // b if self.drop_remainder else -(-n // b)

  def _epoch_order(self, epoch):
    if self._order_epoch != epoch:
      n = len(self.data)
      self._order = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
                     else np.arange(n))
      self._order_epoch = epoch
    return self._order

  def state(self):
    return {'epoch': int(self.epoch), 'index': int(self.index)}

  def restore(self, state):
    self.epoch, self.index = int(state['epoch']), int(state['index'])

  def __iter__(self):
    return self

  def __next__(self):
    n, b = len(self.data), self.batch_size
    if self.index >= n or (self.drop_remainder and self.index + b > n):
      self.epoch, self.index = self.epoch + 1, 0
    idx = self._epoch_order(self.epoch)[self.index:self.index + b]
    self.index += len(idx)
    return self.make_batch(idx)

  def eval_batches(self):
    """Every example exactly once, in order; the last batch is filled with weight-0 rows."""
    n, b = len(self.data), self.batch_size
    for start in range(0, n, b):
      yield self.make_batch(np.arange(start, min(start + b, n)))

  def make_batch(self, idx):
    """Batch for example indices `idx` (len <= batch_size; the rest become filler rows)."""
    b, d = self.batch_size, self.data
    idx = np.asarray(idx, np.int64)
    valid = len(idx)
    full = np.concatenate([idx, np.resize(idx, b - valid)]) if valid < b else idx
    longest = max(max(len(d.chosen[i]), len(d.rejected[i])) for i in full)
    t = bucket_length(longest, self.buckets, self.pad_multiple)
    batch = {}
    for side, seqs in (('chosen', d.chosen), ('rejected', d.rejected)):
      ids = np.full((b, t), d.pad_id, np.int32)  # [B, T]
      mask = np.zeros((b, t), np.int32)
      for row, i in enumerate(full):
        ids[row, :len(seqs[i])] = seqs[i]
        mask[row, :len(seqs[i])] = 1
      batch[f'{side}_ids'], batch[f'{side}_mask'] = ids, mask
    weight = np.zeros((b,), np.float32)
    weight[:valid] = 1.0
    batch.update(prompt_len=d.prompt_len[full].astype(np.int32),
                 margin=d.margin[full].astype(np.float32), weight=weight,
                 index=full.astype(np.int32))
    return batch
