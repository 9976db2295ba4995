"""Packed pair batches (plain, and prompt-shared: a pair's prompt once, both responses after it)
give the padded batches' rewards, BT loss and gradients (GQA tiny Llama, left and right
padding), sharded packed == single device, and a packed run trains like a padded one on the
same pairs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import bt as bt_config
from rmjax import losses
from rmjax import sharding as shd
from rmjax.data.batching import PairBatcher, TokenizedPairs
from rmjax.data.packing import pack_batch
from rmjax.models.llama import positions_from_segments
from rmjax.models.reward_model import RewardModel
from rmjax.tasks import get
from rmjax.tasks.pairs import forward_pairs
from rmjax.checkpoints.presets import preset_config
from _util import fast_config


def _pairs(n=10, seed=0, vocab=512, empty_chosen=False):
  rng = np.random.default_rng(seed)
  chosen, rejected, plen = [], [], []
  for i in range(n):
    p = rng.integers(3, 20)
    prompt = rng.integers(3, vocab, p)
    n_chosen = 0 if empty_chosen and i % 3 == 0 else rng.integers(1, 30)  # an empty response
    chosen.append(np.concatenate([prompt, rng.integers(3, vocab, n_chosen)]).astype(np.int32))
    rejected.append(np.concatenate([prompt, rng.integers(3, vocab, rng.integers(1, 30))]).astype(np.int32))
    plen.append(p)
  return TokenizedPairs(chosen, rejected, np.asarray(plen, np.int32), np.zeros(n, np.float32),
                        [None] * n, [None] * n, pad_id=0)


def _left_pad(batch):
  """The same rows, padding moved to the left."""
  out = dict(batch)
  for side in ("chosen", "rejected"):
    ids, mask = batch[f"{side}_ids"].copy(), batch[f"{side}_mask"].copy()
    for i in range(len(ids)):
      n = int(mask[i].sum())
      ids[i] = np.roll(ids[i], ids.shape[1] - n)
      mask[i] = np.roll(mask[i], ids.shape[1] - n)
    out[f"{side}_ids"], out[f"{side}_mask"] = ids, mask
  return out


@pytest.fixture(scope="module")
def model_and_params():
  model = RewardModel(preset_config("tiny"))
  ids = jnp.zeros((2, 8), jnp.int32)
  return model, model.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids))["params"]


def _loss(model):
  def f(params, batch):
    c, r = forward_pairs(model, params, batch)
    return losses.bradley_terry(c["reward"], r["reward"], weight=batch["weight"])
  return f


def test_positions_restart_per_segment():
  seg = jnp.array([[1, 1, 1, 2, 2, 3, 0, 0]])
  np.testing.assert_array_equal(positions_from_segments(seg), [[0, 1, 2, 0, 1, 0, 0, 0]])


def test_pack_batch_keeps_pairs_in_one_row_and_every_pair_placed():
  data = _pairs(12)
  batch = next(PairBatcher(data, 8, buckets=(64,), seed=0))
  batch["weight"][-1] = 0.0  # a filler row is not packed
  packed = pack_batch(batch, data, row_length=64, row_multiple=4)
  assert packed["input_ids"].shape[0] % 4 == 0
  for i in range(7):
    (rc, cc), (rr, cr) = packed["chosen_at"][i], packed["rejected_at"][i]
    assert rc == rr  # chosen and rejected of a pair share a row
    seq = data.chosen[batch["index"][i]]
    np.testing.assert_array_equal(packed["input_ids"][rc, cc - len(seq) + 1:cc + 1], seq)
  assert (packed["segment_ids"] > 0).sum() == sum(
      len(data.chosen[j]) + len(data.rejected[j]) for j in batch["index"][:7])
  with pytest.raises(ValueError, match="does not fit"):
    pack_batch(batch, data, row_length=16)


def test_prompt_shared_rows_hold_each_prompt_once():
  """share_prompt: prompt, chosen response, rejected response back to back; both responses'
  positions continue from the prompt and their prefix is the prompt's segment."""
  data = _pairs(12, seed=3, empty_chosen=True)
  batch = next(PairBatcher(data, 8, buckets=(64,), seed=0))
  packed = pack_batch(batch, data, row_length=96, share_prompt=True)
  ids, seg, pos, pre = (packed[k] for k in ("input_ids", "segment_ids", "positions", "prefix_ids"))
  for i, j in enumerate(batch["index"]):
    c, r, p = data.chosen[j], data.rejected[j], int(data.prompt_len[j])
    (row, pend), (rc, cend), (rr, rend) = packed["prompt_at"][i], packed["chosen_at"][i], packed["rejected_at"][i]
    assert row == rc == rr
    np.testing.assert_array_equal(ids[row, pend - p + 1:pend + 1], c[:p])
    np.testing.assert_array_equal(pos[row, pend - p + 1:pend + 1], np.arange(p))
    if len(c) == p:  # an empty chosen response reads its reward at the prompt's end
      assert cend == pend
    else:
      np.testing.assert_array_equal(ids[row, pend + 1:cend + 1], c[p:])
    np.testing.assert_array_equal(ids[row, rend - (len(r) - p) + 1:rend + 1], r[p:])
    np.testing.assert_array_equal(pos[row, rend - (len(r) - p) + 1:rend + 1], np.arange(p, len(r)))
    assert (pre[row, rend - (len(r) - p) + 1:rend + 1] == seg[row, pend]).all()
    assert pre[row, pend] == 0
  assert (seg > 0).sum() == sum(len(data.chosen[j]) + len(data.rejected[j]) - data.prompt_len[j]
                                for j in batch["index"])


