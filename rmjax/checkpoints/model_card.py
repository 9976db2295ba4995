"""The README.md model card an HF export carries: what the model is, what it was trained on, how
well it did, and how to load it (the rmjax specifics a consumer must know: pad token, member
biases, ArmoRM's custom layout, GRM's LM head)."""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Optional

EVAL_KEYS = ("n", "accuracy", "length_baseline_accuracy", "margin", "ece")


def workdir_results(workdir: str) -> list:
  """[(source, {metric: value})]: the last eval record of metrics.jsonl and every eval/*.json
  report (`rmjax eval`) with an accuracy, metrics restricted to EVAL_KEYS."""
  out = []
  metrics = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(metrics):
    last = None
    with open(metrics) as f:
      for line in f:
        try:
          rec = json.loads(line)
        except json.JSONDecodeError:
          continue
        if isinstance(rec, dict) and "eval_accuracy" in rec:
          last = rec
    if last is not None:
      vals = {k: last[f"eval_{k}"] for k in EVAL_KEYS if f"eval_{k}" in last}
      out.append((f"training eval set, step {last.get('step')}", vals))
  for path in sorted(glob.glob(os.path.join(workdir, "eval", "*.json"))):
    try:
      with open(path) as f:
        rep = json.load(f)
    except (OSError, json.JSONDecodeError):
      continue
    if isinstance(rep, dict) and isinstance(rep.get("accuracy"), (int, float)):
      name = rep.get("data") or os.path.basename(path)
      out.append((f"rmjax eval {name}", {k: rep[k] for k in EVAL_KEYS if k in rep}))
  return out


def _fmt(v: Any) -> str:
  return f"{v:.4f}" if isinstance(v, float) else str(v)


def _usage(kind: str, rm: dict) -> str:
  if kind == "armorm":
    return ("Layout of RLHFlow's `LlamaForRewardModelWithGating` (e.g. ArmoRM-Llama3-8B-v0.1): load "
            "it with their modeling code (`trust_remote_code`) or with rmjax (`rmjax score --model "
            "hf:DIR`). The gate reads the hidden state at the first token of the last "
            f"`rmjax.prompt_pattern` match ({rm.get('prompt_pattern')}).")
  lines = ["```python",
           "import torch",
           "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
           "tok = AutoTokenizer.from_pretrained(DIR)",
           "rm = AutoModelForSequenceClassification.from_pretrained(DIR)",
           "text = tok.apply_chat_template(messages, tokenize=False)  # prompt + assistant reply",
           "batch = tok([text], return_tensors='pt', add_special_tokens=False)  # as rmjax encodes",
           "logits = rm(**batch).logits"]
  if kind == "ensemble":
    lines += ["members = logits + torch.tensor(rm.config.rmjax['member_bias'])",
              "reward = members.mean(-1)  # rmjax.aggregation = 'mean'"]
  else:
    lines += ["reward = logits[:, 0]"]
  lines.append("```")
  return "\n".join(lines)


def render(*, kind: str, rm: dict, task: str = "", base: str = "", data: Optional[dict] = None,
           results=(), pad_note: str = "", max_length: Optional[int] = None,
           step: Optional[int] = None) -> str:
  """The card's markdown."""
  data = data or {}
  title = {"scalar": "reward model", "ensemble": "reward-model ensemble",
           "armorm": "multi-objective reward model (ArmoRM)"}.get(kind, "reward model")
  out = ["---", "library_name: transformers", "tags: [reward-model, rmjax]", "---", "",
         f"# rmjax {title}", "",
         f"- task: `{task or 'unknown'}` (rmjax method)"
         + (f", exported at training step {step}" if step is not None else ""),
         f"- base model: `{base or 'unknown'}`",
         f"- training data: `{data.get('source', 'unknown')}`"
         + (f"; eval data `{data['eval_source']}`" if data.get("eval_source") else "")]
  if max_length:
    out.append(f"- trained and scored with sequences of at most {max_length} tokens (rmjax cuts "
               "the prompt's oldest tokens first, once for both responses of a pair, then the "
               "responses' tails: `rmjax.data.tokenize.truncate`)")
  out.append(f"- pad token: {pad_note}; pooling: {rm.get('pooling', 'last real token')}")
  if kind == "ensemble":
    out.append(f"- {rm.get('members')} members (num_labels); reward = mean of (logits + "
               "config.json `rmjax.member_bias`): the bias-free `score` layer cannot hold the "
               "members' biases")
  if rm.get("lm_head"):
    out.append(f"- GRM: the trained LM head is in `{rm['lm_head']}` (key `lm_head.weight`); "
               "`AutoModelForCausalLM.from_pretrained(DIR)` then set `lm_head.weight` from it")
  if task == "salmon":
    out.append("- SALMON: the reward model reads the response, the instruction and the principles "
               "(rmjax.data.principles.encode_rm_input); score with `rmjax score --principles`")
  out += ["", "## Results", ""]
  if results:
    out += ["| evaluation | " + " | ".join(EVAL_KEYS) + " |",
            "|---" * (len(EVAL_KEYS) + 1) + "|"]
    for name, vals in results:
      out.append(f"| {name} | " + " | ".join(_fmt(vals.get(k, "")) for k in EVAL_KEYS) + " |")
    out += ["", "`length_baseline_accuracy`: how often the longer response is the chosen one "
            "(a reward model should beat it)."]
  else:
    out.append("No evaluation was recorded in the workdir.")
  out += ["", "## Usage", "", _usage(kind, rm), ""]
  return "\n".join(out)
