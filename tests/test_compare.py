"""`rmjax compare` on two tiny trained BT workdirs and on rewards files: the tables, JSON (strict),
Markdown and PNG; `rmjax eval`'s per-pair rewards file read back by `compare --rewards`; bad input
(one model, mismatched rewards files, an empty set, a missing path) is one line and exit 2."""

import json
import pathlib

import numpy as np
import pytest

from configs import bt as bt_config
from rmjax import tasks
from rmjax.eval import compare as compare_lib
from _cli import run_cli
from _util import fast_config

# the two tiny models share their compiles (conftest)
pytestmark = pytest.mark.usefixtures("jax_compile_cache")
ROWS = [{"prompt": f"Say something kind about dog {i}.", "chosen": "good great dogs. " * (1 + i % 3),
         "rejected": "bad dogs." * (1 + i % 2), "subset": f"s{i % 2}"} for i in range(8)]


def _write(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("compare")
  out = []
  for seed in (0, 1):
    c = fast_config(bt_config.get_config("tiny"), steps=2, train_pairs=32, eval_pairs=8)
    c.seed = seed
    tasks.get("bt").train(c, str(root / f"bt{seed}"))
    out.append(root / f"bt{seed}")
  return out


def _strict(text):
  return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))


def _one_line_error(code, err, *needles):
  lines = [l for l in err.strip().splitlines() if l.strip()]
  assert code == 2 and len(lines) == 1 and lines[0].startswith("rmjax: error:"), err
  for needle in needles:
    assert needle in lines[0], lines[0]


def test_compare_help():
  code, out, _ = run_cli(["compare", "--help"])
  assert code == 0 and "--rewards:" in out and "--ood:" in out


def test_compare_two_workdirs_and_an_eval_rewards_file(workdirs, tmp_path):
  a, b = workdirs
  ind, ood = _write(tmp_path / "ind.jsonl", ROWS[:5]), _write(tmp_path / "ood.jsonl", ROWS[5:])
  code, out, err = run_cli(["compare", f"--workdir={a}", "--workdir", b, f"--data={ind}",
                            f"--ood={ood}", f"--out={tmp_path / 'cmp'}", "--n_boot=50"])
  assert code == 0, err
  assert "| scope | n | bt0 | bt1 | longer wins |" in out
  rep = _strict((tmp_path / "cmp" / "compare.json").read_text())
  assert (tmp_path / "cmp" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "## Length-matched pairs" in (tmp_path / "cmp" / "compare.md").read_text()
  assert rep["models"] == ["bt0", "bt1"] and rep["ood_sets"] == [str(ood)]
  assert rep["scopes"][str(ind)]["n"] == 5 and rep["scopes"][str(ood)]["n"] == 3
  assert rep["pools"] == {"ID": str(ind), "OOD": str(ood)}
  # `rmjax eval` writes the per-pair rewards; compared with the workdir it came from: identical
  code, out, err = run_cli(["eval", f"--workdir={a}", f"--data={ind}", f"--out={tmp_path / 'ev'}"])
  assert code == 0, err
  ev = json.loads(out.strip().splitlines()[-1])
  lines = [json.loads(l) for l in pathlib.Path(ev["rewards_file"]).read_text().splitlines()]
  assert len(lines) == 5 and set(lines[0]) == {"id", "set", "subset", "reward_chosen",
                                               "reward_rejected", "len_chosen", "len_rejected"}
  assert lines[0]["len_chosen"] == len(ROWS[0]["chosen"]) and "n_ties" in ev
  code, out, err = run_cli(["compare", f"--workdir={a}", f"--rewards={ev['rewards_file']}",
                            f"--data={ind}", f"--out={tmp_path / 'cmp2'}", "--n_boot=20"])
  assert code == 0, err
  scope = _strict((tmp_path / "cmp2" / "compare.json").read_text())["scopes"][str(ind)]
  assert scope["disagreement"]["value"] == 0.0
  accs = [v["value"] for v in scope["accuracy"].values()]
  assert accs[0] == accs[1] == pytest.approx(ev["accuracy"])


def _rewards(path, ids, set_name="pairs.jsonl", seed=0):
  rng = np.random.default_rng(seed)
  _write(path, [{"id": i, "set": set_name, "subset": None, "reward_chosen": float(rng.normal()),
                 "reward_rejected": float(rng.normal()), "len_chosen": 5, "len_rejected": 4}
                for i in ids])
  return path


def test_compare_rewards_files_only(tmp_path):
  files = [_rewards(tmp_path / f"m{k}.jsonl", [f"p{i}" for i in range(12)], seed=k) for k in range(3)]
  code, out, err = run_cli(["compare", *[f"--rewards={f}" for f in files],
                            f"--out={tmp_path / 'o'}", "--n_boot=20"])
  assert code == 0, err
  assert "| pairs.jsonl | 12 |" in out and (tmp_path / "o" / "compare.png").exists()


def test_compare_bad_input_is_one_line_exit_2(workdirs, tmp_path):
  a, b = workdirs
  data = _write(tmp_path / "pairs.jsonl", ROWS[:3])
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  x, y = (_rewards(tmp_path / "x.jsonl", ["p0", "p1", "p2"]),
          _rewards(tmp_path / "y.jsonl", ["p0", "p1", "p9"]))
  out = f"--out={tmp_path / 'o'}"
  _one_line_error(*run_cli(["compare", f"--workdir={a}", f"--data={data}", out])[::2],
                  "at least two models", "got 1")
  _one_line_error(*run_cli(["compare", f"--rewards={x}", f"--rewards={y}", out])[::2],
                  str(y), "mismatched data", "1 of 3 pair ids missing")
  _one_line_error(*run_cli(["compare", f"--workdir={a}", f"--workdir={b}", f"--data={empty}",
                            out])[::2], str(empty))
  _one_line_error(*run_cli(["compare", f"--workdir={a}", f"--workdir={tmp_path / 'nope'}",
                            f"--data={data}", out])[::2], "nope")
  _one_line_error(*run_cli(["compare", f"--rewards={x}", f"--rewards={tmp_path / 'gone.jsonl'}",
                            out])[::2], "gone.jsonl", "not found")
  assert not (tmp_path / "o").exists()


def test_strict_json_turns_nan_into_null():
  assert compare_lib.strict_json({"a": [float("nan"), np.float32(1.5), np.int64(2)]}) == {
      "a": [None, 1.5, 2]}
