"""rmjax command line: train | score | eval | convert | sweep (see DESIGN.md section 4).

  rmjax train [--config configs/<family>.py[:variant]] [--workdir DIR] [--config.key=value ...]
  rmjax score --workdir DIR --data IN.jsonl --out OUT.jsonl
  rmjax eval  --workdir DIR --data IN.jsonl|shared:NAME
  rmjax convert --from hf:DIR|gguf:FILE --workdir DIR   |   rmjax convert --workdir DIR --to hf:OUT
  rmjax sweep --config configs/<family>.py[:variant] --workdir DIR [--dry_run]
  rmjax compile --config CFG --topology v5e:4x4 [--num_slices N]   (AOT for a TPU slice)

Bad input exits with status 2 and one line naming what is wrong.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

import configs
from rmjax import checkpoints, sharding, tasks
from rmjax.checkpoints.workdir import read_config
from rmjax.data.pairs import iter_records
from rmjax.data.specs import load_pairs
from rmjax.errors import ConfigError, DataError, RmjaxError
from rmjax.eval.armorm_report import objective_accuracies
from rmjax.eval.metrics import pair_report
from rmjax.eval.uncertainty import uncertainty_report

COMMANDS = ("train", "score", "eval", "convert", "collect", "sweep", "compile")

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]",
                                          lock_config=True)
flags.DEFINE_string("workdir", None, "run directory (config, checkpoints, metrics, eval)")
flags.DEFINE_string("data", None, "input data: a JSONL path or a source spec (shared:NAME, hub:NAME)")
flags.DEFINE_string("out", None, "output JSONL (score)")
flags.DEFINE_string("from", None, "convert source: hf:DIR | gguf:FILE | preset name")
flags.DEFINE_string("to", None, "convert target: hf:OUT")
flags.DEFINE_integer("batch_size", 16, "score/eval batch size")
flags.DEFINE_integer("step", None, "checkpoint step for score/eval (default: latest)")
flags.DEFINE_bool("dry_run", False, "sweep: print one command per run instead of running")
flags.DEFINE_string("coordinator", None, "multi-process: coordinator address HOST:PORT "
                    "(jax.distributed; TPU pods and SLURM are detected without flags)")
flags.DEFINE_bool("debug", False, "show the traceback of an unexpected error")
flags.DEFINE_integer("num_processes", None, "multi-process: number of processes")
flags.DEFINE_integer("process_id", None, "multi-process: this process's index")
flags.DEFINE_string("topology", None, "compile: TPU slice to compile for (v5e:4x4, v5p:2x2x1, v5e-16)")
flags.DEFINE_integer("num_slices", 1, "compile: number of slices (the mesh's 'data' axis spans them)")
flags.DEFINE_string("principles", None, "score (SALMON): principle file (JSON list of "
                    "{dimension, definition}) to condition the reward model on")


def default_config_path(family: str = "bt", arg: str = "tiny") -> str:
  return os.path.join(os.path.dirname(configs.__file__), f"{family}.py") + f":{arg}"


def _config():
  config = _CONFIG.value
  if config is None:
    FLAGS["config"].parse(default_config_path())
    config = _CONFIG.value
  return config


def _require(name):
  value = FLAGS[name].value
  if not value:
    raise ConfigError(f"--{name} is required for `rmjax {sys.argv[1]}`")
  return value


def cmd_train():
  sharding.maybe_initialize_distributed(coordinator=FLAGS.coordinator,
                                        num_processes=FLAGS.num_processes,
                                        process_id=FLAGS.process_id)
  config = _config()
  workdir = FLAGS.workdir or os.path.join(
      "workdirs", f"{config.task}-{time.strftime('%Y%m%d-%H%M%S')}")
  final = tasks.get(config.task).train(config, workdir)
  print(json.dumps({"workdir": os.path.abspath(workdir), "final": final}, default=float))
  print(f"results: {os.path.abspath(workdir)} (metrics.jsonl, checkpoints/, tensorboard/)")


def _read_score_inputs(path):
  rows = []
  for line, obj in iter_records(path):
    if not isinstance(obj, dict):
      raise DataError(path, line, None, 'each line must be a JSON object')
    for field in ("prompt", "response"):
      if field not in obj:
        raise DataError(path, line, field, "missing")
    if not isinstance(obj["response"], str) or not obj["response"].strip():
      raise DataError(path, line, "response", "must be a non-empty string")
    rows.append(obj)
  return rows


def _scorer(workdir: str, **kw):
  if FLAGS.batch_size < 1:
    raise ConfigError(f"--batch_size must be >= 1, got {FLAGS.batch_size}")
  return tasks.load_scorer(workdir, step=FLAGS.step, batch_size=FLAGS.batch_size, **kw)


def cmd_score():
  workdir, data, out = _require("workdir"), _require("data"), _require("out")
  rows = _read_score_inputs(data)
  spec = tasks.get(read_config(workdir).task)
  if FLAGS.principles and not spec.takes_principles:
    raise ConfigError(f"--principles needs a principle-conditioned model; task "
                      f"{spec.name!r} takes none")
  scorer = _scorer(workdir)
  res = scorer.score([r["prompt"] for r in rows], [r["response"] for r in rows],
                     principles=FLAGS.principles)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    for i, r in enumerate(rows):
      rec = {"id": r["id"]} if "id" in r else {}
      rec.update(scorer.record(res, i))
      f.write(json.dumps(rec) + "\n")
  print(f"wrote {len(rows)} scores to {out}")


def cmd_eval():
  workdir, data = _require("workdir"), _require("data")
  spec = data if ":" in data.split("/")[0] else f"json:{data}"
  pairs, _ = load_pairs(spec)
  if not pairs:
    raise ConfigError(f"{data}: no pairs to evaluate")
  scorer = _scorer(workdir)
  prompts = [p.messages for p in pairs]
  res_c = scorer.score(prompts, [p.chosen for p in pairs])
  res_r = scorer.score(prompts, [p.rejected for p in pairs])
  report = pair_report(res_c["reward"], res_r["reward"], [p.subset for p in pairs],
                       [len(p.chosen) for p in pairs], [len(p.rejected) for p in pairs])
  if "objectives" in res_c:  # ArmoRM: how each objective alone orders the pairs
    report["objective_accuracy"] = objective_accuracies(
        res_c["objectives"], res_r["objectives"], list(scorer.config.objectives.names))
  if "members" in res_c:  # ensembles: is the spread informative about errors?
    report["uncertainty"] = uncertainty_report(res_c["members"], res_r["members"])
  report.update(data=data, step=scorer.step)
  os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
  name = os.path.basename(data.rstrip("/")).split(".")[0].replace(":", "_") or "eval"
  with open(os.path.join(workdir, "eval", f"{name}.json"), "w") as f:
    json.dump(report, f, indent=2)
  print(json.dumps(report))


def cmd_convert():
  workdir = _require("workdir")
  src, dst = FLAGS["from"].value, FLAGS.to
  if bool(src) == bool(dst):
    raise ConfigError("convert needs exactly one of --from hf:DIR|gguf:FILE (import into --workdir) "
                      "or --to hf:OUT (export from --workdir)")
  if src:
    cfg, params = checkpoints.load_pretrained(src)
    checkpoints.save_pretrained(params, cfg, f"hf:{os.path.join(workdir, 'hf')}")
    print(f"converted {src} -> {os.path.join(workdir, 'hf')}")
    return
  if not dst.startswith("hf:"):
    raise ConfigError(f"--to must be hf:OUT, got {dst!r}")
  scorer = tasks.load_scorer(workdir, step=FLAGS.step)
  checkpoints.save_pretrained(scorer.params["backbone"], scorer.cfg, dst)
  print(f"exported backbone of {workdir} -> {dst[3:]}")


def cmd_collect():
  """Synthetic preference collection (SALMON): the config's task module provides `collect`."""
  config = _config()
  collect = tasks.get(config.task).require("collect")
  print(json.dumps(collect(config, _require("workdir")), default=float))


