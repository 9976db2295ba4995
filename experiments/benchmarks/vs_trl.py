"""rmjax vs TRL's RewardTrainer: one LoRA reward-model recipe, the same token ids, both arms timed
and scored by one rule (issue 28, item 1).

What is equal in both arms:
  model      one HF directory both start from (`init/`): rmjax's dequantized SmolLM2-135M
             (`--model smollm2-135m`; `--smoke`: the random `tiny` preset) written by rmjax's own
             exporter as a LlamaForSequenceClassification whose score head is rmjax's ScalarHead
             init (seed `--seed`), with the exported tokenizer (its pad id is no real token, so
             transformers' "rightmost non-pad token" pooling = rmjax's "last mask token").
  data       rmjax's data API: `--source` (default shared:hh_rlhf_helpful_test@train), the first
             `--pairs` pairs, encoded once by rmjax's ChatEncoder with rmjax's truncation rule
             (`rmjax.tasks.pairs.pair_data`, the function `rmjax train` calls) and walked in
             rmjax's batch order for `--steps` x `--batch` rows. `dump.jsonl` holds those rows'
             ids; TRL reads them as pre-tokenized `chosen_ids` / `rejected_ids` with a sequential
             sampler, so both arms see the same ids in the same batches (tests/test_vs_trl.py;
             the rmjax child's batch log is checked against the dump at run time).
  LoRA       rank `--rank`, alpha `--alpha`, dropout 0, targets `--targets` (q/k/v/o), trainable
             score head (peft `modules_to_save=["score"]`).
  optimizer  AdamW (`--lr`, `--weight_decay`, betas 0.9/0.999, eps 1e-8), global-norm clipping
             `--clip`, linear warmup `--warmup` steps then cosine to `--final_lr_frac` x lr
             (optax warmup_cosine_decay = transformers `cosine_with_min_lr`), float32, BT loss
             -log sigmoid(r_c - r_r) with no margin and no centering term.
What differs (each arm's own default, stated in the output): rmjax runs without remat; TRL runs
with gradient checkpointing (its default; `--trl_grad_ckpt false` turns it off). LoRA A inits
differ (qwix he-uniform vs peft kaiming-uniform; B = 0 in both, so both start from the same
function). rmjax buckets batch lengths (64/128/256...) or packs them (`--packing`); TRL pads each
batch to its longest row.

Over-long pairs (read from the installed sources): rmjax truncates (`rmjax.data.tokenize.truncate`:
the prompt loses its oldest tokens once for both responses, responses lose their tails, counted
in the data report). TRL 1.16's RewardTrainer (`_prepare_dataset`) FILTERS OUT every pair whose
chosen or rejected ids are longer than `RewardConfig.max_length` (default 1024), silently. With
`--trl_ids shared` (default) TRL gets rmjax's truncated ids, so it drops nothing and both arms
train the same pairs; `--trl_ids untruncated` gives TRL the untruncated ids of the pairs rmjax
cut, and its filter drops them (counted), as a TRL user's own tokenization would.

Scoring: each arm's trained model is exported to an HF directory (rmjax: `rmjax convert --to
hf:`, LoRA merged; TRL: peft merge_and_unload + save_pretrained) and both are scored by rmjax's
`Scorer.from_hf` on the same held-out pairs encoded by the same rule: the hh-rlhf split side
rmjax never trains on (`@eval`), LLMBar, RM-Bench, PandaLM (shared: sources, `--eval_pairs` each,
a seeded sample; skipped when ../shared/data is absent). Accuracy counts ties 0.5, with 95%
percentile-bootstrap CIs (`rmjax.eval.stats.bootstrap_ci`) and paired differences
(`paired_diff_ci`).

Per arm: child wall time, train-loop time, s/step (first step, median and mean of the rest, first
10 vs next 10), useful tokens/s (non-pad tokens of the trained rows per second of the train loop,
the first step excluded and included), peak RSS of the child process (`os.wait4`), rows dropped /
truncated. Each arm runs in its own subprocess, one after the other. Prints one JSON object last.

  python -m experiments.benchmarks.vs_trl --smoke
  python -m experiments.benchmarks.vs_trl --pairs 1000 --steps 125 --batch 8 --max_length 256 \
      --rank 16 --eval_pairs 300 [--packing] --out runs/vs_trl

TRL runs in this interpreter (pip install -e ".[bench]") or in `--trl_python PATH` (a venv with
torch, transformers, trl and peft); its child imports neither jax nor rmjax.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

DEFAULT_SOURCE = "shared:hh_rlhf_helpful_test@train"
# held-out sets: name -> spec (hh: the prompt-hash side of the same file rmjax never trains on)
EVAL_SETS = {"hh_heldout": "shared:hh_rlhf_helpful_test@eval", "llmbar": "shared:llmbar",
             "rm_bench": "shared:rm_bench", "pandalm": "shared:pandalm_testset"}
OOD = ("llmbar", "rm_bench", "pandalm")


# ----------------------------------------------------------------------------- configuration

def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--smoke", action="store_true",
                 help="tiny random model, 8 pairs, 4 steps of 2, 16 eval pairs per set")
  p.add_argument("--model", default="smollm2-135m", help="rmjax checkpoint spec both arms start from")
  p.add_argument("--source", default=None, help=f"training pairs (default {DEFAULT_SOURCE}; "
                 "synthetic:N without ../shared/data)")
  p.add_argument("--pairs", type=int, default=1000, help="first N pairs of --source")
  p.add_argument("--max_length", type=int, default=256)
  p.add_argument("--steps", type=int, default=125)
  p.add_argument("--batch", type=int, default=8, help="pairs per step")
  p.add_argument("--rank", type=int, default=16)
  p.add_argument("--alpha", type=float, default=32.0)
  p.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj")
  p.add_argument("--lr", type=float, default=1e-4)
  p.add_argument("--weight_decay", type=float, default=0.0)
  p.add_argument("--warmup", type=int, default=10)
  p.add_argument("--final_lr_frac", type=float, default=0.1)
  p.add_argument("--clip", type=float, default=1.0)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--packing", action="store_true", help="rmjax arm: data.packing=True")
  p.add_argument("--eval_pairs", type=int, default=300, help="held-out pairs per set (0 = no eval)")
  p.add_argument("--eval_sets", default=",".join(EVAL_SETS))
  p.add_argument("--trl_ids", choices=("shared", "untruncated"), default="shared",
                 help="what TRL gets for pairs rmjax truncated: the same truncated ids, or the "
                 "untruncated ones (which its max_length filter then drops)")
  p.add_argument("--trl_grad_ckpt", default="true", choices=("true", "false"),
                 help="TRL's gradient_checkpointing (its default: true)")
  p.add_argument("--trl_python", default=sys.executable,
                 help="interpreter with torch, transformers, trl and peft for the TRL arm")
  p.add_argument("--arms", default="rmjax,trl")
  p.add_argument("--out", default="", help="keep init/, dump.jsonl, the arms' workdirs and "
                 "exports here (default: a temporary directory, removed)")
  p.add_argument("--_trl_child", default="", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.smoke:
    args.model, args.pairs, args.max_length, args.steps, args.batch = "tiny", 8, 128, 4, 2
    args.rank, args.alpha, args.warmup = 4, 8.0, 1
    args.lr = 1e-3
    args.eval_pairs = min(args.eval_pairs, 16)
  return args


def rmjax_overrides(args, init_dir: str, source: str) -> dict:
  """The `--config.KEY=VALUE` overrides of the rmjax arm over configs/bt.py:smollm2; the dump is
  built from the same dict (`train_config`), so the ids it holds are the ones training reads."""
  return {
      "seed": args.seed,
      "model.spec": f"hf:{init_dir}", "model.tokenizer": "", "model.dtype": "float32",
      "model.param_dtype": "float32", "model.head": "scalar",
      "model.lora.rank": args.rank, "model.lora.alpha": float(args.alpha),
      "model.lora.targets": args.targets, "model.lora.dropout": 0.0,
      "data.source": source, "data.eval_source": "", "data.eval_fraction": 0.0,
      "data.limit": args.pairs, "data.max_length": args.max_length,
      "data.on_overlong": "truncate", "data.packing": bool(args.packing),
      "optim.lr": args.lr, "optim.warmup_steps": args.warmup, "optim.schedule": "cosine",
      "optim.final_lr_frac": args.final_lr_frac, "optim.weight_decay": args.weight_decay,
      "optim.b1": 0.9, "optim.b2": 0.999, "optim.eps": 1e-8, "optim.clip_norm": args.clip,
      "optim.accum_steps": 1,
      "train.steps": args.steps, "train.batch_size": args.batch, "train.log_every": 1,
      "train.eval_every": 0, "train.checkpoint_every": args.steps, "train.progress": False,
      "train.tensorboard": False, "train.async_checkpoint": False,
  }


def train_config(overrides: dict):
  """configs/bt.py:smollm2 with `overrides` applied (what `rmjax train` resolves)."""
  from configs import bt  # noqa: PLC0415
  c = bt.get_config("smollm2")
  for key, value in overrides.items():
    parts = key.split(".")
    node = c
    for part in parts[:-1]:
      node = node[part]
    node[parts[-1]] = value
  return c


def cli_args(overrides: dict) -> list:
  return [f"--config.{k}={v}" for k, v in overrides.items()]


# ---------------------------------------------------------------------------------- the data

def write_init(model_spec: str, out: str, seed: int) -> dict:
  """The starting point of both arms: `model_spec` with rmjax's ScalarHead init as an HF
  sequence classifier (rmjax's exporter, tokenizer included)."""
  import flax.linen as nn  # noqa: PLC0415
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from rmjax import checkpoints  # noqa: PLC0415
  from rmjax.checkpoints import hf_export  # noqa: PLC0415
  from rmjax.models.heads import ScalarHead  # noqa: PLC0415
  from rmjax.models.reward_model import RewardModel  # noqa: PLC0415
  cfg, params = checkpoints.load_pretrained(model_spec)
  head = nn.unbox(ScalarHead().init(jax.random.PRNGKey(seed), jnp.zeros((1, cfg.hidden_size)))["params"])
  conf = hf_export.write_reward_model(out, RewardModel(cfg, head="scalar"),
                                      {"backbone": params, "reward_head": head},
                                      checkpoints.load_tokenizer(model_spec), task="bt",
                                      card={"base": model_spec})
  return {"spec": model_spec, "pad_token_id": conf.get("pad_token_id"),
          "pad": conf.get("rmjax", {}).get("pad", "")}


def build_dump(config, path: str, steps: int) -> dict:
  """Walk rmjax's own batches (`pair_data`, unpacked: packing never changes which pairs a step
  holds) for `steps` steps and write one JSON line per row: step, row, index (into the kept
  pairs), chosen_ids / rejected_ids (what rmjax trains on), truncated, and for truncated pairs
  full_chosen_ids / full_rejected_ids (rmjax's encoding before the cut). Returns the data stats."""
  import numpy as np  # noqa: PLC0415
  from rmjax import checkpoints  # noqa: PLC0415
  from rmjax.data.encode_batch import cached_encode_many  # noqa: PLC0415
  from rmjax.data.specs import train_eval_pairs  # noqa: PLC0415
  from rmjax.data.tokenize import ChatEncoder  # noqa: PLC0415
  from rmjax.tasks.pairs import pair_data  # noqa: PLC0415
  unpacked = config.copy_and_resolve_references()
  unpacked.data.packing = False
  tok = checkpoints.load_tokenizer(unpacked.model.tokenizer or unpacked.model.spec)
  batcher, _, _, stats = pair_data(unpacked, tok)
  data = batcher.data
  # untruncated encodings of the kept pairs (kept = every pair: on_overlong=truncate drops none)
  train, _, _ = train_eval_pairs(unpacked)
  encoder = ChatEncoder(tok, unpacked.data.max_length)
  full, _ = cached_encode_many(encoder, [(ex.messages, [ex.chosen, ex.rejected]) for ex in train],
                               unpacked.data.get("token_cache", ""), False)
  if len(full) != len(data):
    raise RuntimeError(f"{len(full)} encoded pairs for {len(data)} kept: the dump needs every pair kept")
  rows = 0
  with open(path, "w") as f:
    for step in range(steps):
      b = next(batcher)
      for row, i in enumerate(b["index"].tolist()):
        c, r = data.chosen[i].tolist(), data.rejected[i].tolist()
        assert b["chosen_ids"][row][b["chosen_mask"][row] == 1].tolist() == c
        assert b["rejected_ids"][row][b["rejected_mask"][row] == 1].tolist() == r
        prompt, (fc, fr) = full[i]
        rec = {"step": step, "row": row, "index": int(i), "source": str(data.sources[i]),
               "chosen_ids": c, "rejected_ids": r}
        if prompt + fc != c or prompt + fr != r:
          rec.update(truncated=True, full_chosen_ids=list(prompt) + list(fc),
                     full_rejected_ids=list(prompt) + list(fr))
        f.write(json.dumps(rec) + "\n")
        rows += 1
  lengths = np.array([[len(c), len(r)] for c, r in zip(data.chosen, data.rejected)])
  return {"pairs_kept": len(data), "rows": rows, "train_tokenize": stats.get("train_tokenize"),
          "read": {k: stats.get(k) for k in ("n_in", "kept", "dropped") if k in stats},
          "mean_tokens_per_pair": round(float(lengths.sum(1).mean()), 1) if len(lengths) else 0}


def read_dump(path: str) -> list:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def trl_rows(dump: list, mode: str = "shared") -> list:
  """The TRL arm's dataset rows, in training order: pre-tokenized `chosen_ids` / `rejected_ids`
  (rmjax's ids; with mode 'untruncated' the ids before rmjax's cut for the pairs it cut) plus
  `index`, the pair's index in rmjax's kept pairs (not a model input)."""
  if mode not in ("shared", "untruncated"):
    raise ValueError(f"mode must be shared or untruncated, got {mode!r}")
  out = []
  for rec in dump:
    full = mode == "untruncated" and rec.get("truncated")
    out.append({"chosen_ids": rec["full_chosen_ids" if full else "chosen_ids"],
                "rejected_ids": rec["full_rejected_ids" if full else "rejected_ids"],
                "index": rec["index"]})
  return out


# ---------------------------------------------------------------------------------- TRL arm
# Imports neither jax nor rmjax: it may run under another interpreter (--trl_python).

def build_trl_trainer(spec: dict):
  """RewardTrainer (peft LoRA) over the dump's rows, in order; `spec`: init_dir, dump, out,
  max_length, batch, steps, rank, alpha, targets, lr, weight_decay, warmup, final_lr_frac, clip,
  seed, grad_ckpt, trl_ids. Returns (trainer, number of rows given to it)."""
  import torch  # noqa: PLC0415
  from datasets import Dataset  # noqa: PLC0415
  from peft import LoraConfig  # noqa: PLC0415
  from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: PLC0415
  from trl import RewardConfig, RewardTrainer  # noqa: PLC0415
  tok = AutoTokenizer.from_pretrained(spec["init_dir"])
  model = AutoModelForSequenceClassification.from_pretrained(spec["init_dir"], num_labels=1,
                                                             dtype=torch.float32)
  rows = trl_rows(read_dump(spec["dump"]), spec.get("trl_ids", "shared"))
  ds = Dataset.from_list(rows)
  lora = LoraConfig(r=spec["rank"], lora_alpha=spec["alpha"], lora_dropout=0.0, bias="none",
                    target_modules=spec["targets"].split(","), modules_to_save=["score"],
                    task_type="SEQ_CLS")
  conf = RewardConfig(
      output_dir=spec["out"], max_length=spec["max_length"],
      per_device_train_batch_size=spec["batch"], gradient_accumulation_steps=1,
      max_steps=spec["steps"], learning_rate=spec["lr"], weight_decay=spec["weight_decay"],
      adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=spec["clip"],
      lr_scheduler_type="cosine_with_min_lr",
      lr_scheduler_kwargs={"min_lr_rate": spec["final_lr_frac"]}, warmup_steps=spec["warmup"],
      bf16=False, fp16=False, gradient_checkpointing=bool(spec["grad_ckpt"]),
      center_rewards_coefficient=None, disable_dropout=True,
      train_sampling_strategy="sequential", dataloader_num_workers=0, dataloader_drop_last=False,
      seed=spec["seed"], data_seed=spec["seed"], logging_steps=1, save_strategy="no",
      eval_strategy="no", report_to="none", disable_tqdm=True)
  trainer = RewardTrainer(model=model, args=conf, train_dataset=ds, processing_class=tok,
                          peft_config=lora)
  return trainer, len(rows)


def trl_child(spec_path: str) -> None:
  """The TRL arm in its own process: train, time each step, merge LoRA, save the HF model."""
  import torch  # noqa: PLC0415
  import transformers  # noqa: PLC0415
  import peft  # noqa: PLC0415
  import trl  # noqa: PLC0415
  from transformers import TrainerCallback  # noqa: PLC0415
  with open(spec_path) as f:
    spec = json.load(f)
  t_start = time.perf_counter()
  trainer, given = build_trl_trainer(spec)
  kept = len(trainer.train_dataset)
  # rewards of the first rows before training: the same function as rmjax's start?
  first = trainer.train_dataset.select(range(min(4, kept)))
  batch = trainer.data_collator([first[i] for i in range(len(first))])
  trainer.model.eval()
  with torch.no_grad():
    init_rewards = trainer.model(input_ids=batch["input_ids"],
                                 attention_mask=batch["attention_mask"]).logits[:, 0].tolist()
  trainer.model.train()
  times, losses, tokens = [], [], []

  class StepTimer(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
      self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
      times.append(time.perf_counter() - self.t0)
      tokens.append(int(trainer._total_train_tokens))  # non-pad tokens so far (TRL's count)

    def on_log(self, args, state, control, logs=None, **kw):
      if logs and "loss" in logs:
        losses.append(float(logs["loss"]))

  trainer.add_callback(StepTimer())
  t0 = time.perf_counter()
  trainer.train()
  train_s = time.perf_counter() - t0
  t1 = time.perf_counter()
  merged = trainer.model.merge_and_unload()
  merged.save_pretrained(spec["export"])
  trainer.processing_class.save_pretrained(spec["export"])
  export_s = time.perf_counter() - t1
  out = {"rows_given": given, "rows_kept": kept, "dropped_by_max_length": given - kept,
         "step_times_s": times, "step_tokens": [b - a for a, b in zip([0] + tokens, tokens)],
         "losses": losses, "train_s": train_s, "export_s": export_s,
         "setup_s": t0 - t_start, "tokens_counted_by_trl": int(trainer._total_train_tokens),
         "init_rewards": init_rewards, "init_index": [int(i) for i in first["index"]],
         "torch_threads": torch.get_num_threads(),
         "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
         "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                      "trl": trl.__version__, "peft": peft.__version__}}
  with open(spec["result"], "w") as f:
    json.dump(out, f)


# ------------------------------------------------------------------------------- running arms

def _run(argv, log_path: str, env=None) -> tuple:
  """(wall seconds, peak RSS MiB of the child) of a subprocess; its output goes to log_path."""
  t0 = time.perf_counter()
  with open(log_path, "w") as log:
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
  wall = time.perf_counter() - t0
  if status:
    with open(log_path) as f:
      tail = f.read()[-3000:]
    raise SystemExit(f"{' '.join(argv[:4])} ... failed (status {status}); log {log_path}:\n{tail}")
  return wall, usage.ru_maxrss / 1024


def step_stats(times: list, row_tokens: list) -> dict:
  """s/step and useful tokens/s from per-step seconds and per-step non-pad tokens."""
  rest = times[1:] or times
  out = {"steps": len(times), "train_loop_s": round(sum(times), 2),
         "first_step_s": round(times[0], 3) if times else None,
         "step_s_median": round(statistics.median(rest), 3) if rest else None,
         "step_s_mean": round(statistics.fmean(rest), 3) if rest else None}
  if len(times) >= 20:
    out["first10_s"], out["next10_s"] = round(sum(times[:10]), 2), round(sum(times[10:20]), 2)
  n = min(len(times), len(row_tokens))
  if n:
    out["useful_tokens"] = int(sum(row_tokens[:n]))
    out["useful_tokens_per_s"] = round(sum(row_tokens[:n]) / max(sum(times[:n]), 1e-9), 1)
    if n > 1:
      out["useful_tokens_per_s_after_first"] = round(sum(row_tokens[1:n]) / max(sum(times[1:n]), 1e-9), 1)
  return out


def run_rmjax(args, overrides: dict, work: str, dump: list) -> dict:
  wd, export = os.path.join(work, "rmjax_run"), os.path.join(work, "rmjax_export")
  log = os.path.join(work, "batches")
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
             RMJAX_DEBUG_BATCH_LOG=log)
  argv = [sys.executable, "-m", "rmjax", "train", "--config=configs/bt.py:smollm2",
          f"--workdir={wd}", *cli_args(overrides)]
  wall, rss = _run(argv, os.path.join(work, "rmjax_train.log"), env)
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if '"steps_per_s"' in line]
  times = [1.0 / r["steps_per_s"] for r in rows]  # log_every=1: one row per step
  with open(f"{log}.0") as f:
    order = [json.loads(line)["index"] for line in f]
  dumped = [[rec["index"] for rec in dump if rec["step"] == s] for s in range(args.steps)]
  per_step = [sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in dump if r["step"] == s)
              for s in range(args.steps)]
  ex_wall, _ = _run([sys.executable, "-m", "rmjax", "convert", f"--workdir={wd}", f"--to=hf:{export}"],
                    os.path.join(work, "rmjax_export.log"))
  with open(os.path.join(wd, "data_stats.json")) as f:
    dstats = json.load(f)
  tstats = dstats.get("train_tokenize", {})
  return {"wall_s": round(wall, 1), "peak_rss_mib": round(rss, 1), **step_stats(times, per_step),
          "export_s": round(ex_wall, 1), "batches_match_dump": order == dumped,
          "final_loss": rows[-1]["loss"] if rows else None,
          "losses": [round(r["loss"], 4) for r in rows],
          "truncated_pairs": tstats.get("truncated"), "dropped_pairs": tstats.get("dropped", 0),
          "remat": "none", "packing": bool(args.packing), "export": export}


