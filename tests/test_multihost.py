"""Multi-process data and training: 2 processes on localhost (jax.distributed, 4 fake CPU devices
each) against 1 process with 8 devices.

- PairBatcher: every process emits its contiguous block of each global batch; the global order
  does not depend on the process count; the one global position resumes every process.
- shard_batch on 2 real processes: each process's rows land on its own devices of the mesh
  (read off the mesh's device placement), for the meshes the train tests use; packed batches:
  each process packs its own block and both agree on the rows and row length.
- `rmjax train` on 2 processes: no example twice in a global batch, every example once an
  epoch, the global batches equal the 1-process run's, final params equal the 1-process
  8-device run within 1e-6, and both processes restarted from the step-4 checkpoint end at the
  same params as the uninterrupted 2-process run.

Run as a script (`python tests/test_multihost.py rows PORT PID`) it is the worker of the
shard_batch check.
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from _util import xla_flags

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # script mode
  sys.path.insert(0, str(REPO))


def _toy_pairs(n, seed=0):
  """TokenizedPairs with varied lengths (so buckets differ between batches)."""
  from rmjax.data.batching import TokenizedPairs
  rng = np.random.default_rng(seed)
  chosen, rejected, plen = [], [], []
  for i in range(n):
    p = int(rng.integers(1, 5))
    chosen.append(np.full(p + int(rng.integers(1, 40)), i + 1, np.int32))
    rejected.append(np.full(p + int(rng.integers(1, 40)), -(i + 1), np.int32))
    plen.append(p)
  return TokenizedPairs(chosen, rejected, np.asarray(plen, np.int32),
                        np.arange(n, dtype=np.float32), ['s'] * n, [f'f:{i + 1}' for i in range(n)])


# ------------------------------------------------------------------ batcher, in one process

@pytest.mark.parametrize('drop_remainder', [True, False])
def test_process_blocks_rebuild_the_one_process_batches(drop_remainder):
  from rmjax.data.batching import PairBatcher
  tp = _toy_pairs(37)
  kw = dict(buckets=(16, 32, 64), seed=4, drop_remainder=drop_remainder)
  ref = PairBatcher(tp, 8, process_index=0, process_count=1, **kw)
  for count in (2, 4):
    procs = [PairBatcher(tp, 8, process_index=p, process_count=count, **kw) for p in range(count)]
    assert all(b.local_batch_size == 8 // count for b in procs)
    ref.restore({'epoch': 0, 'index': 0})
    seen = []
    for step in range(3 * ref.steps_per_epoch):
      want = next(ref)
      parts = [next(b) for b in procs]
      assert len({json.dumps(b.state()) for b in procs + [ref]}) == 1  # one global position
      for k in want:  # same keys, same bucket length, rows in process order
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), want[k])
      real = want['index'][want['weight'] > 0]
      assert len(set(real.tolist())) == len(real), 'an example twice in one global batch'
      seen += real.tolist()
      if (step + 1) % ref.steps_per_epoch == 0:  # every example once an epoch
        expect = 37 if not drop_remainder else 37 // 8 * 8
        assert len(seen) == expect and len(set(seen)) == expect
        seen = []
    # resume: the global position restores every process, for any process count
    state = json.loads(json.dumps(procs[0].state()))
    again = [PairBatcher(tp, 8, process_index=p, process_count=count, **kw) for p in range(count)]
    for b in again:
      b.restore(state)
    for _ in range(3):
      want = [next(b) for b in procs]
      got = [next(b) for b in again]
      for w, g in zip(want, got):
        np.testing.assert_array_equal(w['index'], g['index'])
    # eval batches: each example once, in order, split the same way
    for want, *parts in zip(ref.eval_batches(), *[b.eval_batches() for b in procs]):
      for k in want:
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), want[k])


def test_batcher_process_arguments_are_checked():
  from rmjax.data.batching import PairBatcher
  from rmjax.errors import ConfigError
  tp = _toy_pairs(16)
  with pytest.raises(ConfigError, match='does not split over 3 processes'):
    PairBatcher(tp, 8, process_index=0, process_count=3)
  with pytest.raises(ConfigError, match='process_index 2'):
    PairBatcher(tp, 8, process_index=2, process_count=2)
  b = PairBatcher(tp, 8)  # defaults: jax.process_index() / process_count() = 0 / 1
  assert (b.process_index, b.process_count, b.local_batch_size) == (0, 1, 8)


def test_batch_log_hook(tmp_path, monkeypatch):
  from rmjax.data.batching import PairBatcher
  monkeypatch.setenv('RMJAX_DEBUG_BATCH_LOG', str(tmp_path / 'log'))
  b = PairBatcher(_toy_pairs(16), 8, process_index=1, process_count=2)
  rows = [next(b)['index'].tolist() for _ in range(3)]
  lines = [json.loads(x) for x in (tmp_path / 'log.1').read_text().splitlines()]
  assert [x['index'] for x in lines] == rows
  assert [(x['epoch'], x['start']) for x in lines] == [(0, 0), (0, 8), (1, 0)]


def test_shard_batch_one_process_unchanged():
  import jax
  from rmjax import sharding as shd
  from rmjax.data.batching import PairBatcher
  mesh = shd.make_mesh((2, 4, 1))
  assert shd.batch_shard(mesh) == (0, 1)
  batch = next(PairBatcher(_toy_pairs(16), 8))
  for out in (shd.shard_batch(batch, mesh), shd.shard_batch(batch, mesh, global_batch=True)):
    for k, v in batch.items():
      assert out[k].sharding.spec[0] == shd.BATCH
      np.testing.assert_array_equal(jax.device_get(out[k]), v)


# ------------------------------------------------------------------ 2 real processes

def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(devices, **extra):
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('JAX_COORDINATOR', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID', 'SLURM_',
                              'OMPI_', 'TPU_WORKER', 'MEGASCALE', 'RMJAX_DEBUG', 'PYTEST'))}
  env.update(JAX_PLATFORMS='cpu', HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1',
             XLA_FLAGS=xla_flags(devices),
             PYTHONPATH=os.pathsep.join([str(REPO), env.get('PYTHONPATH', '')]).rstrip(os.pathsep),
             **extra)
  return env


def _start(cmds, log_dir, name):
  """Popen each (argv, env); output to log_dir/name.<i>.log (no pipes to fill up)."""
  procs = []
  for i, (argv, env) in enumerate(cmds):
    log = open(log_dir / f'{name}.{i}.log', 'w')
    procs.append((subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True), log, log_dir / f'{name}.{i}.log'))
  return procs


def _finish(procs, deadline):
  """Wait for all; on a timeout or a failure kill the rest and fail with the logs' tails."""
  failed = []
  try:
    for p, log, path in procs:
      try:
        rc = p.wait(timeout=max(1.0, deadline - time.time()))
      except subprocess.TimeoutExpired:
        rc = 'timeout'
      if rc != 0:
        failed.append((path, rc))
        break
  finally:
    for p, log, _ in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
      log.close()
  if failed:
    tails = '\n'.join(f'--- {path}:\n' + '\n'.join(
        [x for x in path.read_text().splitlines() if 'Gloo' not in x][-25:]) for _, _, path in procs)
    pytest.fail(f'failed: {failed}\n{tails}')


