"""Bad input across the six commands (train, score, eval, convert, sweep, collect): exit 2, one
line on stderr naming the file and line or the config key, no traceback, and nothing that existed
before changed (every byte of the workdirs and inputs hashed before and after).

Nearly every case runs in-process (`_cli.run_cli`: same entry point, no jax import per case);
`test_real_entry_point_agrees` runs a few as real `python -m rmjax` processes. One tiny trained
BT workdir is shared by the module and copied when a case damages it.
"""

import errno
import gzip
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from _cli import REPO, run_cli, run_subprocesses
from rmjax.checkpoints.orbax import Checkpointer
from rmjax.train.lock import LOCK_NAME, WorkdirLock

CFG = f"{REPO}/configs/bt.py:tiny"
FAST = ["--config.data.source=synthetic:64", "--config.data.eval_source=synthetic:8",
        "--config.train.batch_size=8", "--config.train.progress=False",
        "--config.train.tensorboard=False", "--config.train.async_checkpoint=False",
        "--config.train.eval_every=0", "--config.train.log_every=1",
        "--config.optim.warmup_steps=1"]
PENDING = pytest.mark.xfail(strict=False, reason="pending data/convert work")
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
GOOD = {"prompt": "Say something kind about cats.", "response": "good happy cats."}
PAIR = {"prompt": "Say something kind.", "chosen": "good dogs.", "rejected": "bad dogs."}


def tree_hash(*roots) -> str:
  """One digest over every file name and byte under `roots` (missing roots count too)."""
  h = hashlib.sha256()
  for root in map(pathlib.Path, roots):
    h.update(f"<{root}:{root.exists()}>".encode())
    paths = sorted(root.rglob("*")) if root.is_dir() else ([root] if root.exists() else [])
    for p in paths:
      h.update(str(p.relative_to(root) if root.is_dir() else p.name).encode())
      if p.is_file():
        h.update(p.read_bytes())
  return h.hexdigest()


def one_line_error(code, out, err, *needles):
  assert code == 2, f"exit {code}\nstdout: {out}\nstderr: {err}"
  assert "Traceback" not in err and "Traceback" not in out, err
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("rmjax: error:"), err
  for n in needles:
    assert n in lines[0], lines[0]
  return lines[0]


def train_argv(workdir, *extra, config=CFG, steps=2):
  return ["train", f"--config={config}", f"--workdir={workdir}", f"--config.train.steps={steps}",
          f"--config.train.checkpoint_every={steps}", *FAST, *extra]


# In-process runs rebuild the same tiny model many times (each bad data case inits it before
# the data fails): a compilation cache turns the repeats into cache hits.
pytestmark = pytest.mark.usefixtures("jax_compile_cache")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 2-step BT run (checkpoints 1 and 2), shared read-only by the module."""
  wd = tmp_path_factory.mktemp("shared") / "bt"
  code, out, err = run_cli(train_argv(wd, "--config.train.checkpoint_every=1"))
  assert code == 0, err
  return wd


def _copy(trained, tmp_path):
  dst = tmp_path / "wd"
  shutil.copytree(trained, dst)
  return dst


def _state_files(wd, step=2):
  return sorted(p for p in (wd / "checkpoints" / str(step) / "state").rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------ damage
def truncate_ckpt(wd):
  for p in _state_files(wd):
    if p.stat().st_size > 1000:
      p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])


def zero_ckpt(wd):
  for p in _state_files(wd):
    p.write_bytes(b"\0" * p.stat().st_size)


def delete_ckpt_part(wd):
  shutil.rmtree(wd / "checkpoints" / "2" / "state" / "ocdbt.process_0")


def other_size(wd):
  """A model config of another size than the checkpoint's (intermediate_size 128 -> 256)."""
  path = wd / "model_config.json"
  path.write_text(json.dumps(dict(json.loads(path.read_text()), intermediate_size=256)))


def nan_ckpt(wd):
  """A newest checkpoint (step 3) whose parameters are all NaN."""
  raw = Checkpointer(str(wd / "checkpoints"), async_save=False).restore_raw()
  raw = jax.tree_util.tree_map(
      lambda x: np.full_like(x, np.nan) if np.issubdtype(x.dtype, np.floating) else x, raw)
  ck = Checkpointer(str(wd / "checkpoints"), async_save=False, create=True)
  ck.save(3, raw, {"step": 3, "data": None})
  ck.close()


def write(path, text):
  path.write_text(text)
  return path


def jsonl(path, rows):
  return write(path, "".join(json.dumps(r) + "\n" for r in rows))


