"""The CLI as a user runs it: train -> score -> eval -> convert, and one-line errors on bad input.

The commands run in-process (`_cli.run_cli`: the same entry point, flag parsing and error
handler, no jax import per call); `score` and `eval` on the trained run also run as real
`python -m rmjax` processes, side by side.
"""

import gzip
import json
import os
import types

import pytest

from _cli import REPO, run_cli, run_subprocesses

FAST = ["--config.data.source=synthetic:120", "--config.data.eval_source=synthetic:16",
        "--config.train.batch_size=8", "--config.train.progress=False"]


def rmjax(*args, check=True):
  """`rmjax <args>` in-process: .returncode, .stdout, .stderr."""
  code, out, err = run_cli(args)
  if check:
    assert code == 0, out + err
  return types.SimpleNamespace(returncode=code, stdout=out, stderr=err)


def one_line_error(proc, *needles):
  assert proc.returncode == 2, proc.stdout + proc.stderr
  lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("rmjax: error:"), proc.stderr
  for n in needles:
    assert n in lines[0], lines[0]
  return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  wd = tmp_path_factory.mktemp("run") / "bt"
  proc = rmjax("train", f"--config={REPO}/configs/bt.py:tiny", f"--workdir={wd}",
               "--config.train.steps=4", "--config.train.eval_every=4",
               "--config.train.checkpoint_every=4", *FAST)
  assert "results:" in proc.stdout
  return wd


