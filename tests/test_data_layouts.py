"""TRL's preference layouts (and UltraFeedback) read as TRL reads them, splits of hub names and
saved DatasetDicts, bare paths by extension, every bad input as one DataError/ConfigError
naming the file (and line), all bad records in one error, and the read accounting."""

import gzip
import json
import pathlib
import subprocess
import sys

import pytest

from configs import bt as bt_config
from rmjax import tasks
from rmjax.data import parse_pair, read_pairs
from rmjax.data.pairs import MAX_REPORTED, BadRecords
from rmjax.data.specs import load_pairs, train_eval_pairs
from rmjax.errors import ConfigError, DataError
from rmjax.tasks import common
from rmjax.tasks.pairs import pair_data
from _util import fast_config

REPO = pathlib.Path(__file__).resolve().parents[1]
U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731


def jsonl(path, rows):
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return path


def accounted(stats):
  return stats["n_in"] == stats["kept"] + sum(stats["dropped"].values())


# ---------------------------------------------------------------- the layouts


def test_standard_explicit_prompt():
  ex = parse_pair({"prompt": "The sky is", "chosen": " blue.", "rejected": " green."})
  assert ex.prompt == (("user", "The sky is"),) and (ex.chosen, ex.rejected) == (" blue.", " green.")


def test_standard_implicit_prompt_is_the_common_prefix():
  ex = parse_pair({"chosen": "The sky is blue.", "rejected": "The sky is green."}, "f", 1)
  assert ex.prompt == (("user", "The sky is"),)  # TRL extract_prompt: the space goes right
  assert (ex.chosen, ex.rejected) == (" blue.", " green.")
  with pytest.raises(DataError, match="f:2: field 'rejected': chosen and rejected share no prompt"):
    parse_pair({"chosen": "Blue.", "rejected": "Green."}, "f", 2)


def test_conversational_explicit_prompt():
  ex = parse_pair({"prompt": [U("What color is the sky?")], "chosen": [A("It is blue.")],
                   "rejected": [A("It is green.")]})
  assert ex.prompt == (("user", "What color is the sky?"),)
  assert (ex.chosen, ex.rejected) == ("It is blue.", "It is green.")


def test_conversational_implicit_prompt_longest_common_prefix():
  conv = [U("hi"), A("hello"), U("sky?")]
  ex = parse_pair({"chosen": conv + [A("blue")], "rejected": conv + [A("green")]})
  assert [r for r, _ in ex.prompt] == ["user", "assistant", "user"] and ex.chosen == "blue"
  two = parse_pair({"chosen": conv + [A("blue"), A("really")], "rejected": conv + [A("green")]})
  assert two.chosen == "blue\n\nreally"  # the remaining assistant turns
  with pytest.raises(DataError, match="f:4: field 'rejected': chosen and rejected differ before"):
    parse_pair({"chosen": conv + [A("x")], "rejected": [U("hi"), A("yo"), U("sky?"), A("y")]},
               "f", 4)


def test_ultrafeedback_binarized_does_not_duplicate_the_user_turn():
  row = {"prompt": "How do I boil an egg?", "prompt_id": "abc", "score_chosen": 8.0,
         "score_rejected": 4.0,
         "chosen": [U("How do I boil an egg?"), A("Simmer it for 8 minutes.")],
         "rejected": [U("How do I boil an egg?"), A("Microwave it.")]}
  ex = parse_pair(row)
  assert ex.prompt == (("user", "How do I boil an egg?"),)
  assert (ex.chosen, ex.rejected) == ("Simmer it for 8 minutes.", "Microwave it.")
  completions = parse_pair({"prompt": "q", "chosen": [A("a")], "rejected": [A("b")]})
  assert completions.prompt == (("user", "q"),) and completions.chosen == "a"