def run_trl(args, init_dir: str, dump_path: str, work: str, dump: list) -> dict:
  export = os.path.join(work, "trl_export")
  given = trl_rows(dump, args.trl_ids)
  fits = [r for r in given if max(len(r["chosen_ids"]), len(r["rejected_ids"])) <= args.max_length]
  dropped_pairs = len({r["index"] for r in given} - {r["index"] for r in fits})
  if not fits:
    raise SystemExit(f"--trl_ids {args.trl_ids}: TRL's max_length filter would drop all "
                     f"{len(dump)} rows (every pair is over --max_length {args.max_length}); "
                     "nothing to train")
  spec = {"init_dir": init_dir, "dump": dump_path, "out": os.path.join(work, "trl_run"),
          "export": export, "result": os.path.join(work, "trl_result.json"),
          "max_length": args.max_length, "batch": args.batch, "steps": args.steps,
          "rank": args.rank, "alpha": args.alpha, "targets": args.targets, "lr": args.lr,
          "weight_decay": args.weight_decay, "warmup": args.warmup,
          "final_lr_frac": args.final_lr_frac, "clip": args.clip, "seed": args.seed,
          "grad_ckpt": args.trl_grad_ckpt == "true", "trl_ids": args.trl_ids}
  spec_path = os.path.join(work, "trl_spec.json")
  with open(spec_path, "w") as f:
    json.dump(spec, f)
  env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
             HF_DATASETS_OFFLINE="1", WANDB_DISABLED="true")
  # loaded from its file under -c, not run as a script: a script's folder goes first on sys.path,
  # and this folder's tokenize.py would shadow the standard library's
  boot = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('vs_trl_child', "
          "sys.argv[1]); m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
          "m.trl_child(sys.argv[2])")
  wall, rss = _run([args.trl_python, "-c", boot, os.path.abspath(__file__), spec_path],
                   os.path.join(work, "trl_train.log"), env)
  with open(spec["result"]) as f:
    res = json.load(f)
  per_step = res["step_tokens"]  # non-pad tokens of each step's batch, counted by TRL
  dumped = sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in dump)
  return {"wall_s": round(wall, 1), "peak_rss_mib": round(rss, 1),
          **step_stats(res["step_times_s"], per_step), "export_s": round(res["export_s"], 1),
          "setup_s": round(res["setup_s"], 1), "rows_given": res["rows_given"],
          "rows_kept": res["rows_kept"], "dropped_rows": res["dropped_by_max_length"],
          "dropped_pairs": dropped_pairs,
          "truncated_pairs": 0, "tokens_counted_by_trl": res["tokens_counted_by_trl"],
          "tokens_match_dump": (res["tokens_counted_by_trl"] == dumped
                                if args.trl_ids == "shared" else None),
          "final_loss": res["losses"][-1] if res["losses"] else None,
          "losses": [round(x, 4) for x in res["losses"]],
          "gradient_checkpointing": res["gradient_checkpointing"], "trl_ids": args.trl_ids,
          "versions": res["versions"], "export": export,
          "torch_threads": res["torch_threads"],
          "_init_rewards": res["init_rewards"], "_init_index": res["init_index"]}


