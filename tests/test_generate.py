"""Tests for rmjax.inference.generate: cache vs no-cache parity, transformers parity, sampling, meshes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmjax.models.llama import Llama, LlamaConfig
from rmjax.inference import generate as gen
from rmjax.inference.generate import SamplingConfig, generate, generate_text, left_pad

CFG = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rope_theta=10000.0)
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [3], [40, 41, 42, 43], [1, 2], [60, 61, 62]]
GREEDY = SamplingConfig(max_new_tokens=10, temperature=0.0, pad_id=0)
SAMPLE = SamplingConfig(max_new_tokens=10, temperature=1.0, top_k=20)


def _params(cfg, seed=0, scale=4.0):
  """Random params with kernels scaled up so logits are peaked (argmax ties are then unlikely)."""
  def init(rng):
    params = nn.unbox(Llama(cfg).init(rng, jnp.zeros((1, 2), jnp.int32))["params"])
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x if "norm" in jax.tree_util.keystr(path) else x * scale, params)
  return jax.jit(init)(jax.random.PRNGKey(seed))


@pytest.fixture(scope="module")
def params():
  return _params(CFG)


def _reference_greedy(params, cfg, prompts, n):
  """No-cache loop: full forward on each growing sequence, argmax of its last logits.

  Each row stands alone (no left padding): sequences are right-padded to one fixed length,
  which causal attention ignores, so the forward compiles once.
  """
  width = max(len(p) for p in prompts) + n
  seqs = [list(p) for p in prompts]
  forward = jax.jit(lambda ids: jax.nn.log_softmax(Llama(cfg).apply({"params": params}, ids)))
  logprobs = []
  for _ in range(n):
    ids = np.zeros((len(seqs), width), np.int32)
    for row, seq in enumerate(seqs):
      ids[row, :len(seq)] = seq
    logp = np.asarray(forward(ids))
    step = []
    for row, seq in enumerate(seqs):
      tok = int(np.argmax(logp[row, len(seq) - 1]))
      step.append(logp[row, len(seq) - 1, tok])
      seq.append(tok)
    logprobs.append(step)
  tokens = np.asarray([seq[len(p):] for seq, p in zip(seqs, prompts)])
  return tokens, np.asarray(logprobs).T


def test_left_pad_buckets_and_truncates():
  ids, mask = left_pad([[1, 2, 3], [4]], pad_id=9, multiple=4)
  np.testing.assert_array_equal(ids, [[9, 1, 2, 3], [9, 9, 9, 4]])
  np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 0, 1]])
  assert ids.dtype == np.int32 and left_pad([[1] * 5], 0, multiple=4)[0].shape == (1, 8)
  ids, mask = left_pad([[1, 2, 3, 4, 5]], pad_id=0, length=3)  # keeps the last tokens
  np.testing.assert_array_equal(ids, [[3, 4, 5]])


def test_rejects_right_padded_or_empty_prompts(params):
  ids = np.array([[5, 6, 0], [7, 8, 9]], np.int32)
  with pytest.raises(ValueError, match="left-padded"):
    generate(params, CFG, ids, (ids > 0).astype(np.int32), jax.random.PRNGKey(0), GREEDY)


def test_greedy_matches_no_cache_reference(params):
  ids, mask = left_pad(PROMPTS, 0, multiple=8)
  out = generate(params, CFG, ids, mask, jax.random.PRNGKey(0), GREEDY)
  assert out["tokens"].shape == (len(PROMPTS), 10) and out["tokens"].dtype == jnp.int32
  tokens, logprobs = _reference_greedy(params, CFG, PROMPTS, 10)
  np.testing.assert_array_equal(np.asarray(out["tokens"]), tokens)
  np.testing.assert_allclose(np.asarray(out["logprobs"]), logprobs, atol=1e-5)
  np.testing.assert_array_equal(out["mask"], 1)
  np.testing.assert_array_equal(out["lengths"], 10)


def test_repeated_calls_do_not_recompile(params):
  ids, mask = left_pad(PROMPTS, 0, multiple=8)
  generate(params, CFG, ids, mask, jax.random.PRNGKey(0), GREEDY)
  sizes = gen._prefill._cache_size(), gen._decode._cache_size()
  ids2, mask2 = left_pad([[7, 7], [1, 2, 3], [4], [5, 6], [9], [9, 9]], 0, multiple=8)  # same bucket
  generate(params, CFG, ids2, mask2, jax.random.PRNGKey(1), GREEDY.replace(eos_ids=(3,), pad_id=5))
  assert (gen._prefill._cache_size(), gen._decode._cache_size()) == sizes
  # Temperature and top_p are traced values too: one compile serves every setting.
  hot = SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=0.9)
  generate(params, CFG, ids, mask, jax.random.PRNGKey(0), hot)
  size = gen._decode._cache_size()
  generate(params, CFG, ids, mask, jax.random.PRNGKey(0), hot.replace(temperature=0.5, top_p=0.7))
  assert gen._decode._cache_size() == size


def test_eos_stops_rows_and_pads(params):
  ids, mask = left_pad(PROMPTS, 0, multiple=8)
  free = generate(params, CFG, ids, mask, jax.random.PRNGKey(0), GREEDY)
  free_tokens = np.asarray(free["tokens"])
  eos = int(free_tokens[0, 2])  # row 0 emits it at step 2 (maybe earlier in other rows)
  out = generate(params, CFG, ids, mask, jax.random.PRNGKey(0),
                 GREEDY.replace(eos_ids=(eos,), pad_id=96))
  tokens, m, lengths = (np.asarray(out[k]) for k in ("tokens", "mask", "lengths"))
  for row in range(len(PROMPTS)):
    hits = np.flatnonzero(free_tokens[row] == eos)
    n = hits[0] + 1 if hits.size else 10
    assert lengths[row] == n
    np.testing.assert_array_equal(tokens[row, :n], free_tokens[row, :n])
    np.testing.assert_array_equal(tokens[row, n:], 96)
    np.testing.assert_array_equal(m[row], np.arange(10) < n)
    assert np.all(np.asarray(out["logprobs"])[row, n:] == 0)
  assert lengths[0] == 3


def test_all_rows_done_stops_early(params):
  ids, mask = left_pad(PROMPTS, 0, multiple=8)
  free = np.asarray(generate(params, CFG, ids, mask, jax.random.PRNGKey(0), GREEDY)["tokens"])
  out = generate(params, CFG, ids, mask, jax.random.PRNGKey(0),
                 GREEDY.replace(eos_ids=tuple(int(t) for t in free[:, 0]), pad_id=96))
  np.testing.assert_array_equal(out["lengths"], 1)
  np.testing.assert_array_equal(np.asarray(out["tokens"])[:, 1:], 96)


def test_top_k1_and_tiny_top_p_equal_greedy(params):
  ids, mask = left_pad(PROMPTS, 0, multiple=8)
  greedy = generate(params, CFG, ids, mask, jax.random.PRNGKey(0), GREEDY)
  for sampling in (SamplingConfig(max_new_tokens=10, temperature=1.0, top_k=1),
                   SamplingConfig(max_new_tokens=10, temperature=0.7, top_p=1e-6)):
    out = generate(params, CFG, ids, mask, jax.random.PRNGKey(3), sampling)
    np.testing.assert_array_equal(out["tokens"], greedy["tokens"])
    np.testing.assert_allclose(out["logprobs"], greedy["logprobs"], atol=1e-6)
    np.testing.assert_allclose(out["logprobs_processed"], 0.0, atol=1e-6)


def test_same_rng_same_samples_different_rng_different(params):
  ids, mask = left_pad(PROMPTS, 0, multiple=8)
  sampling = SAMPLE
  a = generate(params, CFG, ids, mask, jax.random.PRNGKey(1), sampling)
  b = generate(params, CFG, ids, mask, jax.random.PRNGKey(1), sampling)
  c = generate(params, CFG, ids, mask, jax.random.PRNGKey(2), sampling)
  np.testing.assert_array_equal(a["tokens"], b["tokens"])
  assert np.any(np.asarray(a["tokens"]) != np.asarray(c["tokens"]))


def _one_step_distribution(params, sampling, n=2048):
  """Empirical next-token frequencies over n copies of one prompt, plus the model's probs."""
  prompt = [5, 6, 7, 8]
  ids, mask = left_pad([prompt] * n, 0, multiple=8)
  out = generate(params, CFG, ids, mask, jax.random.PRNGKey(7), sampling.replace(max_new_tokens=1))
  tokens = np.asarray(out["tokens"][:, 0])
  logits = jax.jit(Llama(CFG).apply)({"params": params}, jnp.asarray([prompt]))[0, -1]
  logp = np.asarray(jax.nn.log_softmax(logits))
  np.testing.assert_allclose(np.asarray(out["logprobs"][:, 0]), logp[tokens], atol=1e-5)
  return np.bincount(tokens, minlength=CFG.vocab_size) / n, logits, out