def test_empty_response_is_valid_and_counted(tmp_path):
  path = jsonl(tmp_path / "e.jsonl", [{"prompt": "q", "chosen": "a", "rejected": ""},
                                      {"prompt": "q", "chosen": "b", "rejected": "b"},
                                      {"prompt": "r", "chosen": "c", "rejected": "d"}])
  ex, stats = read_pairs(path)
  assert [e.rejected for e in ex] == ["", "d"] and stats["empty_response"] == 1
  assert stats["dropped"] == {"identical": 1} and stats["n_in"] == 3 and accounted(stats)
  with pytest.raises(DataError, match="e.jsonl:1: field 'prompt': empty text"):
    read_pairs(jsonl(tmp_path / "e.jsonl", [{"prompt": "", "chosen": "a", "rejected": ""}]))


# ---------------------------------------------------------------- splits and paths


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  datasets = pytest.importorskip("datasets")
  root = tmp_path_factory.mktemp("saved")
  row = lambda i: {"prompt": f"q{i}", "chosen": [U(f"q{i}"), A("good")],  # noqa: E731
                   "rejected": [U(f"q{i}"), A("bad")]}
  dd = datasets.DatasetDict({"train_prefs": datasets.Dataset.from_list([row(i) for i in range(3)]),
                             "test_prefs": datasets.Dataset.from_list([row(i) for i in range(2)])})
  dd.save_to_disk(str(root / "uf"))
  datasets.DatasetDict({"only": dd["test_prefs"]}).save_to_disk(str(root / "one"))
  dd["train_prefs"].to_parquet(str(root / "p.parquet"))
  return root


def test_hub_split_syntax_on_a_saved_dataset_dict(saved):
  uf = saved / "uf"
  assert len(load_pairs(f"hub:{uf}:train_prefs")[0]) == 3
  ex, stats = load_pairs(f"hub:{uf}?split=test_prefs")
  assert len(ex) == 2 and ex[0].prompt == (("user", "q0"),) and accounted(stats)
  assert len(load_pairs(f"hub:{saved / 'one'}")[0]) == 2  # its only split
  with pytest.raises(ConfigError, match=r"name a split; it has \['train_prefs', 'test_prefs'\]"):
    load_pairs(f"hub:{uf}")
  with pytest.raises(ConfigError, match="no split 'dev'"):
    load_pairs(f"hub:{uf}:dev")
  with pytest.raises(ConfigError, match="two splits"):
    load_pairs(f"hub:{uf}:test_prefs?split=train_prefs")


def test_bare_paths_by_extension(saved, tmp_path):
  row = {"prompt": "q", "chosen": "a", "rejected": "b"}
  jsonl(tmp_path / "a.jsonl", [row])
  with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
    f.write(json.dumps(row) + "\n")
  (tmp_path / "a.json").write_text(json.dumps([row, row]))
  assert [len(load_pairs(str(tmp_path / n))[0]) for n in ("a.jsonl", "a.jsonl.gz", "a.json")] == [
      1, 1, 2]
  assert len(load_pairs(str(saved / "p.parquet"))[0]) == 3
  assert len(load_pairs(f"{saved / 'one'}")[0]) == 2  # a save_to_disk folder
  (tmp_path / "a.csv").write_text("prompt,chosen\n")
  with pytest.raises(ConfigError, match="a.csv: unknown file type; expected a .jsonl"):
    load_pairs(str(tmp_path / "a.csv"))


def test_offline_hub_name_is_one_line_exit_2(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "rmjax", "eval", f"--workdir={tmp_path}",
                         "--data=hub:rmjax-test/no-such-set:test_prefs"], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stdout + proc.stderr
  lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
  assert len(lines) == 1 and "hub:rmjax-test/no-such-set: cannot load the data set" in lines[0]


# ---------------------------------------------------------------- one-line errors


def _gz_bytes(text):
  return gzip.compress(text.encode())


BAD_FILES = [  # (name, bytes, expected message after '<path>:')
    ("dir.jsonl", None, " is a directory"),
    ("bin.jsonl", b"\x00\x01\x02PK\x03", " a binary file"),
    ("trunc.jsonl.gz", _gz_bytes('{"prompt": "q", "chosen": "a", "rejected": "b"}\n' * 50)[:40],
     "truncated or corrupt gzip data"),
    ("plain.jsonl", _gz_bytes("{}\n"), " gzip-compressed data in a file not named .gz"),
    ("fake.jsonl.gz", b'{"prompt": "q"}\n', " named .gz but not gzip-compressed"),
]


