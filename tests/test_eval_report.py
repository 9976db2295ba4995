"""`rmjax eval` on a tiny trained BT: JSON + PNG + Markdown per data spec, names that never
collide, and the accounting n_in == n_scored + sum(n_dropped)."""

import gzip
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from configs import bt as bt_config
from rmjax import main as rmjax_main  # defines every command's flags
from rmjax import tasks
from rmjax.commands import eval as eval_cmd
from rmjax.errors import ConfigError
from rmjax.eval import report_files
from rmjax.eval.metrics import calibration_bins, pair_report
from _util import fast_config

REPO = pathlib.Path(__file__).resolve().parents[1]

# tiny models built again and again in this module: their compiles are shared (conftest)
pytestmark = pytest.mark.usefixtures("jax_compile_cache")
ROWS = [{"prompt": "Say something kind about dogs.", "chosen": "good great dogs. " * (i + 1),
         "rejected": "bad dogs.", "subset": f"s{i % 2}"} for i in range(6)]
ROWS += [{"prompt": "q", "chosen": "same", "rejected": "same"},  # identical: dropped, counted
         {"prompt": "Say something kind about cats.", "chosen": "great cats.", "rejected": ""}]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  wd = tmp_path_factory.mktemp("eval_report") / "bt"
  c = fast_config(bt_config.get_config("tiny"), steps=2, train_pairs=32, eval_pairs=8)
  tasks.get("bt").train(c, str(wd))
  return wd


def run_eval(*argv):
  """`rmjax eval ARGV` in this process (absl flags parsed, then reset) -> the report dict."""
  flags = rmjax_main.FLAGS
  flags(["rmjax", "eval", *map(str, argv)])
  try:
    eval_cmd.main()
  finally:
    flags.unparse_flags()
  return flags


def write_pairs(path, rows):
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "wt") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows))
  return path


