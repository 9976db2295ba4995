"""Import a pretrained checkpoint into a workdir, or export a trained workdir to HF format.

`--to hf:OUT` writes the reward model in the layout TRL / RewardBench / OpenRLHF load as-is
(`rmjax.checkpoints.hf_export`: LlamaForSequenceClassification, or ArmoRM's layout) with its
tokenizer, chat template and a model card. `--from hf:DIR` of a reward model keeps its head
(and tokenizer) in WORKDIR/hf; a causal LM, GGUF file or preset becomes WORKDIR/hf as a
LlamaForCausalLM backbone, with its tokenizer. Either way `--config.model.spec=hf:WORKDIR/hf`
trains from it. `--from SRC --to hf:OUT` also (or, without --workdir, only) writes SRC as that
HF directory at OUT: a base model (`--from smollm2-135m`) with its tokenizer, ready for TRL. An ensemble is exported as
one num_labels=1 head giving the ensemble's reward (their mean); `--members` keeps K labels.
"""

from __future__ import annotations

import os

from absl import flags

from rmjax import checkpoints
from rmjax.checkpoints import hf_export, hf_rm, model_card
from rmjax.commands.common import FLAGS, require
from rmjax.errors import ConfigError
from rmjax.tasks import runs

SUMMARY = "import hf:DIR / gguf:FILE into --workdir, or export --workdir to hf:OUT"
EXAMPLE = "rmjax convert --workdir /tmp/bt --to hf:/tmp/bt-hf"
USES = ("workdir", "from", "to", "step", "members")

flags.DEFINE_string("from", None, "convert source: hf:DIR | gguf:FILE | preset name")
flags.DEFINE_string("to", None, "convert target: hf:OUT")
flags.DEFINE_bool("members", False, "convert --to: export an ensemble as K labels (one per "
                  "member) instead of one head giving their mean (what TRL/OpenRLHF/RewardBench read)")


def import_to_workdir(src: str, workdir: str) -> str:
  """WORKDIR/hf from `src`; an HF reward model keeps its layout, head and tokenizer."""
  return import_to(src, os.path.join(workdir, "hf"))


def import_to(src: str, out: str) -> str:
  """`src` as an HF directory `out`: a reward model keeps its layout, head and tokenizer; a
  causal LM, GGUF file or preset becomes a LlamaForCausalLM with its tokenizer."""
  where = os.path.expanduser(src[3:]) if src.startswith("hf:") else ""
  if where and hf_rm.is_reward_model(where):
    scorer = runs.load_scorer(src)
    rm = scorer.config.get("objectives", {}).get("names", None)
    hf_export.write_reward_model(out, scorer.model, scorer.params, scorer.tokenizer,
                                 task=hf_rm.rmjax_section(where).get("task", ""), objectives=rm or None,
                                 card={"base": src})
    return out
  cfg, params = checkpoints.load_pretrained(src)
  checkpoints.save_pretrained(params, cfg, f"hf:{out}", tokenizer=_tokenizer_of(src))
  return out


def _tokenizer_of(src: str):
  """The source's tokenizer, or None when it has none (an HF dir holding only weights)."""
  if src.startswith("hf:") and not any(
      os.path.exists(os.path.join(os.path.expanduser(src[3:]), f))
      for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
    return None
  return checkpoints.load_tokenizer(src)


def export_workdir(workdir: str, dst: str, step=None, members: bool = False) -> dict:
  """`--to hf:OUT`: the workdir's reward model, tokenizer and model card; returns config.json."""
  scorer = runs.load_scorer(workdir, step=step)
  config = scorer.config
  names = list(config.get("objectives", {}).get("names", [])) if config.task == "armorm" else None
  card = {"base": config.model.spec,
          "data": {"source": config.data.get("source", ""),
                   "eval_source": config.data.get("eval_source", "")},
          "results": model_card.workdir_results(workdir)}
  params = scorer.params
  if (config.model.get("lora") or {}).get("rank", 0):
    from rmjax.models import lora  # noqa: PLC0415 -- LoRA runs only: fold the adapters in
    params = lora.merge(params, config.model.lora)
  return hf_export.write_reward_model(dst[3:], scorer.model, params, scorer.tokenizer,
                                      task=config.task, max_length=scorer.encoder.max_length,
                                      objectives=names, card=card, step=scorer.step,
                                      members=members)


def main():
  src, dst = FLAGS["from"].value, FLAGS.to
  if not src and not dst:
    raise ConfigError("convert needs --from hf:DIR|gguf:FILE|PRESET (import into --workdir), "
                      "--to hf:OUT (export --workdir), or both (SRC as an HF directory OUT)")
  if dst and (not dst.startswith("hf:") or not dst[3:]):
    raise ConfigError(f"--to must be hf:OUT, got {dst!r}")
  if src:  # into --workdir (WORKDIR/hf) and / or straight to --to hf:OUT
    outs = [import_to_workdir(src, require("workdir"))] if FLAGS.workdir or not dst else []
    if dst:
      outs.append(import_to(src, os.path.expanduser(dst[3:])))
    print(f"converted {src} -> {' and '.join(outs)}")
    return
  workdir = require("workdir")
  conf = export_workdir(workdir, dst, step=FLAGS.step, members=FLAGS.members)
  print(f"exported {workdir} -> {dst[3:]} ({conf['architectures'][0]}, "
        f"pad_token_id {conf.get('pad_token_id')})")