def test_train_writes_the_workdir_contract(trained):
  for name in ("config.json", "model_config.json", "metrics.jsonl", "checkpoints"):
    assert (trained / name).exists(), name
  rows = [json.loads(l) for l in (trained / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["step"] == 4 and "loss" in rows[-1] and "eval_accuracy" in rows[-1]
  assert list((trained / "tensorboard").iterdir())


def test_score_and_eval(trained, tmp_path):
  inp = tmp_path / "in.jsonl"
  inp.write_text("\n".join(json.dumps(r) for r in [
      {"id": "a", "prompt": "Say something kind about cats.", "response": "good happy cats."},
      {"prompt": [{"role": "user", "content": "Say something harsh about rain."}],
       "response": "awful rain."}]) + "\n")
  out = tmp_path / "out.jsonl"
  pairs = tmp_path / "pairs.jsonl.gz"
  with gzip.open(pairs, "wt") as f:
    for i in range(6):
      f.write(json.dumps({"prompt": "Say something kind about dogs.", "chosen": "good great dogs. " * (i + 1),
                          "rejected": "bad dogs.", "subset": "s%d" % (i % 2)}) + "\n")
  score, evaluate = run_subprocesses(  # real processes, side by side
      ["score", f"--workdir={trained}", f"--data={inp}", f"--out={out}"],
      ["eval", f"--workdir={trained}", f"--data={pairs}"])
  assert score[0] == 0, score[1] + score[2]
  assert evaluate[0] == 0, evaluate[1] + evaluate[2]
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  assert len(rows) == 2 and rows[0]["id"] == "a" and "id" not in rows[1]
  assert all(isinstance(r["reward"], float) for r in rows)

  report = json.loads(evaluate[1].strip().splitlines()[-1])
  assert report["n"] == 6 and set(report["per_subset"]) == {"s0", "s1"}
  assert 0.0 <= report["accuracy"] <= 1.0 and "ece" in report
  assert report["length_baseline_accuracy"] == 1.0
  assert len(list((trained / "eval").glob("pairs.jsonl.gz-*.json"))) == 1  # name from the whole spec


def test_score_reads_config_json_once(trained, tmp_path, monkeypatch):
  from rmjax.checkpoints import workdir  # noqa: PLC0415
  reads, real = [], workdir._read_json

  def counted(path, what):
    reads.append(os.path.basename(path))
    return real(path, what)
  monkeypatch.setattr(workdir, "_read_json", counted)
  inp = tmp_path / "in.jsonl"
  inp.write_text(json.dumps({"prompt": "Say something kind.", "response": "good cats."}) + "\n")
  rmjax("score", f"--workdir={trained}", f"--data={inp}", f"--out={tmp_path / 'out.jsonl'}")
  assert reads.count("config.json") == 1, reads


def test_train_with_the_blocked_attention_backend(tmp_path):
  """`model.attention=blocked` (which an error message tells prompt-shared packing users to
  set) passes the validator, whose backend list is the attention module's own, and trains."""
  wd = tmp_path / "w"
  proc = rmjax("train", f"--config={REPO}/configs/bt.py:tiny", f"--workdir={wd}",
               "--config.model.attention=blocked", "--config.train.steps=1",
               "--config.train.checkpoint_every=1", "--config.train.eval_every=0",
               "--config.train.log_every=1", *FAST)
  assert "results:" in proc.stdout
  assert json.loads((wd / "config.json").read_text())["model"]["attention"] == "blocked"
  rows = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["step"] == 1 and "loss" in rows[-1]


def test_sweep_dry_run_prints_one_command_per_run(tmp_path):
  proc = rmjax("sweep", f"--config={REPO}/configs/bt.py:tiny", f"--workdir={tmp_path}", "--dry_run")
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 4 and all("--config.optim.lr=" in l for l in lines)


def test_unknown_config_key_fails(tmp_path):
  proc = rmjax("train", f"--config={REPO}/configs/bt.py:tiny", f"--workdir={tmp_path}",
               "--config.train.stepz=3", check=False)
  one_line_error(proc, "stepz")


def test_unknown_command_and_task(tmp_path):
  one_line_error(rmjax("fly", check=False), "unknown command 'fly'")
  proc = rmjax("train", f"--config={REPO}/configs/bt.py:tiny", f"--workdir={tmp_path}",
               "--config.task=nope", check=False)
  one_line_error(proc, "unknown task 'nope'")


def test_mesh_that_does_not_fit(tmp_path):
  proc = rmjax("train", f"--config={REPO}/configs/bt.py:tiny", f"--workdir={tmp_path}",
               "--config.mesh.shape=(3,1,1)", *FAST, check=False)
  one_line_error(proc, "mesh shape (3, 1, 1) does not fit")


@pytest.mark.parametrize("content,needle", [
    ('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a",\n',
     "bad.jsonl:2"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"}\n',
     "bad.jsonl:2: field 'rejected'"),
    ('{"prompt": "p", "chosen": ["x"], "rejected": "b"}\n', "bad.jsonl:1: field 'chosen'"),
    ('{"prompt": "p", "chosen": 3, "rejected": "b"}\n', "bad.jsonl:1: field 'chosen'"),
])
def test_bad_training_data_names_file_line_field(tmp_path, content, needle):
  bad = tmp_path / "bad.jsonl"
  bad.write_text(content)
  proc = rmjax("train", f"--config={REPO}/configs/bt.py:tiny", f"--workdir={tmp_path / 'w'}",
               f"--config.data.source=json:{bad}", "--config.data.eval_source=synthetic:8",
               check=False)
  one_line_error(proc, needle)


def test_score_bad_input_and_missing_workdir(trained, tmp_path):
  bad = tmp_path / "in.jsonl"
  bad.write_text('{"prompt": "p", "response": "r"}\n{"prompt": "p"}\n')
  proc = rmjax("score", f"--workdir={trained}", f"--data={bad}", f"--out={tmp_path / 'o'}",
               check=False)
  one_line_error(proc, "in.jsonl:2: field 'response'")
  good = tmp_path / "good.jsonl"
  good.write_text('{"prompt": "p", "response": "r"}\n')
  proc = rmjax("score", f"--workdir={tmp_path / 'nothing'}", f"--data={good}",
               f"--out={tmp_path / 'o'}", check=False)
  one_line_error(proc, "config.json not found")


def test_convert_bad_source(tmp_path):
  one_line_error(rmjax("convert", "--from=gguf:/nope/model.gguf", f"--workdir={tmp_path}",
                       check=False), "/nope/model.gguf")
  one_line_error(rmjax("convert", "--from=no-such-preset", f"--workdir={tmp_path}", check=False),
                 "no-such-preset")
