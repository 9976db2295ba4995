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

Several processes (multi-host): batch_size is the GLOBAL batch size G and each process emits
B = G / n rows: every process walks the same global order and keeps only its contiguous block
of each global batch (rows [p * B, (p + 1) * B) for process p of n), which
`rmjax.sharding.shard_batch` assembles into the global array. The bucket length T is taken over
the whole global batch, so all processes emit the same shapes.
"""

import dataclasses
import json
import os

import numpy as np

from rmjax.data.encode_batch import cached_encode_many
from rmjax.errors import ConfigError, DataError

ON_OVERLONG = ('truncate', 'drop', 'fail')  # tokenize_pairs(on_overlong=...)
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


def tokenize_pairs(examples, encoder, *, on_overlong='truncate', progress=None, token_cache=''):
  """PairExamples -> (TokenizedPairs, stats) with ChatEncoder `encoder`.

  on_overlong: 'truncate' (prompt cut left, responses right; counted), 'drop' (counted) or
  'fail' (DataError naming the example's file:line). stats: pairs, kept, truncated, dropped,
  identical (chosen and rejected token ids equal after tokenization, kept but useless),
  token_cache_hit. Ids come from the batched, cached encoder (`rmjax.data.encode_batch`;
  token_cache: its directory, '' = the default, 'off' = none).
  """
  if on_overlong not in ON_OVERLONG:
    raise ValueError(f'on_overlong must be {"|".join(ON_OVERLONG)}, got {on_overlong!r}')
  stats = {'pairs': len(examples), 'kept': 0, 'truncated': 0, 'dropped': 0, 'identical': 0}
  chosen, rejected, prompt_len, margin, subsets, sources = [], [], [], [], [], []
  show = progress if progress is not None else len(examples) >= 2000
  encoded, stats['token_cache_hit'] = cached_encode_many(
      encoder, [(ex.messages, [ex.chosen, ex.rejected]) for ex in examples], token_cache, show)
  for ex, (prompt, responses) in zip(examples, encoded):
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

  Multi-process: `batch_size` is the global batch; `process_index` / `process_count` (default
  `jax.process_index()` / `jax.process_count()`) pick this process's contiguous block of
  `batch_size // process_count` rows of every global batch (train and eval). Design: the simple
  one -- every process reads the same tokenized data and walks the same global order, which
  depends on (seed, epoch) only, never on the process count, so the 2-process run sees exactly
  the 1-process run's global batches and a run reproduces and resumes on a slice of another
  size. The position (epoch, index) counts GLOBAL examples and is identical in every process,
  so the one data position in the checkpoint restores every process (and any process count).
  Grain's ShardByJaxProcess would shard the records per process instead (each process reads
  only its shard, and its order and position depend on the process count); it is the better
  fit when the data does not fit every host, but it loses the exact cross-process-count
  resume and this module's file:line validation of the whole set, so it is not used here.
  The process block must be the rows whose devices belong to this process on the mesh:
  `rmjax.sharding.batch_shard(mesh)` gives (index, count) read off the device placement; it
  equals (process_index, process_count) for `rmjax.sharding.make_mesh` meshes whose tensor axis
  fits inside one process.

  Test hook: env RMJAX_DEBUG_BATCH_LOG=PATH appends one JSON line per training batch to
  PATH.<process_index>: {process, epoch, start, index (example ids of the local rows), weight}.
  """

  def __init__(self, tokenized, batch_size, *, buckets=(64, 128, 256, 512, 1024, 2048), seed=0,
               shuffle=True, drop_remainder=True, pad_multiple=1, process_index=None,
               process_count=None):
    n = len(tokenized)
    if batch_size < 1:
      raise ConfigError(f'batch_size must be >= 1, got {batch_size}')
    if n == 0 or (drop_remainder and n < batch_size):
      raise ConfigError(f'{n} examples cannot fill one batch of {batch_size} '
                        '(lower the batch size or set drop_remainder=False)')
    if process_index is None or process_count is None:
      import jax
      process_index = jax.process_index() if process_index is None else process_index
      process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
      raise ConfigError(f'process_index {process_index} is not in [0, {process_count})')
    if batch_size % process_count:
      raise ConfigError(f'global batch_size {batch_size} does not split over {process_count} '
                        'processes')
    self.data, self.batch_size = tokenized, int(batch_size)
    self.buckets, self.seed, self.shuffle = tuple(buckets or ()), int(seed), shuffle
    self.drop_remainder, self.pad_multiple = drop_remainder, int(pad_multiple)
    self.process_index, self.process_count = int(process_index), int(process_count)
    self.local_batch_size = self.batch_size // self.process_count
    self.epoch, self.index = 0, 0
    self._order_epoch, self._order = None, None
    self._log = os.environ.get('RMJAX_DEBUG_BATCH_LOG') or None

  @property
  def local_rows(self):
    """This process's rows of each global batch, as a slice."""
    lo = self.process_index * self.local_batch_size
    return slice(lo, lo + self.local_batch_size)

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
    """Global position (identical in every process): {'epoch', 'index'}."""
    return {'epoch': int(self.epoch), 'index': int(self.index)}

  def restore(self, state):
    self.epoch, self.index = int(state['epoch']), int(state['index'])

  def __iter__(self):
    return self

  def __next__(self):
    n, b = len(self.data), self.batch_size
    if self.index >= n or (self.drop_remainder and self.index + b > n):
      self.epoch, self.index = self.epoch + 1, 0
    start = self.index
    idx = self._epoch_order(self.epoch)[start:start + b]
    self.index += len(idx)
    batch = self.make_batch(idx)
    if self._log:
      with open(f'{self._log}.{self.process_index}', 'a') as f:
        f.write(json.dumps({'process': self.process_index, 'epoch': int(self.epoch),
                            'start': int(start), 'index': batch['index'].tolist(),
                            'weight': batch['weight'].tolist()}) + '\n')
    return batch

  def eval_batches(self):
    """Every example exactly once, in order; the last batch is filled with weight-0 rows.
    Several processes: this process's rows of each global eval batch."""
    n, b = len(self.data), self.batch_size
    for start in range(0, n, b):
      yield self.make_batch(np.arange(start, min(start + b, n)))

  def make_batch(self, idx):
    """This process's rows of the global batch for example indices `idx` (len <= batch_size;
    the rest become weight-0 filler rows). One process: the whole batch."""
    b, d = self.batch_size, self.data
    idx = np.asarray(idx, np.int64)
    valid = len(idx)
    full = np.concatenate([idx, np.resize(idx, b - valid)]) if valid < b else idx
    # the bucket comes from the GLOBAL batch, so every process emits the same shape
    longest = max(max(len(d.chosen[i]), len(d.rejected[i])) for i in full)
    t = bucket_length(longest, self.buckets, self.pad_multiple)
    weight = np.zeros((b,), np.float32)
    weight[:valid] = 1.0
    rows = self.local_rows
    full, weight = full[rows], weight[rows]
    lb = len(full)
    batch = {}
    for side, seqs in (('chosen', d.chosen), ('rejected', d.rejected)):
      ids = np.full((lb, t), d.pad_id, np.int32)  # [B_local, T]
      mask = np.zeros((lb, t), np.int32)
      for row, i in enumerate(full):
        ids[row, :len(seqs[i])] = seqs[i]
        mask[row, :len(seqs[i])] = 1
      batch[f'{side}_ids'], batch[f'{side}_mask'] = ids, mask
    batch.update(prompt_len=d.prompt_len[full].astype(np.int32),
                 margin=d.margin[full].astype(np.float32), weight=weight,
                 index=full.astype(np.int32))
    return batch


class MappedBatches:
  """The batches of `batcher` passed through `fn` (packing, cached features...): same order and
  the same position state, so a run over mapped batches resumes exactly like one over plain."""

  def __init__(self, batcher, fn):
    self.batcher, self.fn = batcher, fn

  def __iter__(self):
    return self

  def __next__(self):
    return self.fn(next(self.batcher))

  def state(self):
    return self.batcher.state()

  def restore(self, state):
    self.batcher.restore(state)

  @property
  def data(self):
    return self.batcher.data