@pytest.mark.parametrize("name, data, message", BAD_FILES)
def test_bad_files_are_one_line_data_errors(tmp_path, name, data, message):
  path = tmp_path / name
  if data is None:
    path.mkdir()
  else:
    path.write_bytes(data)
  with pytest.raises(DataError) as err:
    load_pairs(str(path))
  text = str(err.value)
  assert text.startswith(str(path)) and message in text and "\n" not in text, text


def test_invalid_utf8_names_the_line(tmp_path):
  path = tmp_path / "u.jsonl"
  path.write_bytes(b'{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "\xff\xfe"}\n')
  with pytest.raises(DataError, match=r"u.jsonl:2: invalid UTF-8"):
    load_pairs(str(path))


@pytest.mark.parametrize("spec, error, message", [
    ("synthetic:abc", ConfigError, "synthetic:N takes a whole number"),
    ("json:x.jsonl?limit=abc", ConfigError, "limit must be a whole number >= 0, got 'abc'"),
    ("json:x.jsonl?on_invalid=maybe", ConfigError, "on_invalid must be one of"),
    ("parquet:/no/such/file.parquet", DataError, "/no/such/file.parquet: file not found"),
    ("json:/no/such/file.jsonl", DataError, "/no/such/file.jsonl: file not found"),
])
def test_bad_specs_are_one_line_errors(spec, error, message):
  with pytest.raises(error, match=message.replace("?", r"\?")):
    load_pairs(spec)


def test_all_bad_records_in_one_error(tmp_path):
  good = {"prompt": "q", "chosen": "a", "rejected": "b"}
  rows = [good, {"prompt": "q", "chosen": "a"}, "{not json", good,
          {"prompt": "q", "chosen": "a", "rejected": 3}]
  path = jsonl(tmp_path / "f.jsonl", rows)
  with pytest.raises(BadRecords) as err:
    read_pairs(path)
  text = str(err.value)
  assert text.startswith(f"3 bad records: {path}:2: field 'rejected': missing field; "
                         f"{path}:3: malformed JSON"), text
  assert f"{path}:5: field 'rejected': expected a string, got int" in text
  assert (err.value.path, err.value.line, err.value.field) == (str(path), 2, "rejected")
  many = jsonl(tmp_path / "m.jsonl", [{"prompt": "q"}] * (MAX_REPORTED + 5))
  with pytest.raises(DataError, match=rf"^{MAX_REPORTED + 5} bad records: .*; \.\.\. and 5 more$"):
    read_pairs(many)
  ex, stats = read_pairs(path, on_invalid="skip")
  assert len(ex) == 2 and stats["dropped"] == {"invalid": 3} and accounted(stats)


def test_stats_account_for_joins_sides_and_limits(tmp_path):
  a = jsonl(tmp_path / "a.jsonl", [{"prompt": f"q{i}", "chosen": "x", "rejected": "y"}
                                   for i in range(30)] + [{"prompt": "q", "chosen": "z",
                                                           "rejected": "z"}])
  for spec, limit in ((f"json:{a}+synthetic:20", 0), (f"json:{a}@eval", 0), (str(a), 7)):
    ex, stats = load_pairs(spec, limit=limit)
    assert accounted(stats) and stats["kept"] == len(ex), (spec, stats)
  assert load_pairs(str(a), limit=7)[1]["dropped"] == {"identical": 1, "over_limit": 23}


# ---------------------------------------------------------------- training without eval


def test_training_without_eval_and_with_a_tiny_eval_set(tmp_path):
  c = fast_config(bt_config.get_config("tiny"), steps=1, train_pairs=32)
  c.data.eval_source, c.data.eval_fraction, c.train.eval_every = "", 0.0, 1
  assert train_eval_pairs(c)[1] == []
  final = tasks.get("bt").train(c, str(tmp_path / "noeval"))
  assert final["step"] == 1 and not any(k.startswith("eval_") for k in final)
  c.data.eval_source = "synthetic:3"  # fewer than one batch of 8
  _, eval_batches, evals, _ = pair_data(c, common.tokenizer(c))
  weights = [b["weight"].sum() for b in eval_batches()]
  assert len(evals) == 3 and weights == [3.0]