def _assert_follows(freq, probs, n=2048):
  """Loose goodness of fit: Pearson chi-square within 4 sd of its mean, no token off by > 5 sd.

  Tokens with tiny expected counts are pooled into one bin so the chi-square is meaningful.
  """
  counts, expected = freq * n, probs * n
  sigma = np.sqrt(probs * (1 - probs) / n) + 1e-3
  assert np.all(np.abs(freq - probs) < 5 * sigma), np.max(np.abs(freq - probs) / sigma)
  big = expected >= 5
  obs = np.append(counts[big], counts[~big].sum())
  exp = np.append(expected[big], expected[~big].sum())
  obs, exp = obs[exp > 0], exp[exp > 0]
  chi2, dof = np.sum((obs - exp) ** 2 / exp), len(exp) - 1
  assert chi2 < dof + 4 * np.sqrt(2 * dof), (chi2, dof)


def test_sampling_follows_model_distribution():
  params = dict(_params(CFG, seed=1, scale=1.0))  # ~18 tokens above 1%: peaked but spread
  params["lm_head"] = {"kernel": params["lm_head"]["kernel"] * 20.0}
  freq, logits, _ = _one_step_distribution(params, SamplingConfig(temperature=1.0))
  probs = np.asarray(jax.nn.softmax(logits))
  assert (probs > 0.01).sum() >= 10  # the check means something only if mass is spread
  _assert_follows(freq, probs)
  # temperature, top-k: the processed distribution; logprobs_processed is its log-prob.
  sampling = SamplingConfig(temperature=0.7, top_k=8)
  freq, logits, out = _one_step_distribution(params, sampling)
  x = np.asarray(logits) / 0.7
  x = np.where(x >= np.sort(x)[-8], x, -np.inf)
  probs = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
  _assert_follows(freq, probs)
  tokens = np.asarray(out["tokens"][:, 0])
  np.testing.assert_allclose(np.asarray(out["logprobs_processed"][:, 0]), np.log(probs[tokens]),
                             atol=1e-5)
  # top-p: only tokens of the nucleus are drawn.
  freq, logits, _ = _one_step_distribution(params, SamplingConfig(temperature=1.0, top_p=0.5))
  probs = np.asarray(jax.nn.softmax(logits))
  order = np.argsort(-probs)
  nucleus = order[:np.searchsorted(np.cumsum(probs[order]), 0.5) + 1]
  assert set(np.flatnonzero(freq)) <= set(nucleus.tolist())
  kept = np.zeros_like(probs)
  kept[nucleus] = probs[nucleus]
  _assert_follows(freq, kept / kept.sum())