# ---------------------------------------------------------------------------------- scoring

def eval_sets(args) -> dict:
  """{name: examples}: a seeded sample of `--eval_pairs` pairs of each available set."""
  import numpy as np  # noqa: PLC0415
  from rmjax.data.sources import shared_data_root  # noqa: PLC0415
  from rmjax.data.specs import load_pairs  # noqa: PLC0415
  if args.eval_pairs <= 0:
    return {}
  names = [n for n in args.eval_sets.split(",") if n]
  if shared_data_root() is None:
    return {"synthetic_heldout": load_pairs(f"synthetic:{args.eval_pairs}", seed=args.seed + 1)[0]}
  out = {}
  for name in names:
    if name not in EVAL_SETS:
      raise SystemExit(f"--eval_sets: unknown set {name!r} (known: {', '.join(EVAL_SETS)})")
    ex, _ = load_pairs(EVAL_SETS[name])
    if len(ex) > args.eval_pairs:
      keep = sorted(np.random.default_rng(0).permutation(len(ex))[:args.eval_pairs].tolist())
      ex = [ex[i] for i in keep]
    out[name] = ex
  return out


def score_sets(export: str, sets: dict, max_length: int):
  """Yields (name, (margins [N], truncated pairs, rows)) of an HF reward model, by rmjax's rule,
  set by set (the caller stores each as it comes)."""
  import numpy as np  # noqa: PLC0415
  from rmjax.data.batching import tokenize_pairs  # noqa: PLC0415
  from rmjax.inference.scorer import Scorer  # noqa: PLC0415
  scorer = Scorer.from_hf(export, max_length=max_length)
  for name, ex in sets.items():
    tok, st = tokenize_pairs(ex, scorer.encoder, on_overlong="truncate", token_cache="off")
    rows = [list(map(int, c)) for c in tok.chosen] + [list(map(int, r)) for r in tok.rejected]
    rewards = scorer.score_rows(rows)["reward"]
    n = len(tok)
    yield name, (np.asarray(rewards[:n] - rewards[n:], np.float64), st["truncated"], rows)


