"""`rmjax --help` lists every command; `rmjax <command> --help` / `-h` shows that command's flags
with defaults and an example (exit 0); `--show_config` prints the resolved config."""

import pytest

from rmjax.main import COMMANDS
from _cli import REPO, run_cli, run_subprocesses


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["help"]])
def test_top_level_help_lists_every_command(argv):
  code, out, err = run_cli(argv)
  assert code == 0 and not err
  for name, module in COMMANDS.items():
    assert f"  {name}" in out and module.SUMMARY in out


@pytest.mark.parametrize("name", list(COMMANDS))
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_command_help_names_its_flags_and_an_example(name, flag):
  code, out, err = run_cli([name, flag])
  assert code == 0 and not err
  module = COMMANDS[name]
  assert out.startswith(f"usage: rmjax {name}")
  for used in module.USES:
    assert f"--{used}:" in out
  assert module.EXAMPLE in out


def test_help_for_an_unknown_command_is_one_line_exit_2():
  code, _, err = run_cli(["frobnicate", "--help"])
  assert code == 2 and err.strip().count("\n") == 0 and "frobnicate" in err


def test_show_config_prints_the_resolved_config_and_trains_nothing(tmp_path):
  code, out, _ = run_cli(["train", f"--config={REPO}/configs/bt.py:tiny", f"--workdir={tmp_path}/w",
                          "--config.train.steps=7", "--show_config"])
  assert code == 0 and "steps: 7" in out and "task: bt" in out
  assert not (tmp_path / "w").exists()


def test_real_entry_point_help_exits_0():
  ((code, out, _),) = run_subprocesses(["score", "--help"])
  assert code == 0 and "--out:" in out