# ------------------------------------------------------------------------------------- cases
# id -> (build(ctx) -> argv, needles); ctx: tmp (case folder), wd (shared run), copy() (a copy of
# it to damage), inp (a good score input), pairs (a good eval input)
CASES = {
    # train: config values, ranges, enums (named by key, before anything is built)
    "train-steps-0": (lambda c: train_argv(c.tmp / "w", "--config.train.steps=0"), ["train.steps"]),
    "train-steps-neg": (lambda c: train_argv(c.tmp / "w", "--config.train.steps=-5"),
                        ["train.steps", "-5"]),
    "train-checkpoint-every-0": (lambda c: train_argv(c.tmp / "w", "--config.train.checkpoint_every=0"),
                                 ["train.checkpoint_every"]),
    "train-log-every-0": (lambda c: train_argv(c.tmp / "w", "--config.train.log_every=0"),
                          ["train.log_every"]),
    "train-keep-0": (lambda c: train_argv(c.tmp / "w", "--config.train.keep_checkpoints=0"),
                     ["train.keep_checkpoints"]),
    "train-batch-0": (lambda c: train_argv(c.tmp / "w", "--config.train.batch_size=0"),
                      ["train.batch_size"]),
    "train-eval-every-neg": (lambda c: train_argv(c.tmp / "w", "--config.train.eval_every=-1"),
                             ["train.eval_every"]),
    "train-max-length-1": (lambda c: train_argv(c.tmp / "w", "--config.data.max_length=1"),
                           ["data.max_length"]),
    "train-lr-inf": (lambda c: train_argv(c.tmp / "w", "--config.optim.lr=inf"), ["optim.lr", "inf"]),
    "train-lr-nan": (lambda c: train_argv(c.tmp / "w", "--config.optim.lr=nan"), ["optim.lr", "nan"]),
    "train-lr-0": (lambda c: train_argv(c.tmp / "w", "--config.optim.lr=0.0"), ["optim.lr"]),
    "train-lr-neg": (lambda c: train_argv(c.tmp / "w", "--config.optim.lr=-0.1"), ["optim.lr"]),
    "train-b1": (lambda c: train_argv(c.tmp / "w", "--config.optim.b1=1.5"), ["optim.b1"]),
    "train-accum-0": (lambda c: train_argv(c.tmp / "w", "--config.optim.accum_steps=0"),
                      ["optim.accum_steps"]),
    "train-warmup-neg": (lambda c: train_argv(c.tmp / "w", "--config.optim.warmup_steps=-1"),
                         ["optim.warmup_steps"]),
    "train-schedule": (lambda c: train_argv(c.tmp / "w", "--config.optim.schedule=step"),
                       ["optim.schedule", "cosine"]),
    "train-on-overlong": (lambda c: train_argv(c.tmp / "w", "--config.data.on_overlong=chop"),
                          ["data.on_overlong", "truncate"]),
    "train-grm-regulariser": (lambda c: train_argv(c.tmp / "w", "--config.loss.reg=kl",
                                                   config=f"{REPO}/configs/grm.py:tiny"),
                              ["loss.reg", "dpo_ref"]),
    "train-dtype": (lambda c: train_argv(c.tmp / "w", "--config.model.dtype=float8"),
                    ["model.dtype", "bfloat16"]),
    "train-param-dtype": (lambda c: train_argv(c.tmp / "w", "--config.model.param_dtype=int8"),
                          ["model.param_dtype"]),
    "train-attention": (lambda c: train_argv(c.tmp / "w", "--config.model.attention=flash"),
                        ["model.attention", "splash"]),
    "train-remat": (lambda c: train_argv(c.tmp / "w", "--config.model.remat=some"), ["model.remat"]),
    "train-head": (lambda c: train_argv(c.tmp / "w", "--config.model.head=tree"), ["model.head"]),
    "train-eval-fraction": (lambda c: train_argv(c.tmp / "w", "--config.data.eval_fraction=2.0"),
                            ["data.eval_fraction"]),
    "train-mesh-zero": (lambda c: train_argv(c.tmp / "w", "--config.mesh.shape=(0,1,1)"),
                        ["mesh.shape"]),
    "train-mesh-misfit": (lambda c: train_argv(c.tmp / "w", "--config.mesh.shape=(3,1,1)"),
                          ["mesh shape (3, 1, 1) does not fit"]),
    # train: the config file and the command line
    "train-unknown-variant": (lambda c: train_argv(c.tmp / "w", config=f"{REPO}/configs/bt.py:huge"),
                              ["huge", "tiny, smollm2"]),
    "train-unknown-config-arg": (lambda c: train_argv(c.tmp / "w", config=f"{CFG},stepz=3"),
                                 ["stepz"]),
    "train-bad-config-arg-type": (lambda c: train_argv(
        c.tmp / "w", config=f"{REPO}/configs/ensemble.py:tiny,members=many"), ["members"]),
    "train-missing-config-file": (lambda c: train_argv(c.tmp / "w", config=str(c.tmp / "nope.py")),
                                  ["nope.py"]),
    "train-config-syntax-error": (lambda c: train_argv(
        c.tmp / "w", config=str(write(c.tmp / "broken.py", "def get_config(:\n"))),
                                  ["broken.py:1", "syntax"]),
    "train-unknown-key": (lambda c: train_argv(c.tmp / "w", "--config.train.stepz=3"), ["stepz"]),
    "train-bad-override-type": (lambda c: train_argv(c.tmp / "w", "--config.train.steps=abc"),
                                ["train.steps"]),
    "train-unknown-task": (lambda c: train_argv(c.tmp / "w", "--config.task=nope"),
                           ["unknown task 'nope'"]),
    "unknown-command": (lambda c: ["fly"], ["unknown command 'fly'"]),
    "unknown-flag": (lambda c: ["score", "--wokdir=x"], ["wokdir"]),
    # train: workdirs that must not be touched
    "train-other-method-workdir": (lambda c: train_argv(
        c.wd, config=f"{REPO}/configs/grm.py:tiny"), ["task='bt'", "--overwrite"]),
    "train-other-model-workdir": (lambda c: train_argv(c.wd, "--config.model.spec=smollm2-135m"),
                                  ["model.spec"]),
    "train-other-head-workdir": (lambda c: train_argv(c.wd, "--config.model.head=mlp",
                                                      steps=3), ["cannot be restored"]),
    "train-corrupt-config-json": (lambda c: train_argv(
        write(c.copy() / "config.json", "{not json").parent), ["config.json"]),
    "train-strict-damaged-checkpoint": (lambda c: train_argv(  # no silent fall-back to step 1
        c.copy(damage=truncate_ckpt), "--strict", steps=4),
        ["{tmp}/wd/checkpoints/2, is damaged", "newest intact one is step 1", "--strict"]),
    "train-read-only-workdir": (lambda c: train_argv(c.read_only()), ["not writable"]),
    "train-workdir-is-file": (lambda c: train_argv(write(c.tmp / "f", "x")), ["not a directory"]),
    # train: data sources (validated before the model is built)
    "train-bad-data-before-the-model": (lambda c: train_argv(  # data fails first, not hf:
        c.tmp / "w", f"--config.model.spec=hf:{c.tmp}/no-model", "--config.data.source=json:" + str(
            write(c.tmp / "bad.jsonl", json.dumps(PAIR) + "\n{\"prompt\": \n"))), ["bad.jsonl:2"]),
    "train-pack-length-too-short": (lambda c: train_argv(
        c.tmp / "w", "--config.data.packing=True", "--config.data.pack_length=100"),
        ["data.pack_length"]),
    "train-data-missing-file": (lambda c: train_argv(
        c.tmp / "w", f"--config.data.source=json:{c.tmp}/missing.jsonl"), ["missing.jsonl"]),
    "train-data-malformed-line": (lambda c: train_argv(c.tmp / "w", "--config.data.source=json:" + str(
        write(c.tmp / "bad.jsonl", json.dumps(PAIR) + "\n{\"prompt\": \n"))), ["bad.jsonl:2"]),
    "train-data-missing-field": (lambda c: train_argv(c.tmp / "w", "--config.data.source=json:" + str(
        jsonl(c.tmp / "bad.jsonl", [PAIR, {"prompt": "p", "chosen": "a"}]))),
                                 ["bad.jsonl:2", "rejected"]),
    "train-data-wrong-type": (lambda c: train_argv(c.tmp / "w", "--config.data.source=json:" + str(
        jsonl(c.tmp / "bad.jsonl", [dict(PAIR, chosen=3)]))), ["bad.jsonl:1", "chosen"]),
    "train-synthetic-abc": (lambda c: train_argv(c.tmp / "w", "--config.data.source=synthetic:abc"),
                            ["synthetic:abc"]),
    "train-data-directory": (lambda c: train_argv(c.tmp / "w", f"--config.data.source=json:{c.tmp}"),
                             ["directory"]),
    "train-data-binary": (lambda c: train_argv(c.tmp / "w", "--config.data.source=json:" + str(
        c.binary("bin.jsonl"))), ["bin.jsonl"]),
    "train-data-invalid-utf8": (lambda c: train_argv(c.tmp / "w", "--config.data.source=json:" + str(
        c.latin1("latin.jsonl"))), ["latin.jsonl:2"]),
    "train-data-truncated-gzip": (lambda c: train_argv(c.tmp / "w", "--config.data.source=json:" + str(
        c.truncated_gz("cut.jsonl.gz"))), ["cut.jsonl.gz"]),
    "train-data-gzip-without-gz": (lambda c: train_argv(c.tmp / "w", "--config.data.source=json:" + str(
        c.gz_named("pairs.jsonl"))), ["pairs.jsonl"]),
    "train-limit-abc": (lambda c: train_argv(c.tmp / "w", "--config.data.source=json:" + str(
        jsonl(c.tmp / "ok.jsonl", [PAIR])) + "?limit=abc"), ["limit"]),
    "train-hub-offline": (lambda c: train_argv(c.tmp / "w", "--config.data.source=hub:nobody/nothing"),
                          ["nobody/nothing"]),
    "train-parquet-missing": (lambda c: train_argv(
        c.tmp / "w", f"--config.data.source=parquet:{c.tmp}/none.parquet"), ["none.parquet"]),
    "train-hh-without-markers": (lambda c: train_argv(c.tmp / "w", "--config.data.source=json:" + str(
        jsonl(c.tmp / "hh.jsonl", [{"chosen": "no transcript here", "rejected": "nor here"}]))),
                                 ["hh.jsonl:1: field 'rejected'", "no prompt"]),
    "train-hh-format-without-markers": (lambda c: train_argv(
        c.tmp / "w", "--config.data.source=json:" + str(jsonl(c.tmp / "hh.jsonl", [
            {"chosen": "no transcript here", "rejected": "nor here"}])) + "?format=hh_rlhf"),
        ["hh.jsonl:1: field 'chosen'", "hh-rlhf"]),
    "train-empty-file": (lambda c: train_argv(c.tmp / "w", "--config.data.source=json:" + str(
        write(c.tmp / "empty.jsonl", ""))), ["empty.jsonl", "no records"]),
    "train-salmon-all-skipped": (lambda c: train_argv(
        c.tmp / "w", "--config.salmon.preferences=" + str(jsonl(c.tmp / "prefs.jsonl", [PAIR] * 4)),
        config=f"{REPO}/configs/salmon.py:tiny"), ["prefs.jsonl", "all 4 records dropped",
                                                   "no scores"]),
    "train-fails-after-files-written": (lambda c: train_argv(  # overopt writes before the model
        c.tmp / "w", f"--config.model.spec=hf:{c.tmp}/none", config=f"{REPO}/configs/overopt.py:tiny"),
        ["none", "no such checkpoint directory"]),
    "train-strict-drop": (lambda c: train_argv(c.tmp / "w", "--strict", "--config.data.source=json:" + str(
        jsonl(c.tmp / "pairs.jsonl", [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"}
                                      for i in range(40)] + [{"prompt": "q", "chosen": "same",
                                                              "rejected": "same"}]))),
                          ["pairs.jsonl", "1 dropped (identical)", "--strict"]),
    "train-colon-path": (lambda c: train_argv(c.tmp / "w", "--config.data.source=v2:pairs.jsonl"),
                         ["'v2'", "use ./path or json:path"]),
    # score: flags and paths (before the model loads)
    "score-batch-0": (lambda c: c.score("--batch_size=0"), ["--batch_size"]),
    "score-batch-neg": (lambda c: c.score("--batch_size=-3"), ["--batch_size"]),
    "score-no-data": (lambda c: ["score", f"--workdir={c.wd}", f"--out={c.tmp}/o.jsonl"], ["--data"]),
    "score-no-out": (lambda c: ["score", f"--workdir={c.wd}", f"--data={c.inp}"], ["--out"]),
    "score-no-workdir": (lambda c: ["score", f"--data={c.inp}", f"--out={c.tmp}/o.jsonl"],
                         ["--workdir"]),
    "score-out-is-dir": (lambda c: c.score(out=c.tmp), ["--out", "directory"]),
    "score-out-under-file": (lambda c: c.score(out=write(c.tmp / "f", "x") / "o.jsonl"),
                             ["--out", "not a writable directory"]),
    "score-workdir-missing": (lambda c: c.score(wd=c.tmp / "nothing"), ["config.json not found"]),
    # score: the input file, every bad line named
    "score-empty-file": (lambda c: c.score(inp=write(c.tmp / "empty.jsonl", "")),
                         ["empty.jsonl", "no records"]),
    "score-blank-file": (lambda c: c.score(inp=write(c.tmp / "blank.jsonl", "\n \n")),
                         ["blank.jsonl", "no records"]),
    "score-missing-response": (lambda c: c.score(inp=jsonl(c.tmp / "in.jsonl", [GOOD, {"prompt": "p"}])),
                               ["in.jsonl:2: field 'response'"]),
    "score-missing-prompt": (lambda c: c.score(inp=jsonl(c.tmp / "in.jsonl", [{"response": "r"}])),
                             ["in.jsonl:1: field 'prompt'"]),
    "score-response-type": (lambda c: c.score(inp=jsonl(c.tmp / "in.jsonl", [dict(GOOD, response=3)])),
                            ["in.jsonl:1: field 'response'"]),
    "score-all-bad-lines": (lambda c: c.score(inp=jsonl(c.tmp / "in.jsonl", [
        {"prompt": "p"}, GOOD, dict(GOOD, response=None), {"response": "r"}])),
                            ["in.jsonl:1: field 'response'", "in.jsonl:3: field 'response'",
                             "in.jsonl:4: field 'prompt'", "3 bad"]),
    "score-malformed-json": (lambda c: c.score(inp=write(c.tmp / "in.jsonl", json.dumps(GOOD) + "\n{x\n")),
                             ["in.jsonl:2", "malformed JSON"]),
    "score-not-object": (lambda c: c.score(inp=jsonl(c.tmp / "in.jsonl", [[1, 2]])),
                         ["in.jsonl:1", "JSON object"]),
    "score-empty-prompt": (lambda c: c.score(inp=jsonl(c.tmp / "in.jsonl", [dict(GOOD, prompt="")])),
                           ["in.jsonl:1: field 'prompt'"]),
    "score-bad-role": (lambda c: c.score(inp=jsonl(c.tmp / "in.jsonl", [
        dict(GOOD, prompt=[{"role": "wizard", "content": "hi"}])])), ["in.jsonl:1", "role"]),
    "score-data-missing": (lambda c: c.score(inp=c.tmp / "none.jsonl"), ["none.jsonl", "not found"]),
    "score-data-directory": (lambda c: c.score(inp=c.tmp), ["directory"]),
    "score-data-binary": (lambda c: c.score(inp=c.binary("bin.jsonl")), ["bin.jsonl"]),
    "score-data-invalid-utf8": (lambda c: c.score(inp=c.latin1("latin.jsonl")), ["latin.jsonl:2"]),
    "score-data-truncated-gzip": (lambda c: c.score(inp=c.truncated_gz("cut.jsonl.gz")),
                                  ["cut.jsonl.gz"]),
    "score-gzip-without-gz": (lambda c: c.score(inp=c.gz_named("in.jsonl")), ["in.jsonl"]),
    "score-strict-blank-line": (lambda c: c.score("--strict", inp=write(
        c.tmp / "in.jsonl", json.dumps(GOOD) + "\n\n" + json.dumps(GOOD) + "\n")),
                                ["in.jsonl:2", "blank line", "--strict"]),
    # score: the model
    "score-step-missing": (lambda c: c.score("--step=999"), ["step 999", "available steps: 1, 2"]),
    "score-no-model-config": (lambda c: c.score(wd=c.copy(drop="model_config.json")),
                              ["model_config.json"]),
    "score-corrupt-config-json": (lambda c: c.score(wd=write(c.copy() / "config.json", "{oops").parent),
                                  ["config.json"]),
    "score-corrupt-model-config": (lambda c: c.score(wd=write(c.copy() / "model_config.json",
                                                              '{"hidden_sizes": 3}').parent),
                                   ["model_config.json"]),
    "score-truncated-checkpoint": (lambda c: c.score(wd=c.copy(damage=truncate_ckpt)),
                                   ["checkpoints/2", "damaged", "older checkpoints: 1"]),
    "score-other-size-checkpoint": (lambda c: c.score(wd=c.copy(damage=other_size)), [
        "checkpoints/2", "does not match the model", "down_proj/kernel has shape (2, 128, 64) "
        "in the checkpoint, (2, 256, 64) in the model"]),
    "score-zeroed-checkpoint": (lambda c: c.score(wd=c.copy(damage=zero_ckpt)), ["checkpoints/2"]),
    "score-partly-deleted-checkpoint": (lambda c: c.score(wd=c.copy(damage=delete_ckpt_part)),
                                        ["checkpoints/2"]),
    "score-nan-parameters": (lambda c: c.score(wd=c.copy(damage=nan_ckpt)), ["non-finite parameters"]),
    "score-principles-unsupported": (lambda c: c.score(f"--principles={c.inp}"), ["principle"]),
    # eval
    "eval-data-missing": (lambda c: ["eval", f"--workdir={c.wd}", f"--data={c.tmp}/none.jsonl"],
                          ["none.jsonl"]),
    "eval-no-data": (lambda c: ["eval", f"--workdir={c.wd}"], ["--data"]),
    "eval-strict-identical-pair": (lambda c: ["eval", f"--workdir={c.wd}", "--strict", "--data=" + str(
        jsonl(c.tmp / "p.jsonl", [PAIR, {"prompt": "p", "chosen": "same", "rejected": "same"}]))],
        ["p.jsonl", "dropped", "identical", "--strict"]),
    "eval-strict-overlong-pair": (lambda c: ["eval", f"--workdir={c.wd}", "--strict", "--data=" + str(
        jsonl(c.tmp / "p.jsonl", [PAIR, {"prompt": "p", "chosen": "long " * 400, "rejected": "b"}]))],
        ["p.jsonl", "truncated", "--strict"]),
    "eval-model-without-out": (lambda c: ["eval", f"--model=hf:{c.tmp}", f"--data={c.pairs}"],
                               ["--out"]),
    "eval-malformed-line": (lambda c: ["eval", f"--workdir={c.wd}", "--data=" + str(
        write(c.tmp / "p.jsonl", json.dumps(PAIR) + "\n{\n"))], ["p.jsonl:2"]),
    "eval-missing-rejected": (lambda c: ["eval", f"--workdir={c.wd}", "--data=" + str(
        jsonl(c.tmp / "p.jsonl", [PAIR, {"prompt": "p", "chosen": "c"}]))], ["p.jsonl:2", "rejected"]),
    "eval-empty-file": (lambda c: ["eval", f"--workdir={c.wd}", "--data=" + str(
        write(c.tmp / "p.jsonl", ""))], ["p.jsonl"]),
    "eval-step-missing": (lambda c: ["eval", f"--workdir={c.wd}", f"--data={c.pairs}", "--step=7"],
                          ["step 7", "available steps"]),
    "eval-batch-0": (lambda c: ["eval", f"--workdir={c.wd}", f"--data={c.pairs}", "--batch_size=0"],
                     ["--batch_size"]),
    "eval-workdir-missing": (lambda c: ["eval", f"--workdir={c.tmp}/none", f"--data={c.pairs}"],
                             ["config.json not found"]),
    "eval-synthetic-abc": (lambda c: ["eval", f"--workdir={c.wd}", "--data=synthetic:abc"],
                           ["synthetic:abc"]),
    "eval-data-directory": (lambda c: ["eval", f"--workdir={c.wd}", f"--data={c.tmp}"],
                            ["{tmp}"]),
    "eval-data-invalid-utf8": (lambda c: ["eval", f"--workdir={c.wd}", "--data=" + str(
        c.latin1("latin.jsonl", PAIR))], ["latin.jsonl:2"]),
    "eval-data-truncated-gzip": (lambda c: ["eval", f"--workdir={c.wd}", "--data=" + str(
        c.truncated_gz("cut.jsonl.gz", PAIR))], ["cut.jsonl.gz"]),
    "eval-hub-offline": (lambda c: ["eval", f"--workdir={c.wd}", "--data=hub:nobody/nothing:test"],
                         ["nobody/nothing"]),
    "eval-truncated-checkpoint": (lambda c: ["eval", f"--workdir={c.copy(damage=truncate_ckpt)}",
                                             f"--data={c.pairs}"], ["checkpoints/2"]),
    # convert
    "convert-neither": (lambda c: ["convert", f"--workdir={c.tmp}/w"], ["--from", "--to"]),
    "convert-from-to-not-hf": (lambda c: ["convert", "--from=tiny", f"--to=gguf:{c.tmp}/o"],
                               ["--to must be hf:"]),
    "convert-to-not-hf": (lambda c: ["convert", f"--workdir={c.wd}", f"--to=gguf:{c.tmp}/o"],
                          ["--to must be hf:"]),
    "convert-no-workdir": (lambda c: ["convert", "--from=tiny"], ["--workdir"]),
    "convert-gguf-missing": (lambda c: ["convert", "--from=gguf:/nope/model.gguf",
                                        f"--workdir={c.tmp}/w"], ["/nope/model.gguf"]),
    "convert-unknown-preset": (lambda c: ["convert", "--from=no-such-preset", f"--workdir={c.tmp}/w"],
                               ["no-such-preset"]),
    "convert-step-missing": (lambda c: ["convert", f"--workdir={c.wd}", f"--to=hf:{c.tmp}/o",
                                        "--step=5"], ["step 5", "available steps"]),
    "convert-workdir-missing": (lambda c: ["convert", f"--workdir={c.tmp}/none", f"--to=hf:{c.tmp}/o"],
                                ["config.json not found"]),
    "convert-hf-empty-dir": (lambda c: ["convert", f"--from=hf:{c.tmp}", f"--workdir={c.tmp}/w"],
                             ["{tmp}", "config.json"]),
    "convert-hf-corrupt-config": (lambda c: ["convert", "--from=hf:" + str(write(
        c.hfdir() / "config.json", "{oops").parent), f"--workdir={c.tmp}/w"], ["config.json"]),
    "convert-hf-index-traversal": (lambda c: ["convert", "--from=hf:" + str(c.traversal_index()),
                                              f"--workdir={c.tmp}/w"], ["../../elsewhere"]),
    # sweep
    "sweep-no-config": (lambda c: ["sweep", f"--workdir={c.tmp}/s"], ["--config"]),
    "sweep-no-workdir": (lambda c: ["sweep", f"--config={CFG}"], ["--workdir"]),
    "sweep-no-grid": (lambda c: ["sweep", f"--config={REPO}/configs/salmon.py:tiny",
                                 f"--workdir={c.tmp}/s"], ["get_sweep"]),
    "sweep-unknown-variant": (lambda c: ["sweep", f"--config={REPO}/configs/bt.py:huge",
                                         f"--workdir={c.tmp}/s"], ["huge"]),
    "sweep-bad-override": (lambda c: ["sweep", f"--config={CFG}", f"--workdir={c.tmp}/s",
                                      "--config.train.steps=0", "--dry_run"], ["train.steps"]),
    "sweep-override-clash": (lambda c: ["sweep", f"--config={CFG}", f"--workdir={c.tmp}/s",
                                        "--config.optim.lr=0.1", "--dry_run"], ["optim.lr", "grid"]),
    # collect
    "collect-no-workdir": (lambda c: ["collect", f"--config={REPO}/configs/salmon.py:tiny"],
                           ["--workdir"]),
    "collect-no-collect-step": (lambda c: ["collect", f"--config={CFG}", f"--workdir={c.tmp}/c"],
                                ["has no collect step"]),
    "collect-steps-0": (lambda c: ["collect", f"--config={REPO}/configs/salmon.py:tiny",
                                   f"--workdir={c.tmp}/c", "--config.train.steps=0"], ["train.steps"]),
    "collect-unknown-variant": (lambda c: ["collect", f"--config={REPO}/configs/salmon.py:huge",
                                           f"--workdir={c.tmp}/c"], ["huge"]),
    "collect-missing-config": (lambda c: ["collect", f"--config={c.tmp}/none.py",
                                          f"--workdir={c.tmp}/c"], ["none.py"]),
    "collect-prompt-is-a-list": (lambda c: [
        "collect", f"--config={REPO}/configs/salmon.py:tiny", f"--workdir={c.tmp}/c",
        "--config.collect.prompts=" + str(jsonl(c.tmp / "prompts.jsonl", [{"prompt": "hi"}, ["hi"]]))],
                                 ["prompts.jsonl:2", "JSON object"]),
}
XFAIL: set = set()  # kinds whose fix has not landed yet (none)
NEEDS_NON_ROOT = {"train-read-only-workdir"}  # root writes anywhere


