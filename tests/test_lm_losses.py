"""rmjax.lm_losses: token/sequence log-probs against transformers, regularisers by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmjax import lm_losses
from rmjax.checkpoints import hf as hf_ckpt
from rmjax.models.llama import Llama

log_sig = lambda z: -math.log1p(math.exp(-z))  # log sigmoid(z)


# ------------------------------------------------------------------ token / sequence log-probs

def test_token_logprobs_hand_computed():
  logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.2, 0.7], [1 / 3, 1 / 3, 1 / 3]]]))
  ids = jnp.array([[0, 2, 1]])
  # token 1 (=2) scored by logits[0] -> 0.25, token 2 (=1) by logits[1] -> 0.2; entry 0 is 0
  np.testing.assert_allclose(lm_losses.token_logprobs(logits, ids),
                             [[0.0, math.log(0.25), math.log(0.2)]], rtol=1e-6)


def test_response_mask_and_sums():
  mask = jnp.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
  prompt_len = jnp.array([2, 4])
  rm = lm_losses.response_mask(mask, prompt_len)
  np.testing.assert_array_equal(rm, [[0, 0, 1, 1, 0], [0, 0, 0, 0, 1]])
  lp = jnp.array([[0.0, -1.0, -2.0, -3.0, -9.0], [0.0, -1.0, -1.0, -1.0, -0.5]])
  np.testing.assert_allclose(lm_losses.sequence_logprobs(lp, rm), [-5.0, -0.5])
  np.testing.assert_allclose(lm_losses.sequence_logprobs(lp, rm, average=True), [-2.5, -0.5])


@pytest.mark.parametrize("tied", [True, False])
def test_response_logprobs_match_transformers(tied):
  """Summed response log-probs equal GRM's `get_batch_logps` (labels -100 on prompt and pad,
  shifted) computed with transformers on the same weights."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  hf_cfg = transformers.LlamaConfig(
      vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
      rms_norm_eps=1e-5, tie_word_embeddings=tied, initializer_range=0.2)
  model = transformers.LlamaForCausalLM(hf_cfg).float().eval()
  cfg = hf_ckpt.config_from_hf(hf_cfg.to_dict())
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  params = hf_ckpt.params_from_hf_state_dict(sd, cfg)

  rng = np.random.default_rng(0)
  b, t = 3, 12
  ids = rng.integers(1, 96, (b, t)).astype(np.int64)
  lengths, prompt_len = np.array([12, 9, 6]), np.array([4, 2, 5])
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int64)
  ids[mask == 0] = 0

  labels = ids.copy()
  labels[np.arange(t)[None] < prompt_len[:, None]] = -100
  labels[mask == 0] = -100
  with torch.no_grad():
    logits = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    lab = torch.tensor(labels[:, 1:])
    logits = logits[:, :-1]
    keep = lab != -100
    per_tok = torch.gather(logits.log_softmax(-1), 2, lab.clamp(min=0).unsqueeze(2)).squeeze(2)
    ref = (per_tok * keep).sum(-1).numpy()

  ours_logits = Llama(cfg).apply({"params": params}, jnp.asarray(ids, jnp.int32),
                                 jnp.asarray(mask, jnp.int32))
  ours = lm_losses.response_logprobs(ours_logits, jnp.asarray(ids), jnp.asarray(mask),
                                     jnp.asarray(prompt_len))
  np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-4, atol=1e-3)


# ------------------------------------------------------------------ regularisers, by hand

LC, LR = jnp.array([-10.0, -4.0, -7.0]), jnp.array([-12.0, -3.0, 0.0])
RC, RRj = jnp.array([-11.0, -5.0, 0.0]), jnp.array([-11.0, -2.0, 0.0])
W = jnp.array([1.0, 1.0, 0.0])  # third row is filler


def test_sft_regularisers_hand_computed():
  got = lm_losses.regulariser("sft", LC, LR, beta=0.1, weight=W)
  assert float(got) == pytest.approx(-(log_sig(-1.0) + log_sig(-0.4)) / 2, abs=1e-6)
  got = lm_losses.regulariser("sft_plain", LC, LR, beta=0.1, weight=W)
  assert float(got) == pytest.approx((10.0 + 4.0) / 2, abs=1e-6)


def test_dpo_regularisers_hand_computed():
  got = lm_losses.regulariser("dpo_noref", LC, LR, beta=0.1, weight=W)
  # l_c - l_r = 2, -1
  assert float(got) == pytest.approx(-(log_sig(0.2) + log_sig(-0.1)) / 2, abs=1e-6)
  got = lm_losses.regulariser("dpo_ref", LC, LR, RC, RRj, beta=0.1, weight=W)
  # (l_c - l_r) - (ref_c - ref_r) = 2 - 0, -1 - (-3) = 2
  assert float(got) == pytest.approx(-(log_sig(0.2) + log_sig(0.2)) / 2, abs=1e-6)
  unweighted = lm_losses.dpo_loss(LC[:2], LR[:2], beta=0.5)
  assert float(unweighted) == pytest.approx(-(log_sig(1.0) + log_sig(-0.5)) / 2, abs=1e-6)


def test_regulariser_bad_inputs():
  with pytest.raises(ValueError, match="unknown regulariser 'kl'"):
    lm_losses.regulariser("kl", LC, LR)
  with pytest.raises(ValueError, match="needs reference"):
    lm_losses.regulariser("dpo_ref", LC, LR)
  with pytest.raises(ValueError, match="both reference"):
    lm_losses.dpo_loss(LC, LR, RC, None)


def test_regulariser_gradients_flow_only_through_policy():
  g = jax.grad(lambda c, r: lm_losses.regulariser("dpo_noref", c, r, beta=0.1))(LC, LR)
  # d/dl_c of -log sigmoid(beta d) = -beta * sigmoid(-beta d) / n
  d = np.array(LC - LR)
  np.testing.assert_allclose(g, -0.1 / (1 + np.exp(0.1 * d)) / 3, rtol=1e-5)
