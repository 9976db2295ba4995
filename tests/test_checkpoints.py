"""Checkpoint parity: HF round trip, SmolLM2 GGUF vs transformers, sharded presets, bad input."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from rmjax import sharding
from rmjax.checkpoints import hf as hf_ckpt
from rmjax.checkpoints import load_pretrained, preset_config, save_pretrained
from rmjax.errors import CheckpointError
from rmjax.models.llama import Llama

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _padded_batch(vocab, rng):
  """Left-padded ids [3, 12] with mask and HF-style position ids (cumsum(mask) - 1, >= 0)."""
  ids = rng.integers(3, vocab, size=(3, 12)).astype(np.int64)
  mask = np.ones_like(ids)
  mask[1, :4] = 0
  mask[2, :9] = 0
  ids[mask == 0] = 0
  pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
  return ids, mask, pos


def _torch_logits(model, ids, mask, pos):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                position_ids=torch.tensor(pos))
  return out.logits.float().numpy()


def _rmjax_logits(cfg, params, ids, mask):
  fn = jax.jit(lambda p, i, m: Llama(cfg).apply({"params": p}, i, attention_mask=m))
  return np.asarray(fn(params, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)))


# ---------------------------------------------------------------- (a) HF round trip

@pytest.fixture(scope="module")
def tiny_hf_model():
  """Random Llama-3.1-style HF model: GQA, llama3 rope scaling, untied head, float32."""
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
      vocab_size=384, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
      rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=[2, 3],
      rope_theta=500000.0, initializer_range=0.15,  # large enough that attention is not uniform
      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
  model = transformers.LlamaForCausalLM(config).float().eval()
  with torch.no_grad():  # non-trivial norms so a scale mix-up would show
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
  return model


def test_hf_roundtrip_matches_transformers(tiny_hf_model, tmp_path):
  src, dst = tmp_path / "src", tmp_path / "dst"
  tiny_hf_model.save_pretrained(src)
  cfg, params = load_pretrained(f"hf:{src}")
  assert cfg.rope_scaling_dict["rope_type"] == "llama3"
  assert cfg.eos_token_id == 2 and not cfg.tie_word_embeddings and cfg.head_dim == 16

  ids, mask, pos = _padded_batch(cfg.vocab_size, np.random.default_rng(0))
  ref = _torch_logits(tiny_hf_model, ids, mask, pos)
  ours = _rmjax_logits(cfg, params, ids, mask)
  real = mask.astype(bool)
  assert np.abs(ours - ref)[real].max() <= 1e-4

  save_pretrained(params, cfg, f"hf:{dst}")
  reloaded = transformers.LlamaForCausalLM.from_pretrained(dst).float().eval()
  again = _torch_logits(reloaded, ids, mask, pos)
  assert np.abs(again - ref)[real].max() <= 1e-5


def test_state_dict_table_roundtrip_and_extras():
  cfg, params = load_pretrained("tiny-llama3")
  sd = hf_ckpt.hf_state_dict_from_params(params, cfg)
  assert "lm_head.weight" not in sd  # tied
  assert sd["model.layers.1.self_attn.k_proj.weight"].shape == (2 * 16, 64)  # HF [out, in]
  sd["score.weight"] = np.zeros((1, 64), np.float32)
  bare = {k[len("model."):] if k.startswith("model.") else k: v for k, v in sd.items()}
  back, extra = hf_ckpt.params_from_hf_state_dict(bare, cfg, return_extra=True)
  assert list(extra) == ["score.weight"]
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params, back)
  assert hf_ckpt.config_from_hf(hf_ckpt.config_to_hf(cfg)) == cfg


# ---------------------------------------------------------------- (b) SmolLM2 GGUF

@pytest.fixture
def smollm2(smollm2_gguf):
  """(cfg, params, transformers model, tokenizer): the session's one SmolLM2 load (conftest)."""
  return smollm2_gguf


def test_smollm2_gguf_matches_transformers(smollm2):
  cfg, params, ref_model, tok = smollm2
  assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_key_value_heads) == (30, 576, 3)
  assert cfg.tie_word_embeddings and cfg.eos_token_id == 2 and cfg.vocab_size == 49152
  text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                 tokenize=False, add_generation_prompt=True)
  assert text.startswith("<|im_start|>system")
  ids = np.asarray([tok(text)["input_ids"]], np.int64)
  mask = np.ones_like(ids)
  ref = _torch_logits(ref_model, ids, mask, np.arange(ids.shape[1])[None])
  ours = _rmjax_logits(cfg, params, ids, mask)
  assert np.abs(ours - ref).max() / np.abs(ref).max() <= 1e-3
  assert (ours[0, -1].argmax() == ref[0, -1].argmax())