@pytest.mark.parametrize("shape", [(4, 2, 1), (2, 2, 2)])
def test_mesh_matches_single_device(params, shape):
  from rmjax import sharding
  if jax.device_count() < 8:
    pytest.skip("needs 8 (fake) devices")
  ids, mask = left_pad(PROMPTS, 0, multiple=8)  # 6 rows: padded to 8 on the mesh
  single = generate(params, CFG, ids, mask, jax.random.PRNGKey(0), GREEDY)
  mesh = sharding.make_mesh(shape)
  out = generate(params, CFG, ids, mask, jax.random.PRNGKey(0), GREEDY, mesh=mesh)
  assert out["tokens"].shape == (6, 10)
  np.testing.assert_array_equal(out["tokens"], single["tokens"])
  np.testing.assert_allclose(out["logprobs"], single["logprobs"], atol=1e-5)
  if shape != (4, 2, 1):
    return
  a = generate(params, CFG, ids, mask, jax.random.PRNGKey(4), SAMPLE)
  b = generate(params, CFG, ids, mask, jax.random.PRNGKey(4), SAMPLE, mesh=mesh)
  np.testing.assert_array_equal(a["tokens"], b["tokens"])


def test_generate_text_with_byte_tokenizer(params):
  from rmjax.data.tokenize import ByteTokenizer
  tok = ByteTokenizer()
  cfg = CFG
  assert cfg.vocab_size <= tok.vocab_size  # every id the model can emit decodes
  prompts = ["hi", [{"role": "system", "content": "be brief"}, {"role": "user", "content": "yo"}],
             "a longer question?"]
  sampling = SamplingConfig(max_new_tokens=6, temperature=0.0, pad_id=tok.pad_token_id)
  res = generate_text(params, cfg, tok, prompts, sampling, jax.random.PRNGKey(0), batch_size=2,
                      progress=False)
  assert len(res) == 3
  encoded = tok.encode(tok.apply_chat_template([{"role": "user", "content": "hi"}],
                                               add_generation_prompt=True, tokenize=False))
  ids, mask = left_pad([encoded], tok.pad_token_id)
  direct = generate(params, cfg, ids, mask, jax.random.PRNGKey(0),
                    sampling.replace(eos_ids=(tok.eos_token_id,)))
  n = int(direct["lengths"][0])
  assert res[0]["token_ids"] == np.asarray(direct["tokens"][0, :n]).tolist()
  np.testing.assert_allclose(res[0]["logprobs"], np.asarray(direct["logprobs"][0, :n]), atol=1e-5)
  for r in res:
    assert isinstance(r["text"], str) and len(r["logprobs"]) == len(r["token_ids"]) <= 6
    assert r["finished"] == (r["token_ids"][-1:] == [tok.eos_token_id])


