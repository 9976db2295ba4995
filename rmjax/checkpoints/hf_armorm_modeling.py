"""ArmoRM modeling code that travels with an rmjax ArmoRM export (as modeling_rmjax_armorm.py,
named in config.json's auto_map), so that

  AutoModelForSequenceClassification.from_pretrained(OUT, trust_remote_code=True)

returns the gated reward rmjax scores, not a sequence classifier with a randomly initialised
`score` head. It is RLHFlow's `LlamaForRewardModelWithGating` (same parameter names, so the
released ArmoRM checkpoints load too), with rmjax's pooling: the reward is read at the last real
token of the attention mask (right or left padding) and the gate at the first token of the last
match of config.json's `rmjax.prompt_pattern` among real tokens (the chat template's end of the
last user turn; the last real token when there is none).

Output (like RLHFlow's): `logits` = `score` [B, 1] (the gated reward, what RewardBench and TRL
read), `rewards` [B, O] (the objectives, before the transform), `gating_output` [B, O]
(logit_scale x softmax gate), `hidden_state` and `prompt_embedding` [B, D].

This file imports torch and transformers only: rmjax never imports it (it is copied into OUT).
"""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaModel, LlamaPreTrainedModel
from transformers.utils import ModelOutput


@dataclass
class RewardOutput(ModelOutput):
  logits: Optional[torch.FloatTensor] = None
  score: Optional[torch.FloatTensor] = None
  rewards: Optional[torch.FloatTensor] = None
  gating_output: Optional[torch.FloatTensor] = None
  hidden_state: Optional[torch.FloatTensor] = None
  prompt_embedding: Optional[torch.FloatTensor] = None


class GatingNetwork(nn.Module):
  """n_hidden x (Linear + ReLU) -> Linear -> softmax(x / temperature) x logit_scale."""

  def __init__(self, in_features, out_features, temperature=10.0, hidden_dim=1024, n_hidden=3):
    super().__init__()
    self.temperature = temperature
    layers = []
    for _ in range(n_hidden):
      layers.append(nn.Linear(in_features, hidden_dim))
      in_features = hidden_dim
    layers.append(nn.Linear(in_features, out_features))
    self.layers = nn.ModuleList(layers)
    self.logit_scale = nn.Parameter(torch.ones(1))

  def forward(self, x):
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.layers) - 1:
        x = F.relu(x)
    return F.softmax(x / self.temperature, dim=1) * self.logit_scale[0]


def last_token_index(mask):
  """[B] index of the last real token (right or left padding)."""
  t = mask.shape[1]
  return t - 1 - torch.argmax(mask.flip(1).to(torch.int64), dim=1)


def prompt_end_index(ids, mask, pattern):
  """[B] first token of the last match of `pattern` among real tokens, else the last token."""
  last = last_token_index(mask)
  n = len(pattern)
  if not n or n > ids.shape[1]:
    return last
  windows = ids.unfold(1, n, 1)                                     # [B, T-n+1, n]
  real = mask.unfold(1, n, 1).bool().all(-1)
  hit = (windows == torch.tensor(pattern, device=ids.device)).all(-1) & real
  pos = torch.arange(hit.shape[1], device=ids.device).expand_as(hit)
  found = torch.where(hit, pos, torch.full_like(pos, -1)).max(dim=1).values
  return torch.where(found >= 0, found, last)


class LlamaForRewardModelWithGating(LlamaPreTrainedModel):
  config_class = LlamaConfig

  def __init__(self, config):
    super().__init__(config)
    objectives = int(getattr(config, "num_objectives", 19))
    self.num_labels = 1
    self.model = LlamaModel(config)
    self.regression_layer = nn.Linear(config.hidden_size, objectives, bias=False)
    self.reward_transform_matrix = nn.Parameter(torch.eye(objectives))
    self.gating = GatingNetwork(config.hidden_size, objectives,
                                temperature=float(getattr(config, "gating_temperature", 10)),
                                hidden_dim=int(getattr(config, "gating_hidden_dim", 1024)),
                                n_hidden=int(getattr(config, "gating_n_hidden", 3)))
    rm = getattr(config, "rmjax", None) or {}
    self.prompt_pattern = [int(t) for t in rm.get("prompt_pattern") or []]
    self.post_init()

  def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
              return_dict=None, **kwargs):
    del return_dict, kwargs  # always a RewardOutput
    out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                     inputs_embeds=inputs_embeds)
    hidden = out.last_hidden_state                                  # [B, T, D]
    if attention_mask is None:
      attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    h = hidden[rows, last_token_index(attention_mask)].float()
    if input_ids is not None:
      prompt = hidden[rows, prompt_end_index(input_ids, attention_mask, self.prompt_pattern)].float()
    else:
      prompt = h
    rewards = self.regression_layer.float()(h)                       # [B, O]
    gate = self.gating.float()(prompt)                               # [B, O]
    score = torch.sum(gate * (rewards @ self.reward_transform_matrix.float()), dim=1, keepdim=True)
    return RewardOutput(logits=score, score=score, rewards=rewards, gating_output=gate,
                        hidden_state=h, prompt_embedding=prompt)