def compare_scores(sets: dict, scored: dict) -> dict:
  import numpy as np  # noqa: PLC0415
  from rmjax.eval import stats  # noqa: PLC0415
  arms = list(scored)
  out = {}
  pooled = {a: [] for a in arms}
  for name, ex in sets.items():
    rec = {"n": len(ex), "length_baseline": round(stats.length_baseline(
        [len(e.chosen) for e in ex], [len(e.rejected) for e in ex]), 4),
        "truncated_pairs": scored[arms[0]][name][1]}
    correct = {}
    for a in arms:
      m = scored[a][name][0]
      correct[a] = stats.pair_correct(m)
      rec[a] = {k: round(v, 4) for k, v in stats.bootstrap_ci(correct[a]).items()}
      rec[a]["ties"] = int(np.sum(m == 0))
      if name in OOD:
        pooled[a].append(correct[a])
    if len(arms) == 2:
      rec["same_rows"] = scored[arms[0]][name][2] == scored[arms[1]][name][2]
      rec[f"diff_{arms[0]}_minus_{arms[1]}"] = {
          k: round(v, 4) for k, v in stats.paired_diff_ci(correct[arms[0]], correct[arms[1]]).items()}
    out[name] = rec
  if all(pooled[a] for a in arms):
    rec = {"n": int(sum(len(x) for x in pooled[arms[0]]))}
    cat = {a: np.concatenate(pooled[a]) for a in arms}
    for a in arms:
      rec[a] = {k: round(v, 4) for k, v in stats.bootstrap_ci(cat[a]).items()}
    if len(arms) == 2:
      rec[f"diff_{arms[0]}_minus_{arms[1]}"] = {
          k: round(v, 4) for k, v in stats.paired_diff_ci(cat[arms[0]], cat[arms[1]]).items()}
    out["ood_pooled"] = rec
  return out