class Ctx:
  """What a case builds its command line from."""

  def __init__(self, tmp, wd):
    self.tmp, self.wd = tmp, wd
    self.inp = jsonl(tmp / "good.jsonl", [GOOD, dict(GOOD, response="")])
    self.pairs = jsonl(tmp / "pairs.jsonl", [PAIR, PAIR])

  def copy(self, drop=None, damage=None):
    dst = self.tmp / "wd"
    if not dst.exists():
      shutil.copytree(self.wd, dst)
    if drop:
      (dst / drop).unlink()
    if damage:
      damage(dst)
    return dst

  def score(self, *extra, wd=None, inp=None, out=None):
    return ["score", f"--workdir={wd or self.wd}", f"--data={inp or self.inp}",
            f"--out={out or self.tmp / 'scores.jsonl'}", *extra]

  def read_only(self):
    d = self.tmp / "ro"
    d.mkdir()
    d.chmod(0o555)
    return d / "w"

  def binary(self, name):
    p = self.tmp / name
    p.write_bytes(bytes(range(256)) * 4)
    return p

  def latin1(self, name, row=GOOD):
    p = self.tmp / name
    p.write_bytes((json.dumps(row) + "\n").encode() + '{"prompt": "caf\u00e9"}\n'.encode("latin-1"))
    return p

  def truncated_gz(self, name, row=GOOD):
    p = self.tmp / name
    data = gzip.compress(("".join(json.dumps(row) + "\n" for _ in range(200))).encode())
    p.write_bytes(data[: len(data) // 2])
    return p

  def gz_named(self, name, row=GOOD):
    p = self.tmp / name
    p.write_bytes(gzip.compress((json.dumps(row) + "\n").encode()))
    return p

  def hfdir(self):
    d = self.tmp / "hf"
    d.mkdir(exist_ok=True)
    return d

  def traversal_index(self):
    d = self.hfdir()
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
        "vocab_size": 512, "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0}))
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.embed_tokens.weight": "../../elsewhere/w.safetensors"}}))
    return d


def _param(name):
  marks = [PENDING] if name in XFAIL else []
  if name in NEEDS_NON_ROOT:
    marks.append(pytest.mark.skipif(ROOT, reason="root can write to a read-only folder"))
  return pytest.param(name, id=name, marks=marks)


@pytest.mark.parametrize("name", [_param(n) for n in CASES])
def test_bad_input(name, trained, tmp_path):
  build, needles = CASES[name]
  ctx = Ctx(tmp_path, trained)
  argv = build(ctx)
  before = tree_hash(tmp_path, trained)
  code, out, err = run_cli(argv)
  one_line_error(code, out, err, *(n.replace("{tmp}", str(tmp_path)) for n in needles))
  assert tree_hash(tmp_path, trained) == before, "a file or workdir changed"


def test_suite_covers_sixty_kinds_over_six_commands():
  commands = {n.split("-")[0] for n in CASES}
  assert len(CASES) >= 60 and {"train", "score", "eval", "convert", "sweep", "collect"} <= commands


# --------------------------------------------------------------- failed runs, NaN, accounting
def test_failed_train_leaves_every_byte_of_the_workdir(trained, tmp_path):
  """Resuming with another method's config, another head (restore fails) or another model
  spec: exit 2, and every file of the existing workdir is byte-identical afterwards."""
  before = tree_hash(trained)
  for extra, config in (([], f"{REPO}/configs/grm.py:tiny"), (["--config.model.head=mlp"], CFG),
                        (["--config.model.spec=smollm2-135m"], CFG)):
    code, out, err = run_cli(train_argv(trained, *extra, config=config, steps=4))
    one_line_error(code, out, err)
    assert tree_hash(trained) == before, extra or config


def test_one_writer_per_workdir(trained, tmp_path):
  """A second train on a workdir another live process holds exits 2 at once in one line naming
  the workdir and the holder's pid, touching nothing; kill -9 of the holder frees it."""
  wd = _copy(trained, tmp_path)
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from rmjax.train.lock import WorkdirLock; "
       "WorkdirLock(sys.argv[1]).__enter__(); print('locked', flush=True); time.sleep(300)",
       str(wd)], cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    before = tree_hash(wd)
    code, out, err = run_cli(train_argv(wd, steps=3))
    one_line_error(code, out, err, str(wd), f"pid {holder.pid}", "another process")
    assert tree_hash(wd) == before
  finally:
    holder.kill()  # SIGKILL: the OS drops the lock, the stale lock file stays
    holder.wait()
  assert (wd / LOCK_NAME).exists()
  with WorkdirLock(str(wd)):
    assert (wd / LOCK_NAME).read_text().split()[0] == str(os.getpid())
  assert not (wd / LOCK_NAME).exists()


def test_two_concurrent_trains_on_one_workdir(tmp_path, jax_compile_cache):
  """Two real `rmjax train` processes started together on one fresh workdir: one trains, the
  other exits 2 at once in one line naming the holder; the survivor's checkpoints, data
  position and metrics equal those of a single uninterrupted run of the same config (no
  checkpoint half-written by the loser, no metric row written twice)."""
  shared, single = tmp_path / "shared", tmp_path / "single"
  code, out, err = run_cli(train_argv(single, "--config.train.checkpoint_every=1", steps=3))
  assert code == 0, err
  argv = [sys.executable, "-m", "rmjax", *train_argv(shared, "--config.train.checkpoint_every=1",
                                                       steps=3)]
  env = dict(os.environ, RMJAX_DEBUG_STEP_DELAY="0.5",  # the winner holds the lock a while
             JAX_COMPILATION_CACHE_DIR=jax_compile_cache,  # the single run's compiled programs
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.1")
  procs = [subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  codes = [p.returncode for p in procs]
  assert sorted(codes) == [0, 2], (codes, [e[-2000:] for _, e in outs])
  winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
  one_line_error(2, *outs[loser], str(shared), "another process", f"pid {procs[winner].pid}")
  assert "data report" not in outs[loser][0]  # refused before any data was read
  a, b = Checkpointer(str(shared / "checkpoints")), Checkpointer(str(single / "checkpoints"))
  assert a.all_steps() == b.all_steps() == [1, 2, 3]
  assert sorted(p.name for p in (shared / "checkpoints").iterdir()) == ["1", "2", "3"]
  for step in (1, 2, 3):
    got, want = a.restore_raw(step), b.restore_raw(step)
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)
    position = lambda wd: json.loads((wd / f"checkpoints/{step}/data/metadata").read_text())
    assert position(shared) == position(single) and position(shared)["data"] is not None
  rows = lambda wd: [{k: v for k, v in json.loads(l).items() if not k.endswith("per_s")}
                     for l in (wd / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows(shared)] == [1, 2, 3] and rows(shared) == rows(single)
  assert not (shared / LOCK_NAME).exists()


def test_damaged_newest_checkpoint_and_a_failed_save(trained, tmp_path, monkeypatch):
  """Resuming past a truncated newest checkpoint (2) falls back to step 1 with one warning line
  naming both; a save that then fails on a full disk (an injected ENOSPC at step 3) exits 2 in
  one line naming the workdir, the step and the OS error, at that save, with step 2 intact."""
  wd = _copy(trained, tmp_path)
  truncate_ckpt(wd)
  real_save = ocp.CheckpointManager.save

  def save(self, step, *args, **kw):
    if step == 3:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(wd / "checkpoints"))
    return real_save(self, step, *args, **kw)
  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  code, out, err = run_cli(train_argv(wd, "--config.train.checkpoint_every=1", steps=4))
  assert code == 2 and "Traceback" not in err, err
  warning, error = [l for l in err.splitlines() if l.strip()]
  assert "step 2, is damaged" in warning and "resuming from step 1" in warning, warning
  assert error == (f"rmjax: error: {wd}: saving the checkpoint of step 3 failed (No space left "
                   "on device); the newest checkpoint, step 2, is intact"), error
  assert '"n_dropped": {}' in out  # the data report on the console
  ck = Checkpointer(str(wd / "checkpoints"))
  assert ck.all_steps() == [1, 2] and (wd / "checkpoints" / "damaged-2").is_dir()
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(ck.restore_raw(2)["params"]))


def test_overwrite_replaces_a_run_of_another_method(trained, tmp_path):
  wd = _copy(trained, tmp_path)
  code, out, err = run_cli(train_argv(wd, "--overwrite", config=f"{REPO}/configs/grm.py:tiny",
                                      steps=1))
  assert code == 0, err
  assert json.loads((wd / "config.json").read_text())["task"] == "grm"
  assert not (tmp_path / "wd.overwrite").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["wd"]


def test_nan_mid_run_stops_and_the_newest_checkpoint_scores(tmp_path):
  """lr=1e30 after a warmup from 0: step 1 is a no-op update (a good checkpoint), step 2's update
  blows the weights up; the run stops with exit 2, the checkpoint whose parameters gave the
  non-finite loss is set aside, and the newest one left is finite and scores."""
  wd = tmp_path / "w"
  code, out, err = run_cli(train_argv(wd, "--config.optim.lr=1e30", "--config.optim.warmup_steps=4",
                                      "--config.optim.schedule=linear",
                                      "--config.train.checkpoint_every=1", steps=4))
  line = one_line_error(code, out, err, "non-finite loss", "last good checkpoint is step",
                        "the step's batch held synthetic:")
  ck = Checkpointer(str(wd / "checkpoints"))
  assert ck.latest_step() is not None and str(ck.latest_step()) in line
  assert list((wd / "checkpoints").glob("diverged-*")), "the poisoned checkpoint is kept aside"
  raw = ck.restore_raw()
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(raw["params"]))
  inp = jsonl(tmp_path / "in.jsonl", [GOOD] * 3)
  code, out, err = run_cli(["score", f"--workdir={wd}", f"--data={inp}", f"--out={tmp_path}/o.jsonl"])
  assert code == 0, err
  rows = [json.loads(l) for l in (tmp_path / "o.jsonl").read_text().splitlines()]
  assert len(rows) == 3 and all(np.isfinite(r["reward"]) for r in rows)