def cmd_sweep():
  if FLAGS["config"].value is None:
    raise ConfigError("--config is required for `rmjax sweep`")
  config_arg = config_flags.get_config_filename(FLAGS["config"])
  workdir = _require("workdir")
  path, _, arg = config_arg.partition(":")
  spec = importlib.util.spec_from_file_location("_sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ConfigError(f"{path} declares no sweep (get_sweep)")
  runs = module.get_sweep(arg or None)
  for i, overrides in enumerate(runs):
    cmd = [sys.executable, "-m", "rmjax", "train", f"--config={config_arg}",
           f"--workdir={os.path.join(workdir, f'run{i:03d}')}"]
    cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
    if FLAGS.dry_run:
      print(" ".join(cmd))
    else:
      print(f"[sweep {i + 1}/{len(runs)}] {' '.join(cmd[3:])}", flush=True)
      subprocess.run(cmd, check=True)


def cmd_compile():
  """The train steps of --config compiled for --topology from abstract inputs (rmjax.tasks.aot)."""
  from rmjax.tasks import aot  # lazy: only this command needs libtpu's compile-only devices
  aot.compile_config(_config(), _require("topology"), FLAGS.num_slices, FLAGS.workdir)


def main(argv):
  logging.set_verbosity(logging.WARNING)  # orbax/jax INFO chatter hides the results
  if len(argv) < 2 or argv[1] not in COMMANDS:
    if len(argv) > 1:
      raise ConfigError(f"unknown command {argv[1]!r}; use one of: {', '.join(COMMANDS)}")
    argv = argv + ["train"]  # bare `rmjax` runs the built-in default
  {"train": cmd_train, "score": cmd_score, "eval": cmd_eval, "convert": cmd_convert,
   "collect": cmd_collect, "sweep": cmd_sweep, "compile": cmd_compile}[argv[1]]()


def _parse_flags(argv):
  try:
    return FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    msg = str(e).replace("\\n", " ").replace("\n", " ").replace("\\'", "").strip("'\" ")
    kind = "bad flag or config override" if not isinstance(e, flags.Error) else "bad flag"
    print(f"rmjax: error: {kind}: {msg}", file=sys.stderr)
    sys.exit(2)


def run():
  """Console-script entry point: user errors become one line and exit status 2; any other
  exception one line and exit 1 (the traceback only with --debug or RMJAX_DEBUG=1)."""
  try:
    app.run(main, flags_parser=_parse_flags)
  except RmjaxError as e:
    print(f"rmjax: error: {e}".splitlines()[0], file=sys.stderr)
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