def init_parity(init_dir: str, trl: dict, dump: list, max_length: int) -> dict:
  """rmjax's rewards from init/ of the first rows TRL trains on, next to transformers' (the TRL child,
  before training): both arms start from the same function."""
  from rmjax.inference.scorer import Scorer  # noqa: PLC0415
  by_index = {r["index"]: r for r in trl_rows(dump, trl["trl_ids"])}
  first = [by_index.get(i) for i in trl["_init_index"]]  # the rows TRL scored, by pair index
  if not first or None in first:
    return {"compared": 0}
  rows = [r["chosen_ids"] for r in first] + [r["rejected_ids"] for r in first]
  mine = Scorer.from_hf(init_dir, max_length=max_length).score_rows(rows)["reward"].tolist()
  theirs = trl["_init_rewards"]
  diff = max(abs(a - b) for a, b in zip(mine, theirs))
  return {"compared": len(mine), "max_abs_diff": float(f"{diff:.3g}"),
          "max_abs_reward": float(f"{max(abs(x) for x in mine):.3g}")}


# ------------------------------------------------------------------------------------- resume

# the arguments an arm's training depends on (eval options and --arms / --out do not)
_TRAIN_KEYS = ("smoke", "model", "source", "pairs", "max_length", "steps", "batch", "rank", "alpha",
               "targets", "lr", "weight_decay", "warmup", "final_lr_frac", "clip", "seed",
               "packing", "trl_ids", "trl_grad_ckpt")