# ---------------------------------------------------------------------------------------------
# Parity with transformers.


def test_greedy_matches_transformers_tiny_llama():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from rmjax.checkpoints import hf as ckpt_hf
  torch.manual_seed(0)
  hf_cfg = transformers.LlamaConfig(
      vocab_size=101, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128,
      rope_theta=10000.0, rms_norm_eps=1e-5, initializer_range=0.2, tie_word_embeddings=False,
      bos_token_id=1, eos_token_id=2, pad_token_id=0)
  model = transformers.LlamaForCausalLM(hf_cfg).to(torch.float32).eval()
  cfg = ckpt_hf.config_from_hf(hf_cfg.to_dict())
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  params = jax.tree_util.tree_map(jnp.asarray, ckpt_hf.params_from_hf_state_dict(sd, cfg))

  prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [30], [40, 41, 42, 43, 44]]
  ids, mask = left_pad(prompts, 0, multiple=8)
  n = 12
  out = generate(params, cfg, ids, mask, jax.random.PRNGKey(0),
                 SamplingConfig(max_new_tokens=n, temperature=0.0, pad_id=0))
  with torch.no_grad():
    ref = model.generate(torch.tensor(ids, dtype=torch.long),
                         attention_mask=torch.tensor(mask, dtype=torch.long), do_sample=False,
                         max_new_tokens=n, min_new_tokens=n, eos_token_id=None, pad_token_id=0)
  np.testing.assert_array_equal(np.asarray(out["tokens"]), ref[:, ids.shape[1]:].numpy())


@pytest.fixture
def smollm2(smollm2_gguf):
  """(cfg, params, tokenizer, transformers model): the session's one SmolLM2 load (conftest)."""
  cfg, params, model, tok = smollm2_gguf
  return cfg, params, tok, model


def test_smollm2_greedy_matches_transformers(smollm2):
  import torch
  cfg, params, tok, model = smollm2
  prompts = [[{"role": "user", "content": "Write a short poem about the sea."}]]
  encoded = [tok.encode(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False),
                        add_special_tokens=False) for m in prompts]
  assert encoded[0][0] == 1  # <|im_start|>: the embedded ChatML template
  ids, mask = left_pad(encoded, tok.pad_token_id or 2)
  n = 20
  out = generate(params, cfg, ids, mask, jax.random.PRNGKey(0),
                 SamplingConfig(max_new_tokens=n, temperature=0.0, eos_ids=(2,), pad_id=2))
  with torch.no_grad():
    ref = model.generate(torch.tensor(ids, dtype=torch.long),
                         attention_mask=torch.tensor(mask, dtype=torch.long), do_sample=False,
                         max_new_tokens=n, eos_token_id=2, pad_token_id=2)
  ref = ref[:, ids.shape[1]:].numpy()
  ref = np.pad(ref, ((0, 0), (0, n - ref.shape[1])), constant_values=2)
  np.testing.assert_array_equal(np.asarray(out["tokens"]), ref)
  assert int(out["lengths"][0]) == n  # a poem is longer than 20 tokens: the comparison is full


def test_nucleus_threshold_matches_sorted_cumsum():
  """The bisection threshold keeps exactly the sorted-prefix nucleus (ties included)."""
  from rmjax.inference.generate import nucleus_threshold
  rng = np.random.default_rng(0)
  logits = np.round(rng.normal(size=(6, 50)) * 3, 1).astype(np.float32)  # ties on purpose
  logits[0] = [5.0] + [0.0] * 49  # one dominant token
  for top_p in (0.05, 0.3, 0.6, 0.9, 0.999):
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1), np.float64)
    keep = np.asarray(jnp.asarray(probs, jnp.float32) >= nucleus_threshold(
        jnp.asarray(probs, jnp.float32), top_p))
    for row in range(len(logits)):
      order = np.argsort(-probs[row], kind="stable")
      before = np.cumsum(probs[row][order]) - probs[row][order]
      cutoff = probs[row][order][before < top_p].min()
      np.testing.assert_array_equal(keep[row], probs[row] >= cutoff - 1e-12, err_msg=f"{top_p} {row}")
      assert keep[row].any()