def test_row_length_is_the_multiple_that_packs_into_fewest_tokens():
  """ladder=False, length_multiple: per batch, rows of the multiple of it (<= row_length) with
  the fewest R x L tokens; each pair still whole in one row, and no shorter multiple holds the
  pairs."""
  data = _pairs(12, seed=4)
  batch = next(PairBatcher(data, 8, buckets=(64,), seed=0))
  lengths = [len(data.chosen[j]) + len(data.rejected[j]) for j in batch["index"]]
  fixed = pack_batch(batch, data, row_length=256, ladder=False)
  packed = pack_batch(batch, data, row_length=256, length_multiple=16, ladder=False)
  rows, length = packed["input_ids"].shape
  assert length % 16 == 0 and max(lengths) <= length < 256
  assert rows * length < fixed["input_ids"].size
  assert rows * length <= 16 * -(-sum(lengths) // 16) * 2  # not worse than twice the tight area
  for side in ("chosen", "rejected"):
    for i, j in enumerate(batch["index"]):
      row, col = packed[f"{side}_at"][i]
      seq = getattr(data, side)[j]
      np.testing.assert_array_equal(packed["input_ids"][row, col - len(seq) + 1:col + 1], seq)
  assert (packed["segment_ids"] > 0).sum() == sum(lengths)
  # the shape is the best over the multiples: no other multiple packs into fewer tokens
  from rmjax.data.packing import _first_fit
  for size in range(16 * -(-max(lengths) // 16), 257, 16):
    assert _first_fit(lengths, size)[1] * size >= rows * length


def _varied_pairs(n, seed=0, vocab=512, longest=64):
  """Pairs of widely varied lengths (prompt 1..longest/2, responses 0..longest/2 tokens)."""
  rng = np.random.default_rng(seed)
  chosen, rejected, plen = [], [], []
  for _ in range(n):
    cap = int(rng.choice([8, 16, 32]))  # short, medium and long pairs mixed
    prompt = rng.integers(3, vocab, rng.integers(1, min(cap, longest // 2) + 1))
    for out in (chosen, rejected):
      out.append(np.concatenate([prompt, rng.integers(3, vocab, rng.integers(0, cap + 1))]).astype(np.int32))
    plen.append(len(prompt))
  return TokenizedPairs(chosen, rejected, np.asarray(plen, np.int32), np.zeros(n, np.float32),
                        [None] * n, [None] * n, pad_id=0)


@pytest.mark.parametrize("row_multiple,share", [(1, False), (2, True)])
def test_ladder_packs_many_batches_into_few_shapes_and_keeps_every_pair(row_multiple, share):
  """ladder=True (data.pack_ladder): over many batches of varied lengths the packed shapes are
  few and all from `shape_ladder` (rows row_multiple x 2^k; row lengths 1/2, 3/4, 1 x
  row_length), while the exact rule (ladder=False) needs more; every pair of every batch is
  packed, whole, at its pointers, and the ladder changes neither the batch's pairs nor its
  other keys."""
  from rmjax.data.packing import shape_ladder
  data = _varied_pairs(400, seed=7)
  row_length, multiple, pairs = 192, 16, 8
  ladder = shape_ladder(pairs, row_length, row_multiple, multiple)
  assert len(set(ladder)) == len(ladder) == 3 * (4 if row_multiple == 1 else 3)  # rows <= 8
  batcher = PairBatcher(data, pairs, buckets=(64,), seed=0)
  shapes, exact_shapes, tokens, exact_tokens = set(), set(), 0, 0
  for _ in range(3 * batcher.steps_per_epoch):  # 150 batches over 3 epochs
    batch = next(batcher)
    packed = pack_batch(batch, data, row_length, row_multiple, share, multiple)
    exact = pack_batch(batch, data, row_length, row_multiple, share, multiple, ladder=False)
    shapes.add(packed["input_ids"].shape)
    exact_shapes.add(exact["input_ids"].shape)
    tokens += packed["input_ids"].size
    exact_tokens += exact["input_ids"].size
    for key in ("index", "weight", "margin", "prompt_len"):
      np.testing.assert_array_equal(packed[key], batch[key])
    placed = 0
    for i, j in enumerate(batch["index"]):
      for side in ("chosen", "rejected"):
        seq = getattr(data, side)[j]
        row, col = packed[f"{side}_at"][i]
        tail = seq[int(data.prompt_len[j]):] if share else seq
        np.testing.assert_array_equal(packed["input_ids"][row, col - len(tail) + 1:col + 1], tail)
        placed += len(tail)
      placed += int(data.prompt_len[j]) if share else 0
    assert (packed["segment_ids"] > 0).sum() == placed  # nothing else in the rows, nothing lost
  assert shapes <= set(ladder) and len(shapes) <= 6, sorted(shapes)
  assert len(exact_shapes) > len(shapes), (sorted(shapes), sorted(exact_shapes))
  assert tokens <= 1.3 * exact_tokens  # the fixed set costs some padding, not a lot


@pytest.mark.parametrize("padding,share", [("right", False), ("left", False), ("right", True),
                                           ("left", True)])
def test_packed_equals_padded_rewards_loss_and_gradients(model_and_params, padding, share):
  model, params = model_and_params
  data = _pairs(10, seed=1, empty_chosen=share)
  batch = next(PairBatcher(data, 8, buckets=(64,), seed=0))
  packed = pack_batch(batch, data, row_length=96, share_prompt=share,
                      length_multiple=32 if padding == "left" else 0)  # both row-length rules
  padded = _left_pad(batch) if padding == "left" else batch
  forward = jax.jit(lambda p, b: forward_pairs(model, p, b))
  c0, r0 = forward(params, padded)
  c1, r1 = forward(params, packed)
  np.testing.assert_allclose(c1["reward"], c0["reward"], atol=1e-5)
  np.testing.assert_allclose(r1["reward"], r0["reward"], atol=1e-5)
  grad = jax.jit(jax.value_and_grad(_loss(model)))
  (l0, g0), (l1, g1) = (grad(params, b) for b in (padded, packed))
  np.testing.assert_allclose(l1, l0, atol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
    np.testing.assert_allclose(b, a, atol=1e-5)


def test_sharded_packed_equals_single_device(model_and_params):
  model, params = model_and_params
  data = _pairs(16, seed=2)
  batch = next(PairBatcher(data, 8, buckets=(64,), seed=0))
  packed = pack_batch(batch, data, row_length=128, row_multiple=4, share_prompt=True,
                      length_multiple=32)
  ref = jax.jit(_loss(model))(params, packed)
  mesh = shd.make_mesh((4, 1, 2))
  with jax.set_mesh(mesh):
    got = jax.jit(_loss(model))(params, shd.shard_batch(packed, mesh))
  np.testing.assert_allclose(got, ref, atol=1e-5)


def _losses(workdir):
  with open(workdir / "metrics.jsonl") as f:
    return [r["loss"] for r in map(json.loads, f) if "loss" in r]


def test_packed_run_trains_like_the_padded_run(tmp_path):
  """Padded, packed with the shape ladder (the default) and packed with exact shapes: the same
  losses step by step (the default data.share_prompt=True)."""
  runs = {}
  for name, packing, ladder in (("padded", False, True), ("ladder", True, True),
                                ("exact", True, False)):
    c = fast_config(bt_config.get_config("tiny"), steps=3)
    c.data.packing = packing
    c.data.pack_ladder = ladder
    c.data.max_length = 64
    c.data.token_cache = "off"
    get("bt").train(c, str(tmp_path / name))
    runs[name] = _losses(tmp_path / name)
  assert len(runs["ladder"]) == 3
  np.testing.assert_allclose(runs["ladder"], runs["padded"], atol=1e-4)
  np.testing.assert_allclose(runs["exact"], runs["padded"], atol=1e-4)


@pytest.mark.parametrize("reg,share", [("sft", False), ("dpo_ref", False), ("sft", True),
                                       ("dpo_ref", True)])
def test_packed_equals_padded_for_grm_regularisers(reg, share):
  """GRM's LM regularisers read each packed sequence's response span: same loss, metrics and
  gradients as the padded batch."""
  import ml_collections as mlc
  from rmjax.models.llama import Llama
  from rmjax.tasks import grm
  cfg = preset_config("tiny")
  model = RewardModel(cfg, keep_lm_logits=True)
  ids = jnp.zeros((2, 8), jnp.int32)
  params = model.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids))["params"]
  ref_lm = Llama(cfg) if reg == "dpo_ref" else None
  if ref_lm is not None:
    params = dict(params, reference=ref_lm.init(jax.random.PRNGKey(5), ids, jnp.ones_like(ids))["params"])
  loss_cfg = mlc.ConfigDict(dict(alpha=0.5, beta=0.1, reg=reg, use_margin=False,
                                 label_smoothing=0.0, centering_coef=0.0))
  loss_fn = grm.grm_loss_fn(model, loss_cfg, ref_lm)
  data = _pairs(10, seed=4, empty_chosen=share)
  batch = next(PairBatcher(data, 8, buckets=(64,), seed=0))
  packed = pack_batch(batch, data, row_length=96, share_prompt=share)
  grad = jax.jit(jax.value_and_grad(lambda p, b: loss_fn(p, b, None), has_aux=True))
  (l0, m0), g0 = grad(params, batch)
  (l1, m1), g1 = grad(params, packed)
  np.testing.assert_allclose(l1, l0, atol=1e-5)
  for k in m0:
    np.testing.assert_allclose(m1[k], m0[k], atol=1e-4, rtol=1e-5, err_msg=k)
  for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
    np.testing.assert_allclose(b, a, atol=1e-5)


def test_process_blocks_pack_apart_and_equal_the_global_batch(model_and_params):
  """Several processes: each packs its own block of pairs, pads to the agreed row count and
  points at its block's global rows; side by side the blocks give the one-process loss."""
  from rmjax.data.packing import PackedBatches
  model, params = model_and_params
  data = _pairs(16, seed=6)
  whole = next(PairBatcher(data, 8, buckets=(64,), seed=0))
  blocks = [PairBatcher(data, 8, buckets=(64,), seed=0, process_index=i, process_count=2)
            for i in range(2)]
  firsts = [pack_batch(next(PairBatcher(data, 8, buckets=(64,), seed=0, process_index=i,
                                        process_count=2)), data, 96, share_prompt=True,
                       length_multiple=16) for i in range(2)]
  rows, length = (max(f["input_ids"].shape[d] for f in firsts) for d in (0, 1))
  agreed = []
  packed = [next(PackedBatches(b, 96, 1, True, block=(i, 2), length_multiple=16,
                               agree=lambda shape: agreed.append(shape) or (rows, length)))
            for i, b in enumerate(blocks)]
  assert sorted(agreed) == sorted(f["input_ids"].shape for f in firsts)
  glued = {k: np.concatenate([p[k] for p in packed]) for k in packed[0]}
  assert glued["input_ids"].shape == (2 * rows, length)
  np.testing.assert_array_equal(np.sort(glued["index"]), np.sort(whole["index"]))
  ref = _loss(model)(params, whole)
  np.testing.assert_allclose(_loss(model)(params, glued), ref, atol=1e-5)