def _key(args, *extra) -> dict:
  return {**{k: getattr(args, k) for k in _TRAIN_KEYS}, **dict(extra)}


def _reuse(path: str, key: dict):
  """The value stored at `path` under the same `key`, else None (a run with other arguments, or
  none yet)."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    rec = json.load(f)
  return rec["value"] if rec.get("key") == key else None


def _store(path: str, key: dict, value) -> None:
  """Written whole or not at all (a killed run leaves no half file to resume from)."""
  with open(path + ".tmp", "w") as f:
    json.dump({"key": key, "value": value}, f)
  os.replace(path + ".tmp", path)


def resumed(work: str, arm: str, args, run) -> dict:
  """An arm's result: the one a previous run with the same training arguments stored in `work`
  (`--out`), else `run()`'s, stored for the next: a killed full-size run restarts at the arm
  (or the scoring) it was in, not from the start."""
  path, key = os.path.join(work, f"arm_{arm}.json"), _key(args)
  value = _reuse(path, key)
  if value is None or not os.path.isdir(value.get("export", "")):
    value = run()
    _store(path, key, value)
  else:
    print(f"[vs_trl] {arm}: reusing the trained arm stored in {path}", file=sys.stderr)
  return value


def scores_resumed(work: str, arm: str, args, sets: dict, trained: dict) -> dict:
  """score_sets of the arm's export, per set stored in `work` under the same arguments, eval
  sample and trained model (its loss curve: an arm trained again does not reuse stale scores)."""
  import numpy as np  # noqa: PLC0415
  export = trained["export"]
  paths = {name: os.path.join(work, f"scores_{arm}_{name}.json") for name in sets}
  keys = {name: _key(args, ("set", name), ("n", len(ex)), ("eval_pairs", args.eval_pairs),
                     ("losses", trained["losses"]))
          for name, ex in sets.items()}
  stored = {name: _reuse(paths[name], keys[name]) for name in sets}
  todo = {name: ex for name, ex in sets.items() if stored[name] is None}
  for name, (m, trunc, rows) in (score_sets(export, todo, args.max_length) if todo else ()):
    stored[name] = {"margins": m.tolist(), "truncated": trunc, "rows": rows}
    _store(paths[name], keys[name], stored[name])
  return {name: (np.asarray(v["margins"], np.float64), v["truncated"], v["rows"])
          for name, v in stored.items()}


# --------------------------------------------------------------------------------------- plot

def plot(result: dict, path: str) -> None:
  """Training loss per step of both arms (same batches) and held-out accuracy per set with 95%
  CIs beside the length baseline."""
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  arms, evals = list(result["arms"]), result.get("eval", {})
  fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(12 if evals else 6, 4), squeeze=False)
  ax = axes[0][0]
  for a in arms:
    losses = np.asarray(result["arms"][a]["losses"], float)
    k = min(10, len(losses))
    ax.plot(np.arange(1, len(losses) + 1), losses, alpha=0.3)
    ax.plot(np.arange(k, len(losses) + 1), np.convolve(losses, np.ones(k) / k, "valid"),
            label=f"{a} (mean of {k})", color=ax.lines[-1].get_color())
  ax.set_xlabel("step")
  ax.set_ylabel("BT loss")
  ax.set_title("training loss, same batches")
  ax.legend(fontsize=8)
  if evals:
    bx, names, w = axes[0][1], list(evals), 0.8 / len(arms)
    for i, a in enumerate(arms):
      v = np.array([evals[n][a]["value"] for n in names])
      err = np.array([[evals[n][a]["value"] - evals[n][a]["lo"] for n in names],
                      [evals[n][a]["hi"] - evals[n][a]["value"] for n in names]])
      bx.bar(np.arange(len(names)) + i * w, v, w, yerr=err, capsize=2, label=a)
    base = [(j, evals[n]["length_baseline"]) for j, n in enumerate(names)
            if "length_baseline" in evals[n]]
    if base:
      bx.scatter([j + 0.4 - w / 2 for j, _ in base], [b for _, b in base], marker="_", s=400,
                 color="k", label="longer wins", zorder=3)
    bx.axhline(0.5, color="grey", lw=0.5)
    bx.set_ylim(0.3, 0.8)
    bx.set_xticks(np.arange(len(names)) + 0.4 - w / 2, names)
    bx.set_ylabel("accuracy (95% CI)")
    bx.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# --------------------------------------------------------------------------------------- main

def main(argv=None):
  args = parse_args(argv)
  if args._trl_child:
    trl_child(args._trl_child)
    return None
  from experiments.benchmarks import _common  # noqa: PLC0415 -- jax (and the re-exec) only here
  from rmjax.data.sources import shared_data_root  # noqa: PLC0415
  arms = [a for a in args.arms.split(",") if a]
  if not arms or set(arms) - {"rmjax", "trl"}:
    raise SystemExit(f"--arms: rmjax and/or trl, got {args.arms!r}")
  source = args.source or (DEFAULT_SOURCE if shared_data_root() else f"synthetic:{args.pairs}")
  load_start = os.getloadavg()
  tmp = None if args.out else tempfile.TemporaryDirectory(prefix="vs_trl-")
  work = os.path.abspath(args.out or tmp.name)
  os.makedirs(work, exist_ok=True)
  try:
    init_dir, dump_path = os.path.join(work, "init"), os.path.join(work, "dump.jsonl")
    t0 = time.perf_counter()
    init = write_init(args.model, init_dir, args.seed)
    overrides = rmjax_overrides(args, init_dir, source)
    data = build_dump(train_config(overrides), dump_path, args.steps)
    dump = read_dump(dump_path)
    prep_s = time.perf_counter() - t0
    results = {}
    if "rmjax" in arms:
      results["rmjax"] = resumed(work, "rmjax", args, lambda: run_rmjax(args, overrides, work, dump))
    if "trl" in arms:
      results["trl"] = resumed(work, "trl", args,
                               lambda: run_trl(args, init_dir, dump_path, work, dump))
    parity = init_parity(init_dir, results["trl"], dump, args.max_length) if "trl" in results else {}
    sets = eval_sets(args)
    t1 = time.perf_counter()
    scored = {a: scores_resumed(work, a, args, sets, results[a]) for a in results} if sets else {}
    evals = compare_scores(sets, scored) if sets else {}
    score_s = time.perf_counter() - t1
  finally:
    if tmp is not None:
      tmp.cleanup()
  truncated_rows = sum(1 for r in dump if r.get("truncated"))
  for res in results.values():
    res.pop("_init_rewards", None)
    res.pop("_init_index", None)
    if tmp is not None:
      res.pop("export", None)
  result = {
      "benchmark": "vs_trl", "smoke": args.smoke, "model": args.model, "init": init,
      "source": source, "pairs": args.pairs, "max_length": args.max_length, "steps": args.steps,
      "batch": args.batch, "lora": {"rank": args.rank, "alpha": args.alpha, "targets": args.targets,
                                    "dropout": 0.0, "head": "trained"},
      "optim": {"lr": args.lr, "weight_decay": args.weight_decay, "betas": [0.9, 0.999],
                "eps": 1e-8, "clip": args.clip, "warmup": args.warmup, "schedule": "cosine",
                "final_lr_frac": args.final_lr_frac},
      "packing": args.packing, "trl_ids": args.trl_ids, "seed": args.seed,
      "data": dict(data, rows_truncated_by_rmjax=truncated_rows,
                   over_max_length_if_trl_tokenized=truncated_rows,
                   useful_tokens=sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in dump)),
      "env": _common.environment(), "load_avg_start": [round(x, 2) for x in load_start],
      "load_avg_end": [round(x, 2) for x in os.getloadavg()], "cpus": len(os.sched_getaffinity(0)),
      "prep_s": round(prep_s, 1), "score_s": round(score_s, 1), "init_parity": parity,
      "arms": results, "eval": evals}
  if "rmjax" in results and "trl" in results:
    r, t = results["rmjax"], results["trl"]
    if r.get("useful_tokens_per_s") and t.get("useful_tokens_per_s"):
      result["rmjax_over_trl_useful_tokens_per_s"] = round(
          r["useful_tokens_per_s"] / t["useful_tokens_per_s"], 3)
    if r.get("useful_tokens_per_s_after_first") and t.get("useful_tokens_per_s_after_first"):
      result["rmjax_over_trl_useful_tokens_per_s_after_first"] = round(
          r["useful_tokens_per_s_after_first"] / t["useful_tokens_per_s_after_first"], 3)
    if r.get("peak_rss_mib") and t.get("peak_rss_mib"):
      result["rmjax_over_trl_peak_rss"] = round(r["peak_rss_mib"] / t["peak_rss_mib"], 3)
  if args.out:
    plot(result, os.path.join(work, "vs_trl.png"))
  _common.emit(result)
  return result


if __name__ == "__main__":
  main()