# ---------------------------------------------------------------- (c) sharded presets

def test_sharded_tiny_matches_one_device():
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
  mesh = sharding.make_mesh((2, 2, 2))
  cfg, params = load_pretrained("tiny", mesh=mesh)
  specs = {
      ("layers", "self_attn", "q_proj", "kernel"): P(None, "fsdp", "tensor"),
      ("layers", "self_attn", "o_proj", "kernel"): P(None, "tensor", "fsdp"),
      ("layers", "mlp", "down_proj", "kernel"): P(None, "tensor", "fsdp"),
      ("layers", "input_layernorm", "scale"): P(None, None),
      ("embed_tokens", "embedding"): P("tensor", "fsdp"),
      ("lm_head", "kernel"): P("fsdp", "tensor"),
  }
  for path, spec in specs.items():
    leaf = params
    for p in path:
      leaf = leaf[p]
    assert leaf.sharding.spec == spec, path

  _, single = load_pretrained("tiny")  # same seed -> same weights
  ids, mask, _ = _padded_batch(cfg.vocab_size, np.random.default_rng(1))
  ids, mask = np.concatenate([ids, ids[:1]]), np.concatenate([mask, mask[:1]])  # 4 rows
  ref = _rmjax_logits(cfg, single, ids, mask)
  batch = sharding.shard_batch({"ids": ids.astype(np.int32), "mask": mask.astype(np.int32)}, mesh)

  @jax.jit
  def fwd(p, b):
    with nn.logical_axis_rules(sharding.DEFAULT_RULES):
      return Llama(cfg).apply({"params": p}, b["ids"], attention_mask=b["mask"])

  with jax.set_mesh(mesh):  # makes the logical activation constraints real
    out = fwd(params, batch)
  assert out.sharding.spec == P(("data", "fsdp"), None, "tensor")  # act_batch, act_length, act_vocab
  assert np.abs(np.asarray(out) - ref).max() <= 1e-5


def test_presets_and_dtype():
  big = preset_config("llama3-8b-config")
  assert (big.num_hidden_layers, big.num_key_value_heads, big.vocab_size) == (32, 8, 128256)
  assert 7.9e9 < big.num_params < 8.1e9
  small = preset_config("smollm2-135m-config")
  assert 1.3e8 < small.num_params < 1.4e8
  cfg, params = load_pretrained("tiny-llama3", dtype="bfloat16", seed=3)
  assert cfg.tie_word_embeddings and cfg.param_dtype == "bfloat16"
  assert "lm_head" not in params
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(params))
  from rmjax.checkpoints import load_tokenizer
  tok = load_tokenizer("tiny")
  assert load_tokenizer("tiny") is tok and tok.vocab_size <= preset_config("tiny").vocab_size


# ---------------------------------------------------------------- (d) bad input

def _one_line(excinfo, *needles):
  msg = str(excinfo.value)
  assert "\n" not in msg, msg
  for n in needles:
    assert n in msg, msg


def test_missing_files_and_unknown_preset(tmp_path):
  with pytest.raises(CheckpointError) as e:
    load_pretrained(f"gguf:{tmp_path}/nope.gguf")
  _one_line(e, "nope.gguf")
  with pytest.raises(CheckpointError) as e:
    load_pretrained(f"hf:{tmp_path}/nodir")
  _one_line(e, "nodir")
  with pytest.raises(CheckpointError) as e:
    load_pretrained("llama-9000")
  _one_line(e, "llama-9000", "tiny", "smollm2-135m")


def test_gguf_of_another_architecture(tmp_path):
  gguf = pytest.importorskip("gguf")
  path = str(tmp_path / "gpt2.gguf")
  w = gguf.GGUFWriter(path, "gpt2")
  w.add_block_count(1)
  w.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(CheckpointError) as e:
    load_pretrained(f"gguf:{path}")
  _one_line(e, "gpt2.gguf", "gpt2", "llama")


def test_weights_that_do_not_fit_the_config(tmp_path):
  cfg, params = load_pretrained("tiny")
  out = save_pretrained(params, cfg, f"hf:{tmp_path / 'm'}")
  with open(os.path.join(out, "config.json")) as f:
    d = json.load(f)
  d["hidden_size"] = 96
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(d, f)
  with pytest.raises(CheckpointError) as e:
    load_pretrained(f"hf:{out}")
  _one_line(e, "weights do not fit the config", "model.embed_tokens.weight", "(512, 64)", "(512, 96)")
