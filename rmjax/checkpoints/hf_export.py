"""Write a reward model as an HF directory that TRL, RewardBench and OpenRLHF load as-is.

OUT gets: config.json (the layout's architecture, num_labels, a pad_token_id that is no real
token, and an `rmjax` section: kind, task, aggregation and member biases for ensembles, ArmoRM's
prompt pattern, max_length, objective names), model.safetensors (+ lm_head.safetensors for GRM),
the tokenizer with its chat template (`tokenizer_export`), and a README.md model card. Layouts:
`rmjax.checkpoints.hf_rm`. Everything is written to a temp directory beside OUT and renamed into
place, so a failure leaves no half-written OUT (and an existing export is replaced whole).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Optional

from rmjax.checkpoints import hf, hf_rm, model_card, tokenizer_export
from rmjax.errors import CheckpointError


def _check_target(out: str) -> None:
  if os.path.isfile(out):
    raise CheckpointError(f"{out}: exists and is a file; --to hf:OUT needs a directory path")
  if os.path.isdir(out) and os.listdir(out) and not os.path.exists(os.path.join(out, "config.json")):
    raise CheckpointError(f"{out}: exists and is not an HF checkpoint directory; refusing to replace it")


def _swap_in(tmp: str, out: str) -> None:
  """Rename `tmp` to `out`; an existing `out` is moved aside first and removed after."""
  old = None
  if os.path.exists(out):
    old = tempfile.mkdtemp(dir=os.path.dirname(out), prefix=f".{os.path.basename(out)}.old-")
    os.rmdir(old)
    os.replace(out, old)
  os.replace(tmp, out)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def write_reward_model(out: str, model: Any, params: Any, tokenizer: Any, *, task: str = "",
                       max_length: Optional[int] = None, objectives=None, card: Optional[dict] = None,
                       step: Optional[int] = None, members: bool = False) -> dict:
  """Export `model` (RewardModel / ArmoRM) with `params` and `tokenizer` to OUT; returns config.json.

  `card`: model-card facts (base, data, results; see `model_card.render`). `tokenizer` None
  writes no tokenizer (an import whose source had none) and keeps the config's pad id.
  `members`: an ensemble as K labels instead of one mean head (`hf_rm.export_layout`).
  Files get the umask's mode (0644), not safetensors' 0600.
  """
  from safetensors.numpy import save_file  # optional dependency, only for writing
  out = os.path.abspath(os.path.expanduser(out))
  _check_target(out)
  sd, fields, files = hf_rm.export_layout(model, params, task=task, members=members)
  cfg = model.cfg
  conf = dict(hf.config_to_hf(cfg), **fields)
  conf["torch_dtype"] = str(next(iter(sd.values())).dtype)
  rm = dict(conf.get("rmjax", {}))
  pad_note, hf_tok = "the config's pad_token_id", None
  if tokenizer is not None:
    hf_tok, pad_id, pad_note = tokenizer_export.export_tokenizer(tokenizer, cfg.vocab_size,
                                                                 [cfg.eos_token_id])
    conf["pad_token_id"] = pad_id
  if max_length:
    rm["max_length"] = int(max_length)
  if objectives:
    rm["objectives"] = [str(n) for n in objectives]
  rm["pad"] = pad_note
  conf["rmjax"] = rm
  os.makedirs(os.path.dirname(out), exist_ok=True)
  tmp = tempfile.mkdtemp(dir=os.path.dirname(out), prefix=f".{os.path.basename(out)}.tmp-")
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would make OUT private
    save_file(sd, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    for name, tensors in files.items():
      save_file(tensors, os.path.join(tmp, name), metadata={"format": "pt"})
    if conf.get("auto_map"):  # ArmoRM: its modeling code, for trust_remote_code loaders
      shutil.copyfile(os.path.join(os.path.dirname(__file__), "hf_armorm_modeling.py"),
                      os.path.join(tmp, hf_rm.ARMORM_CODE))
    if hf_tok is not None:
      tokenizer_export.save_tokenizer(hf_tok, tmp)
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(conf, f, indent=2)
    text = model_card.render(kind=rm.get("kind", ""), rm=rm, task=task, pad_note=pad_note,
                             max_length=max_length, step=step, **(card or {}))
    with open(os.path.join(tmp, "README.md"), "w") as f:
      f.write(text)
    hf.make_readable(tmp)
    _swap_in(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return conf
