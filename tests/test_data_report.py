"""The train data report (`data report: {n_in, n_train, n_eval, n_dropped by reason,
n_truncated}` on stdout, the same counts in data_stats.json, `--strict` failing on any drop or
cut) for the methods whose data is not a plain pair source: SALMON, ArmoRM and PPO. One writer
of it: `rmjax.train.run.announce_data` over `data_report`, the function BT's report uses."""

import json
import types

import pytest

from _cli import REPO, run_cli
from rmjax.data import salmon_aggregate as agg
from rmjax.errors import DataError

pytestmark = pytest.mark.usefixtures("jax_compile_cache")
QUIET = ["--config.train.progress=False", "--config.train.tensorboard=False",
         "--config.train.async_checkpoint=False"]


def report_of(out: str) -> dict:
  lines = [l for l in out.splitlines() if l.startswith("data report: ")]
  assert len(lines) == 1, out
  return json.loads(lines[0].split(": ", 1)[1])


def one_line(code, err, *needles):
  lines = [l for l in err.splitlines() if l.strip()]
  assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
  for n in needles:
    assert n in lines[0], lines[0]


def test_salmon_reports_unjudged_records(tmp_path):
  """40 judged records + 3 without scores: the report counts them by reason;
  --strict refuses the file in one line before the workdir exists."""
  records = agg.synthetic_records(40, seed=3)
  extra = [{"id": f"u{i}", "prompt": "p", "output_1": "a", "output_2": "b"} for i in range(3)]
  prefs = tmp_path / "prefs.jsonl"
  prefs.write_text("".join(json.dumps(r) + "\n" for r in records + extra))
  argv = ["train", "--config", f"{REPO}/configs/salmon.py:tiny", f"--workdir={tmp_path}/wd",
          f"--config.salmon.preferences={prefs}", "--config.salmon.eval_preferences=synthetic:8",
          "--config.train.steps=1", "--config.train.batch_size=8", "--config.train.eval_every=0",
          "--config.data.max_length=256", *QUIET]
  code, out, err = run_cli(argv)
  assert code == 0, err
  rep = report_of(out)
  assert rep["n_in"] == 43 and rep["n_dropped"]["no scores (not a judged pair)"] == 3, rep
  assert rep["n_train"] > 0 and rep["n_eval"] > 0 and rep["n_truncated"] == 0, rep
  stats = json.loads((tmp_path / "wd" / "data_stats.json").read_text())
  assert stats["n_in"] == 43 and stats["source"] == str(prefs) and "aggregate" in stats
  code, out, err = run_cli([a.replace("/wd", "/strict") for a in argv] + ["--strict"])
  one_line(code, err, str(prefs), "3 dropped (no scores (not a judged pair))", "--strict")
  assert not (tmp_path / "strict").exists()


def test_armorm_reports_each_train_source(tmp_path):
  """ArmoRM (smoke size) reading its pairs from a file with one identical pair: the report
  counts the ratings, objective pairs and pairs read and the identical pair dropped; --strict
  names the file."""
  pairs = tmp_path / "pairs.jsonl"
  rows = [{"prompt": f"question {i}?", "chosen": f"a good answer {i}", "rejected": f"bad {i}"}
          for i in range(12)] + [{"prompt": "q", "chosen": "same", "rejected": "same"}]
  pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
  argv = ["train", "--config", f"{REPO}/configs/armorm.py:tiny,smoke", f"--workdir={tmp_path}/wd",
          "--config.armorm.stage1=ridge", f"--config.data.source={pairs}", *QUIET]
  code, out, err = run_cli(argv)
  assert code == 0, err
  rep = report_of(out)
  stats = json.loads((tmp_path / "wd" / "data_stats.json").read_text())
  assert rep["n_dropped"] == {"identical": 1} and stats["sources"][str(pairs)] == {
      "n_in": 13, "kept": 12, "dropped": {"identical": 1}}, (rep, stats["sources"])
  assert rep["n_in"] == sum(s["n_in"] for s in stats["sources"].values()) == rep["n_train"] + 1
  code, out, err = run_cli([a.replace("/wd", "/strict") for a in argv] + ["--strict"])
  one_line(code, err, str(pairs), "1 dropped (identical)", "--strict")
  assert not (tmp_path / "strict").exists()


def test_ppo_reports_prompts_and_truncation(capsys, monkeypatch):
  """PPO's report: prompts read and trained on, prompts evaluated (whole rollout batches),
  prompts longer than ppo.prompt_len counted as truncated; --strict refuses them."""
  from rmjax.train import run as train_run  # noqa: PLC0415
  pc = types.SimpleNamespace(prompts="synthetic:6", eval_prompts="synthetic:5", prompt_len=4,
                             rollout_batch=2)
  setup = types.SimpleNamespace(
      train_prompts=[{"prompt": "ab"}, {"prompt": "abcdefg"}] * 3,
      eval_prompts=[{"prompt": "x"}] * 5, encode_prompt=lambda p: list(p.encode()))
  info = train_run.prompt_info(pc, setup)
  config = types.SimpleNamespace(data={"source": "unused"})
  monkeypatch.setattr(train_run, "STRICT", False)  # an earlier in-process --strict run set it
  rep = train_run.announce_data(config, info)
  assert rep == {"n_in": 6, "n_train": 6, "n_eval": 4, "n_dropped": {}, "n_truncated": 3}
  assert report_of(capsys.readouterr().out) == rep
  assert info["eval_prompts_beyond_whole_batches"] == 1
  monkeypatch.setattr(train_run, "STRICT", True)
  with pytest.raises(DataError, match=r"synthetic:6: 3 truncated of 6 records \(--strict"):
    train_run.announce_data(config, info)
