"""Import a pretrained checkpoint into a workdir, or export a trained workdir to HF format.

`--to hf:OUT` writes the reward model in the layout TRL / RewardBench / OpenRLHF load as-is
(`rmjax.checkpoints.hf_export`: LlamaForSequenceClassification, or ArmoRM's layout) with its
tokenizer, chat template and a model card. `--from hf:DIR` of a reward model keeps its head
(and tokenizer) in WORKDIR/hf; a causal LM, GGUF file or preset becomes WORKDIR/hf as a
LlamaForCausalLM backbone. Either way `--config.model.spec=hf:WORKDIR/hf` trains from it.
"""

from __future__ import annotations

import os

from absl import flags

from rmjax import checkpoints, tasks
from rmjax.checkpoints import hf_export, hf_rm, model_card
from rmjax.commands.common import FLAGS, require
from rmjax.errors import ConfigError

SUMMARY = "import hf:DIR / gguf:FILE into --workdir, or export --workdir to hf:OUT"
EXAMPLE = "rmjax convert --workdir /tmp/bt --to hf:/tmp/bt-hf"
USES = ("workdir", "from", "to", "step")

flags.DEFINE_string("from", None, "convert source: hf:DIR | gguf:FILE | preset name")
flags.DEFINE_string("to", None, "convert target: hf:OUT")


def import_to_workdir(src: str, workdir: str) -> str:
  """WORKDIR/hf from `src`; an HF reward model keeps its layout, head and tokenizer."""
  out = os.path.join(workdir, "hf")
  where = os.path.expanduser(src[3:]) if src.startswith("hf:") else ""
  if where and hf_rm.is_reward_model(where):
    scorer = tasks.load_scorer(src)
    rm = scorer.config.get("objectives", {}).get("names", None)
    hf_export.write_reward_model(out, scorer.model, scorer.params, scorer.tokenizer,
                                 task=hf_rm.rmjax_section(where).get("task", ""), objectives=rm or None,
                                 card={"base": src})
    return out
  cfg, params = checkpoints.load_pretrained(src)
  checkpoints.save_pretrained(params, cfg, f"hf:{out}")
  return out


def export_workdir(workdir: str, dst: str, step=None) -> dict:
  """`--to hf:OUT`: the workdir's reward model, tokenizer and model card; returns config.json."""
  scorer = tasks.load_scorer(workdir, step=step)
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
                                      objectives=names, card=card, step=scorer.step)


def main():
  workdir = require("workdir")
  src, dst = FLAGS["from"].value, FLAGS.to
  if bool(src) == bool(dst):
    raise ConfigError("convert needs exactly one of --from hf:DIR|gguf:FILE (import into --workdir) "
                      "or --to hf:OUT (export from --workdir)")
  if src:
    out = import_to_workdir(src, workdir)
    print(f"converted {src} -> {out}")
    return
  if not dst.startswith("hf:") or not dst[3:]:
    raise ConfigError(f"--to must be hf:OUT, got {dst!r}")
  conf = export_workdir(workdir, dst, step=FLAGS.step)
  print(f"exported {workdir} -> {dst[3:]} ({conf['architectures'][0]}, "
        f"pad_token_id {conf.get('pad_token_id')})")