def test_rows_land_on_the_processes_devices(tmp_path):
  port = _free_port()
  cmds = [([sys.executable, __file__, 'rows', str(port), str(i)], _env(4)) for i in range(2)]
  procs = _start(cmds, tmp_path, 'rows')
  _finish(procs, time.time() + 240)
  for _, _, path in procs:
    assert 'ROWS-OK' in path.read_text()


def _rows_worker(port, pid):
  """2-process check of batch_shard / shard_batch against the real device placement."""
  from rmjax import sharding as shd
  assert shd.maybe_initialize_distributed(f'127.0.0.1:{port}', 2, pid)
  import jax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  from rmjax.data.batching import PairBatcher
  from rmjax.errors import ConfigError
  assert jax.process_count() == 2 and jax.device_count() == 8
  tp = _toy_pairs(40)

  def check(arr, want, mesh):
    assert arr.shape == want.shape, (arr.shape, want.shape)
    for shard in arr.addressable_shards:  # this process's devices hold exactly these rows
      assert shard.device.process_index == pid
      np.testing.assert_array_equal(np.asarray(shard.data), want[shard.index])
    full = jax.jit(lambda x: x, out_shardings=NamedSharding(mesh, P()))(arr)
    np.testing.assert_array_equal(np.asarray(full.addressable_data(0)), want)

  for shape in [(8, 1, 1), (2, 4, 1), (2, 2, 2), (4, 1, 2)]:
    mesh = shd.make_mesh(shape)
    assert shd.batch_shard(mesh) == (pid, 2), (shape, shd.batch_shard(mesh))
    ref = PairBatcher(tp, 16, seed=3, buckets=(16, 64), process_index=0, process_count=1)
    local = PairBatcher(tp, 16, seed=3, buckets=(16, 64))  # jax's process index / count
    assert (local.process_index, local.process_count) == (pid, 2)
    for _ in range(3):
      want, got = next(ref), shd.shard_batch(next(local), mesh)
      for k in want:
        check(got[k], want[k], mesh)
    want = next(ref)  # producers that build the whole batch in every process
    got = shd.shard_batch(want, mesh, global_batch=True)
    for k in want:
      check(got[k], want[k], mesh)
  # tensor axis across both processes: one batch block, shared by both processes
  mesh = shd.make_mesh((1, 1, 8))
  assert shd.batch_shard(mesh) == (0, 1)
  want = next(PairBatcher(tp, 16, seed=3, process_index=0, process_count=1))
  got = shd.shard_batch(want, mesh)
  check(got['index'], want['index'], mesh)
  # devices interleaved across processes: the local rows would not be one block
  mine = [[d for d in jax.devices() if d.process_index == p] for p in (0, 1)]
  devs = [d for pair in zip(*mine) for d in pair]  # p0, p1, p0, p1, ...
  try:
    shd.batch_shard(Mesh(np.asarray(devs).reshape(8, 1, 1), shd.AXES))
    raise AssertionError('interleaved mesh accepted')
  except ConfigError as e:
    assert 'contiguous' in str(e)
  # packing on 2 real processes: each packs its own block of every global batch, both agree on
  # (rows, length) through process_allgather, and the blocks side by side on the mesh hold every
  # pair of the global batch once, each pointer inside its own process's block of rows
  from jax.experimental import multihost_utils
  from rmjax.data.packing import PackedBatches, pack_batch
  mesh = shd.make_mesh((8, 1, 1))
  block = shd.batch_shard(mesh)
  packer = PackedBatches(PairBatcher(tp, 16, seed=3, buckets=(64,)), 96, 4, True, block=block,
                         length_multiple=16)
  alone = [pack_batch(next(PairBatcher(tp, 16, seed=3, buckets=(64,), process_index=p,
                                       process_count=2)), tp, 96, 4, True, 16) for p in (0, 1)]
  packed = next(packer)
  rows, length = (max(a['input_ids'].shape[d] for a in alone) for d in (0, 1))
  assert packed['input_ids'].shape == (rows, length), (packed['input_ids'].shape, rows, length)
  assert ((packed['chosen_at'][:, 0] // rows) == pid).all()
  got = shd.shard_batch(packed, mesh)
  assert got['input_ids'].shape == (2 * rows, length)
  every = multihost_utils.process_allgather(packed['index'])
  want = next(PairBatcher(tp, 16, seed=3, buckets=(64,), process_index=0, process_count=1))
  np.testing.assert_array_equal(np.sort(np.ravel(every)), np.sort(want['index']))
  print('ROWS-OK', flush=True)


TRAIN_ARGS = [
    '--config.train.steps=8', '--config.train.checkpoint_every=4', '--config.train.eval_every=4',
    '--config.train.batch_size=8', '--config.train.log_every=1', '--config.train.progress=False',
    '--config.train.tensorboard=False', '--config.data.source=synthetic:32',
    '--config.data.eval_source=synthetic:16', '--config.data.max_length=64',
    '--config.optim.warmup_steps=2']


def _train_cmds(workdir, processes, batch_log, cache):
  """Processes of one `rmjax train` run; `cache`: a JAX compilation cache shared by the runs (the
  restart reuses the executables of the uninterrupted run: less than half its time on 2 cores)."""
  port = _free_port()
  cache_env = dict(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  out = []
  for i in range(processes):
    argv = [sys.executable, '-m', 'rmjax', 'train', f'--config={REPO}/configs/bt.py:tiny',
            f'--workdir={workdir}', *TRAIN_ARGS]
    if processes > 1:
      argv += [f'--coordinator=127.0.0.1:{port}', f'--num_processes={processes}',
               f'--process_id={i}']
    out.append((argv, _env(8 // processes, RMJAX_DEBUG_BATCH_LOG=str(batch_log), **cache_env)))
  return out


def _params(workdir, step=8):
  import jax
  import orbax.checkpoint as ocp
  path = pathlib.Path(workdir) / 'checkpoints' / str(step) / 'state'
  ckptr = ocp.PyTreeCheckpointer()
  tree = ckptr.metadata(path).item_metadata.tree
  args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))['params']


def _batch_log(prefix, processes):
  """{(epoch, start): global rows} from the per-process logs, rows in process order."""
  per = []
  for p in range(processes):
    lines = [json.loads(x) for x in pathlib.Path(f'{prefix}.{p}').read_text().splitlines()]
    per.append({(x['epoch'], x['start']): x for x in lines})
    assert len(per[-1]) == len(lines), 'a position logged twice'
  assert all(d.keys() == per[0].keys() for d in per)
  return [(pos, sum((d[pos]['index'] for d in per), []), sum((d[pos]['weight'] for d in per), []))
          for pos in per[0]]


def _metrics(workdir):
  return [json.loads(x) for x in (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()]


def test_two_processes_train_like_one_and_resume(tmp_path):
  import jax
  two, one, restart = tmp_path / 'two', tmp_path / 'one', tmp_path / 'restart'
  t0 = time.time()
  # the uninterrupted 2-process run and the 1-process 8-device run, side by side
  procs = _start(_train_cmds(two, 2, tmp_path / 'two.batches', tmp_path / 'cache'), tmp_path, 'two')
  procs += _start(_train_cmds(one, 1, tmp_path / 'one.batches', tmp_path / 'cache'), tmp_path, 'one')
  _finish(procs, t0 + 420)
  # restart both processes from the step-4 checkpoint of the 2-process run (= killed after it)
  shutil.copytree(two / 'checkpoints', restart / 'checkpoints')
  shutil.rmtree(restart / 'checkpoints' / '8')
  procs = _start(_train_cmds(restart, 2, tmp_path / 'restart.batches', tmp_path / 'cache'), tmp_path, 'restart')
  _finish(procs, time.time() + 300)

  # data: no example twice in a global batch, every example once an epoch (32 = 4 batches of 8)
  two_log, one_log = _batch_log(tmp_path / 'two.batches', 2), _batch_log(tmp_path / 'one.batches', 1)
  assert len(two_log) == 8
  epochs: dict = {}
  for (epoch, _), rows, weight in two_log:
    assert all(w == 1.0 for w in weight) and len(rows) == 8 and len(set(rows)) == 8
    epochs.setdefault(epoch, []).extend(rows)
  for epoch, rows in epochs.items():
    if len(rows) == 32:
      assert sorted(rows) == list(range(32)), epoch
  assert sum(len(r) == 32 for r in epochs.values()) == 2
  assert two_log == one_log  # the same global batches whatever the process count
  assert _batch_log(tmp_path / 'restart.batches', 2) == two_log[4:]  # resumed at the position

  # process 0 alone writes metrics: one row per step; eval over the sliced eval batches agrees
  m2, m1 = _metrics(two), _metrics(one)
  assert [r['step'] for r in m2] == list(range(1, 9))
  np.testing.assert_allclose([r['loss'] for r in m2], [r['loss'] for r in m1], rtol=1e-5)
  for r2, r1 in zip(m2, m1):
    for k in ('eval_loss', 'eval_accuracy', 'eval_n'):
      if k in r1:
        np.testing.assert_allclose(r2[k], r1[k], rtol=1e-5, atol=1e-6)
  assert sum('eval_loss' in r for r in m2) == 2

  # params: 2 processes == 1 process within 1e-6; the restart == the uninterrupted run
  p2, p1, pr = _params(two), _params(one), _params(restart)

  def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  jax.tree_util.tree_map(close, p2, p1)
  jax.tree_util.tree_map(np.testing.assert_array_equal, pr, p2)
  assert (restart / 'metrics.jsonl').is_file()
  assert [r['step'] for r in _metrics(restart)] == list(range(5, 9))
  np.testing.assert_array_equal([r['loss'] for r in _metrics(restart)],
                                [r['loss'] for r in m2[4:]])


if __name__ == '__main__':
  if sys.argv[1] == 'rows':
    _rows_worker(int(sys.argv[2]), int(sys.argv[3]))