def test_eval_writes_json_png_md_without_collisions(workdir, tmp_path, capsys):
  plain = write_pairs(tmp_path / "plain.jsonl", ROWS)
  gz = write_pairs(tmp_path / "plain.jsonl.gz", ROWS[:6])
  reports = []
  for data in (plain, gz):
    run_eval(f"--workdir={workdir}", f"--data={data}")
    reports.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
  a, b = reports
  assert a["files"]["json"] != b["files"]["json"]
  for rep in reports:
    for kind in ("json", "png", "md"):
      path = pathlib.Path(rep["files"][kind])
      assert path.parent == workdir / "eval" and path.stat().st_size > 0, kind
    assert pathlib.Path(rep["files"]["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(pathlib.Path(rep["files"]["json"]).read_text())
    assert saved["accuracy"] == rep["accuracy"] and saved["accounting"] == rep["accounting"]
    acc = rep["accounting"]
    assert acc["n_in"] == acc["n_scored"] + sum(acc["n_dropped"].values())
    assert acc["n_scored"] == rep["n"] and 1 <= acc["n_truncated"] < rep["n"]  # long chosen
    assert set(rep["length_baseline_per_subset"]) == set(rep["per_subset"])
    assert sum(rep["calibration"]["n"]) == rep["n"]
  assert {k: v for k, v in a["accounting"].items() if k != "n_truncated"} == {
      "n_in": 8, "n_scored": 7, "n_dropped": {"identical": 1}, "n_empty_response": 1}
  assert b["accounting"]["n_in"] == 6 and b["accounting"]["n_dropped"] == {}
  md = pathlib.Path(a["files"]["md"]).read_text()
  assert "| overall | 7 |" in md and "| dropped: identical | 1 |" in md and "| s0 | 3 |" in md
  assert not list((workdir / "eval").glob(".tmp-*"))  # atomic writes leave nothing behind


# pairs over the tiny preset's max_length (128 byte tokens): a long prompt, one long and one
# short response (either side), and one pair that fits
LONG_ROWS = [{"prompt": "Tell me about dogs and their habits. " * (2 + i),
              "chosen": ("Dogs are loyal friends. " * (3 + i)) if i % 2 == 0 else "Yes.",
              "rejected": "No." if i % 2 == 0 else "Cats are better pets. " * (3 + i)}
             for i in range(4)] + [{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go."}]


def test_eval_and_score_read_the_ids_training_read(workdir, tmp_path, capsys, monkeypatch):
  """One truncation rule (rmjax.data.tokenize.truncate): for pairs over max_length, the ids
  `rmjax eval` feeds the model for each response are the ids the training batch holds for it
  (the prompt cut once for both), and a pair's longer response scored alone (`rmjax score`)
  gets its ids too."""
  from rmjax import checkpoints
  from rmjax.checkpoints.workdir import read_config
  from rmjax.data.batching import PairBatcher, tokenize_pairs
  from rmjax.data.specs import load_pairs
  from rmjax.data.tokenize import ChatEncoder
  from rmjax.inference.scorer import Scorer
  path = write_pairs(tmp_path / "long.jsonl", LONG_ROWS)
  config = read_config(str(workdir))
  pairs, _ = load_pairs(str(path))
  enc = ChatEncoder(checkpoints.load_tokenizer(config.model.tokenizer), config.data.max_length)
  tokd, tstats = tokenize_pairs(pairs, enc, token_cache="off")
  batch = next(PairBatcher(tokd, len(pairs), buckets=tuple(config.data.buckets), shuffle=False))
  trained = {side: {int(j): list(ids[m > 0]) for j, ids, m in zip(
      batch["index"], batch[f"{side}_ids"], batch[f"{side}_mask"])} for side in ("chosen", "rejected")}
  assert tstats["truncated"] == 4 and len(pairs) == 5

  fed, scorers = [], []
  score_rows = Scorer.score_rows

  def recording(self, rows, *a, **kw):
    fed.append([list(map(int, r)) for r in rows])
    scorers.append(self)
    return score_rows(self, rows, *a, **kw)
  monkeypatch.setattr(Scorer, "score_rows", recording)
  run_eval(f"--workdir={workdir}", f"--data={path}", f"--out={tmp_path / 'out'}")
  report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert report["accounting"]["n_truncated"] == 4  # counted as before: pairs with a side cut
  (rows,) = fed  # one forward pass: the chosen rows, then the rejected rows
  assert rows == [trained["chosen"][j] for j in range(5)] + [trained["rejected"][j] for j in range(5)]
  assert all(len(r) <= config.data.max_length for r in rows)

  scorer = scorers[0]
  for j, p in enumerate(pairs):
    longer, shorter = sorted(("chosen", "rejected"), key=lambda s: -len(getattr(p, s)))
    alone = scorer.rows([p.messages] * 2, [getattr(p, longer), getattr(p, shorter)])[0]
    assert alone[0] == trained[longer][j]  # `rmjax score` of the longer side: its training ids
    if j < 4:  # the shorter side alone keeps more prompt than it had beside its long partner
      assert alone[1] != trained[shorter][j] and len(alone[1]) > len(trained[shorter][j])


def test_report_names_are_safe_and_distinct():
  specs = ["plain.jsonl", "plain.jsonl.gz", "/a/plain.jsonl", "json:plain.jsonl",
           "hub:HuggingFaceH4/ultrafeedback_binarized:test_prefs", "shared:x@eval",
           "plain.jsonl?limit=3"]
  names = [report_files.report_name(s) for s in specs]
  assert len(set(names)) == len(names)
  assert all("/" not in n and ":" not in n and "?" not in n for n in names)
  assert names[0].startswith("plain.jsonl-") and names[4].startswith("hub_ultrafeedback")


def test_eval_with_model_needs_out(tmp_path):
  with pytest.raises(ConfigError, match="--out is required"):
    run_eval(f"--model=hf:{tmp_path}", f"--data={tmp_path / 'x.jsonl'}")


def test_eval_cli_bad_data_is_one_line_exit_2(workdir, tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "q", "chosen": "a"}\n{"prompt": "q", "chosen": "a", "rejected": 1}\n'
                 '{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
  proc = subprocess.run([sys.executable, "-m", "rmjax", "eval", f"--workdir={workdir}",
                         f"--data={bad}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stdout + proc.stderr
  lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("rmjax: error: 2 bad records:"), proc.stderr
  assert f"{bad}:1: field 'rejected': missing field" in lines[0]
  assert f"{bad}:2: field 'rejected': expected a string" in lines[0]


def test_report_files_for_multi_objective_and_ensemble_reports(tmp_path):
  """The writers take any RM kind's report: objectives get their own panel and table, ensemble
  uncertainty its table (no model needed: numbers made up)."""
  rng = np.random.default_rng(0)
  rc, rr = rng.normal(1, 1, 40), rng.normal(0, 1, 40)
  report = pair_report(rc, rr, ["a", "b"] * 20, [5] * 40, [3] * 40)
  report.update(calibration=calibration_bins(1 / (1 + np.exp(-(rc - rr)))), data="x", step=1,
                objective_accuracy={"helpful": 0.7, "safe": 0.6},
                uncertainty={"auroc_std_vs_error": 0.61, "ece": 0.05},
                accounting={"n_in": 41, "n_scored": 40, "n_dropped": {"invalid": 1},
                            "n_empty_response": 0, "n_truncated": None})
  files = report_files.write_report_files(str(tmp_path), "x", report, rc - rr)
  md = pathlib.Path(files["md"]).read_text()
  assert "| helpful | 0.700 |" in md and "| auroc_std_vs_error | 0.610 |" in md
  assert "| n_truncated | n/a |" in md and "| dropped: invalid | 1 |" in md
  assert pathlib.Path(files["png"]).stat().st_size > 10_000
  assert json.loads(pathlib.Path(files["json"]).read_text())["files"] == files
