"""experiments/benchmarks/vs_trl.py's data dump gives rmjax and TRL the same token ids.

A handful of pairs (some over max_length, so rmjax truncates them), the random `tiny` model and
its exported byte tokenizer: the ids of every row of rmjax's own training batches
(`rmjax.tasks.pairs.pair_data`, what `rmjax train` reads) equal the dump's, step by step; the
batches TRL's RewardTrainer builds from the dump (its dataset preparation, sequential sampler and
collator) hold the same ids in the same order; with `--trl_ids untruncated` TRL's max_length
filter drops exactly the pairs rmjax truncated and keeps the others' ids unchanged.
"""

import json

import numpy as np
import pytest

from experiments.benchmarks import vs_trl

STEPS, BATCH, MAX_LENGTH = 3, 4, 64


def _pairs(path):
  rows = [("Hi?", "Hello.", "No."), ("2+2?", "4", "5"), ("Color?", "Blue.", "x"),
          ("Tell me a story. " * 4, "Once upon a time " * 5, "No."),
          ("Capital of France?", "Paris.", "Rome."), ("Say yes.", "Yes.", "Nope."),
          ("Why?", "Because " * 12, "Dunno."), ("Name a fruit.", "Apple.", "Car."),
          ("Count to three.", "1 2 3", "3 2 1"), ("Sky?", "Blue.", "Green.")]
  with open(path, "w") as f:
    for p, c, r in rows:
      f.write(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  d = tmp_path_factory.mktemp("vs_trl")
  src = d / "pairs.jsonl"
  _pairs(src)
  args = vs_trl.parse_args(["--model", "tiny", "--pairs", "10", "--max_length", str(MAX_LENGTH),
                            "--steps", str(STEPS), "--batch", str(BATCH), "--rank", "4",
                            "--alpha", "8"])
  init = str(d / "init")
  vs_trl.write_init("tiny", init, 0)
  overrides = vs_trl.rmjax_overrides(args, init, str(src))
  overrides["data.token_cache"] = "off"
  dump_path = str(d / "dump.jsonl")
  stats = vs_trl.build_dump(vs_trl.train_config(overrides), dump_path, STEPS)
  return dict(args=args, init=init, overrides=overrides, dump_path=dump_path, stats=stats,
              dump=vs_trl.read_dump(dump_path), dir=d)


def _rows(ids, mask):
  return [r[m == 1].tolist() for r, m in zip(np.asarray(ids), np.asarray(mask))]


def test_dump_is_what_rmjax_trains_on(setup):
  from rmjax import checkpoints
  from rmjax.tasks.pairs import pair_data
  dump = setup["dump"]
  assert len(dump) == STEPS * BATCH  # 12 rows over 10 pairs: the second epoch's order too
  truncated = {r["index"] for r in dump if r.get("truncated")}
  assert truncated and len(truncated) < len({r["index"] for r in dump})
  config = vs_trl.train_config(setup["overrides"])
  batcher = pair_data(config, checkpoints.load_tokenizer(config.model.spec))[0]
  for step in range(STEPS):
    b = next(batcher)
    rows = [r for r in dump if r["step"] == step]
    assert [r["index"] for r in rows] == b["index"].tolist()
    assert [r["chosen_ids"] for r in rows] == _rows(b["chosen_ids"], b["chosen_mask"])
    assert [r["rejected_ids"] for r in rows] == _rows(b["rejected_ids"], b["rejected_mask"])
  for r in dump:
    assert len(r["chosen_ids"]) <= MAX_LENGTH and len(r["rejected_ids"]) <= MAX_LENGTH
    if r.get("truncated"):  # the untruncated ids are longer, and start like the cut ones
      assert max(len(r["full_chosen_ids"]), len(r["full_rejected_ids"])) > MAX_LENGTH


def _trainer(setup, mode):
  pytest.importorskip("trl")
  pytest.importorskip("peft")
  a = setup["args"]
  spec = {"init_dir": setup["init"], "dump": setup["dump_path"], "out": str(setup["dir"] / mode),
          "max_length": a.max_length, "batch": a.batch, "steps": a.steps, "rank": a.rank,
          "alpha": a.alpha, "targets": a.targets, "lr": a.lr, "weight_decay": a.weight_decay,
          "warmup": a.warmup, "final_lr_frac": a.final_lr_frac, "clip": a.clip, "seed": a.seed,
          "grad_ckpt": True, "trl_ids": mode}
  return vs_trl.build_trl_trainer(spec)


def test_trl_batches_hold_the_same_ids_in_the_same_order(setup):
  trainer, given = _trainer(setup, "shared")
  dump = setup["dump"]
  assert given == len(trainer.train_dataset) == len(dump)  # truncated ids: nothing filtered
  loader = iter(trainer.get_train_dataloader())
  for step in range(STEPS):
    b = next(loader)
    rows = _rows(b["input_ids"], b["attention_mask"])
    want = [r for r in dump if r["step"] == step]
    assert rows[:len(want)] == [r["chosen_ids"] for r in want]  # chosen first, then rejected
    assert rows[len(want):] == [r["rejected_ids"] for r in want]
    # and the pad id is no token of any row: transformers pools where rmjax does
    pad = trainer.processing_class.pad_token_id
    assert all(pad not in r for r in rows)


def test_trl_drops_what_rmjax_truncates_and_keeps_the_rest_identical(setup):
  trainer, given = _trainer(setup, "untruncated")
  dump = setup["dump"]
  kept = trainer.train_dataset
  cut = [r for r in dump if r.get("truncated")]
  assert given == len(dump) and len(kept) == len(dump) - len(cut)
  by_index = {r["index"]: r for r in dump if not r.get("truncated")}
  assert [row["index"] for row in kept] == [r["index"] for r in dump if not r.get("truncated")]
  for row in kept:
    assert row["chosen_ids"] == by_index[row["index"]]["chosen_ids"]
    assert row["rejected_ids"] == by_index[row["index"]]["rejected_ids"]
