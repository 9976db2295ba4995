"""rmjax command line. `rmjax --help` lists the commands; `rmjax <command> --help` shows one.

  rmjax train [--config configs/<family>.py[:variant]] [--workdir DIR] [--config.key=value ...]
  rmjax score --workdir DIR|--model hf:DIR --data IN.jsonl --out OUT.jsonl
  rmjax eval  --workdir DIR|--model hf:DIR --data IN.jsonl|shared:NAME|hub:NAME:SPLIT
  rmjax compare --workdir A --workdir B [--model hf:DIR] [--rewards FILE] --data SPEC [--ood SPEC] --out DIR
  rmjax convert --from hf:DIR|gguf:FILE --workdir DIR   |   rmjax convert --workdir DIR --to hf:OUT
  rmjax collect --config configs/salmon.py:tiny --workdir DIR
  rmjax sweep --config configs/<family>.py[:variant] --workdir DIR [--dry_run]
  rmjax compile --config CFG --topology v5e:4x4 [--num_slices N]   (AOT for a TPU slice)
  rmjax serve --workdir DIR|--model hf:DIR [--host 127.0.0.1] [--port N] [--token T]

Bad input exits with status 2 and one line naming what is wrong; any other failure one line and
status 1 (the traceback with --debug).
"""

from __future__ import annotations

import os
import sys
import textwrap

from absl import app, flags, logging

from rmjax.commands import (collect, common, compare, compile, convert, eval, score, serve, sweep,
                            train)
from rmjax.errors import ConfigError, RmjaxError

COMMANDS = {"train": train, "score": score, "eval": eval, "compare": compare, "convert": convert,
            "collect": collect, "sweep": sweep, "compile": compile, "serve": serve}
HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull", "-?")
FLAGS = flags.FLAGS
default_config_path = common.default_config_path


def usage() -> str:
  """`rmjax --help`: every command with its one-line summary."""
  width = max(map(len, COMMANDS))
  lines = ["usage: rmjax <command> [flags]   (bare `rmjax` trains the built-in default, "
           "configs/bt.py:tiny)", "", "commands:"]
  lines += [f"  {name:<{width}}  {module.SUMMARY}" for name, module in COMMANDS.items()]
  lines += ["", "`rmjax <command> --help` shows a command's flags with their defaults and an example.",
            "Config keys: `rmjax train --config FILE --show_config` prints the resolved config."]
  return "\n".join(lines)


def command_help(name: str) -> str:
  """`rmjax <command> --help`: the summary, the flags the command reads (with defaults), an example."""
  module = COMMANDS[name]
  lines = [f"usage: rmjax {name} [flags]", "", module.SUMMARY[:1].upper() + module.SUMMARY[1:] + ".",
           *textwrap.wrap(getattr(module, "DETAILS", ""), 100), "", "flags:"]
  for flag in (*module.USES, "debug"):
    f = FLAGS[flag]
    default = "" if f.default is None else f" (default: {f.default})"
    lines.append(f"  --{flag}: {f.help}{default}")
  if "config" in module.USES:
    lines.append("  --config.<key>=<value>: override one config key (see --show_config)")
  lines += ["", f"example:\n  {module.EXAMPLE}"]
  return "\n".join(lines)


def main(argv):
  logging.set_verbosity(logging.WARNING)  # orbax/jax INFO chatter hides the results
  if len(argv) < 2 or argv[1] not in COMMANDS:
    if len(argv) > 1:
      raise ConfigError(f"unknown command {argv[1]!r}; use one of: {', '.join(COMMANDS)} "
                        "(rmjax --help)")
    argv = argv + ["train"]  # bare `rmjax` runs the built-in default
  COMMANDS[argv[1]].main()


def _print_help_and_exit(argv):
  words = [a for a in argv[1:] if not a.startswith("-")]
  if words and words[0] == "help":
    words = words[1:]
  if words and words[0] not in COMMANDS:
    print(f"rmjax: error: unknown command {words[0]!r}; use one of: {', '.join(COMMANDS)}",
          file=sys.stderr)
    sys.exit(2)
  print(command_help(words[0]) if words else usage())
  sys.exit(0)


def _flag_error(e: BaseException) -> str:
  """One line for a flag / config parse failure: a config file's own error (unknown variant,
  syntax error) is named with its file and line, absl's wrapping removed."""
  chain, cause = [], e
  while cause is not None and len(chain) < 10:
    chain.append(cause)
    cause = cause.__cause__ or cause.__context__
  user = [c for c in chain if isinstance(c, RmjaxError)]
  if user:  # the innermost: ml_collections re-raises it with a traceback in the message
    return f"--config: {user[-1]}"
  if isinstance(e, SyntaxError):
    return f"config file {e.filename}:{e.lineno}: syntax error: {e.msg}"
  msg = str(e).replace("\\n", " ").replace("\n", " ").replace("\\'", "").strip("'\" ")
  if isinstance(e, flags.Error):
    return f"bad flag: {msg}"
  if isinstance(e, (AttributeError, KeyError, TypeError, ValueError)):
    return f"bad flag or config override: {msg}"
  return f"bad --config: {type(e).__name__}: {msg}"


def _parse_flags(argv):
  if any(a in HELP_FLAGS for a in argv[1:]) or argv[1:2] == ["help"]:
    _print_help_and_exit(argv)
  try:
    parsed = FLAGS(argv)
    error = common.config_load_error()
  except Exception as e:  # noqa: BLE001 -- flags and config files are user input: one line, exit 2
    if "--debug" in argv:
      raise
    error = _flag_error(e)
  if error:
    print(f"rmjax: error: {' '.join(error.split())}", file=sys.stderr)
    sys.exit(2)
  return parsed


def run():
  """Console-script entry point: user errors become one line and exit status 2; any other
  exception one line and exit 1 (the traceback only with --debug or RMJAX_DEBUG=1)."""
  try:
    app.run(main, flags_parser=_parse_flags)
  except RmjaxError as e:
    print(f"rmjax: error: {e}".splitlines()[0], file=sys.stderr)
    sys.exit(2)
  except OSError as e:  # a path the user named: unwritable, a directory, on a full disk...
    if e.filename is None or os.environ.get("RMJAX_DEBUG") or "--debug" in sys.argv:
      raise
    print(f"rmjax: error: {e.filename}: {e.strerror or e}", file=sys.stderr)
    sys.exit(2)
  except Exception as e:  # noqa: BLE001 -- the last resort: one line, not a traceback
    if os.environ.get("RMJAX_DEBUG") or "--debug" in sys.argv:
      raise
    msg = (str(e).strip().splitlines() or [""])[0]
    print(f"rmjax: error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)",
          file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  run()