def test_score_accounts_for_every_input_line(trained, tmp_path):
  """Each input line has an output line (carrying its `line`) or a reported reason; an empty
  response is scored; over-long inputs are counted as truncated; --strict refuses both."""
  long = dict(GOOD, id="long", response="words " * 400)
  text = "".join([json.dumps(dict(GOOD, id="a")) + "\n", "\n", json.dumps(dict(GOOD, response="")) + "\n",
                  "   \n", json.dumps(long) + "\n"])
  inp = write(tmp_path / "in.jsonl", text)
  out = tmp_path / "o.jsonl"
  code, stdout, err = run_cli(["score", f"--workdir={trained}", f"--data={inp}", f"--out={out}"])
  assert code == 0, err
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  assert [r["line"] for r in rows] == [1, 3, 5] and rows[0]["id"] == "a" and rows[2]["id"] == "long"
  report = json.loads(err.split("score report: ", 1)[1].splitlines()[0])
  assert report == {"n_in": 5, "n_scored": 3, "n_dropped": {"blank line": 2}, "n_truncated": 1}
  assert report["n_in"] == report["n_scored"] + sum(report["n_dropped"].values())
  assert "[2, 4]" in err  # the dropped lines are named
  only_long = jsonl(tmp_path / "long.jsonl", [long])
  before = tree_hash(tmp_path)
  code, stdout, err = run_cli(["score", f"--workdir={trained}", f"--data={only_long}",
                               f"--out={tmp_path}/strict.jsonl", "--strict"])
  one_line_error(code, stdout, err, "long.jsonl:1", "truncated", "--strict")
  assert tree_hash(tmp_path) == before


def test_sweep_keeps_user_overrides(tmp_path):
  code, out, err = run_cli(["sweep", f"--config={CFG}", f"--workdir={tmp_path}", "--dry_run",
                            "--config.train.steps=7", "--overwrite"])
  assert code == 0, err
  lines = out.strip().splitlines()
  assert len(lines) == 4 and all("--config.train.steps=7" in l and "--overwrite" in l for l in lines)


def test_real_entry_point_agrees(trained, tmp_path):
  """The same one-line errors from a real `python -m rmjax` process (including a sweep whose
  child fails: one line naming the run and its exit code)."""
  ctx = Ctx(tmp_path, trained)
  names = ("train-steps-0", "score-missing-response")
  argvs = [CASES[name][0](ctx) for name in names]
  sweep = ["sweep", f"--config={CFG}", f"--workdir={tmp_path}/s",
           f"--config.data.source=json:{tmp_path}/none.jsonl"]
  *real, swept = run_subprocesses(*argvs, sweep)
  for argv, b in zip(argvs, real):
    a = run_cli(argv)
    assert a[0] == b[0] == 2 and a[2] == b[2], (a, b)
  one_line_error(*swept, "sweep run run000 failed (exit code 2)", "none.jsonl")


def test_every_shipped_config_variant_validates():
  """No false alarms: every family's variants pass the up-front validation."""
  import importlib
  from configs.common import VARIANTS
  from rmjax.train.validate import config_errors
  for family in ("bt", "grm", "ensemble", "salmon", "armorm", "ppo", "grpo", "overopt"):
    module = importlib.import_module(f"configs.{family}")
    for variant in VARIANTS:
      assert config_errors(module.get_config(variant)) == [], (family, variant)


def test_report_json_is_strict(tmp_path):
  """A NaN or inf (an empty subset's accuracy, a diverged metric) is written as null and
  counted: bare NaN is not JSON and strict readers (jq, JavaScript) fail on it."""
  from rmjax.checkpoints.workdir import write_json_atomic  # noqa: PLC0415
  path = tmp_path / "report.json"
  write_json_atomic(str(path), {"accuracy": float("nan"), "per_subset": {"a": np.float32(np.inf)},
                                "margins": np.array([1.0, np.nan]), "n": 3})

  def refuse(token):
    raise ValueError(f"non-JSON constant {token}")
  report = json.loads(path.read_text(), parse_constant=refuse)
  assert report == {"accuracy": None, "per_subset": {"a": None}, "margins": [1.0, None], "n": 3,
                    "n_nonfinite_as_null": 3}
