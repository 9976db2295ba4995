"""SALMON self-judging: the model compares two outputs under one principle, both orders.

The judge prompt goes through the chat template with the answer pre-filled up to the verdict
token ("... the better one is Output ("); the score is l(a) - l(b), the logit difference of the
two verdict tokens at the last position, computed through `rmjax.inference.embed.batched_forward`
(left-padded, bucketed, sharded). Used by `rmjax collect` (`rmjax.tasks.salmon_collect`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rmjax.data import principles as P
from rmjax.errors import ConfigError
from rmjax.inference.embed import batched_forward
from rmjax.models.llama import Llama

JUDGE_SYSTEM = ("You compare two outputs of an AI assistant for the same instruction and pick the "
                "better one, or the less flawed one when both have problems, judging only by the "
                "guideline you are given.")
JUDGE_USER = ("Instruction:\n{instruction}\n\nOutput (a):\n{a}\n\nOutput (b):\n{b}\n\n"
              "Guideline: compare the two outputs on this dimension only.\n"
              "{dimension}: {definition}\n\nWhich output is better on this dimension?")
JUDGE_PREFILL = "Comparing the two outputs on {dimension}, the better one is Output ("


def judge_token_ids(tokenizer, tokens, context: str = "Output (") -> list:
  """Ids of the verdict tokens as the tokenizer reads them right after `context`; ConfigError
  unless each is exactly one token there (and they differ)."""
  enc = lambda s: list(tokenizer.encode(s, add_special_tokens=False))
  base = enc(context)
  out = []
  for t in tokens:
    ids = enc(context + t)
    if ids[:len(base)] != base or len(ids) != len(base) + 1:
      raise ConfigError(f"judge token {t!r} is not a single token after {context!r} for tokenizer "
                        f"{getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)} "
                        f"({ids[len(base):] if ids[:len(base)] == base else ids}): choose "
                        f"collect.judge_tokens that are")
    out.append(ids[-1])
  if len(set(out)) != len(out):
    raise ConfigError(f"judge tokens {list(tokens)} map to the same id {out}")
  return out


def judge_ids(tokenizer, messages, first: str, second: str, principle) -> list:
  """Judge prompt through the chat template, the answer pre-filled up to the verdict token."""
  user = JUDGE_USER.format(instruction=P.instruction_text(messages), a=first, b=second,
                           dimension=principle.dimension, definition=principle.definition)
  chat = [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]
  text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
  text += JUDGE_PREFILL.format(dimension=principle.dimension)
  return list(tokenizer.encode(text, add_special_tokens=False))


@functools.partial(jax.jit, static_argnames=("cfg", "token_ids"))
def _verdict_logits(params, ids, mask, *, cfg, token_ids):
  """Left-padded judge prompts [B, T] -> logits of the verdict tokens at the last slot [B, 2]."""
  hidden, _ = Llama(cfg).apply({"params": params}, ids, mask, method=Llama.hidden_states)
  logits = Llama(cfg).apply({"params": params}, hidden[:, -1:], method=Llama.logits_from_hidden)
  return logits[:, 0][:, jnp.asarray(token_ids, jnp.int32)]


def judge_scores(params, cfg, tokenizer, items, token_ids, *, batch_size: int, max_length: int,
                 mesh=None) -> np.ndarray:
  """items: [(messages, first, second, principle)] -> l(a) - l(b) per item [N] (a = first).
  Prompts are left-padded (the verdict is read at the last slot) and left-truncated to
  `max_length` (the pre-filled verdict end must stay)."""
  rows = [judge_ids(tokenizer, *it) for it in items]
  if not rows:
    return np.zeros(0)
  fn = functools.partial(_verdict_logits, cfg=cfg, token_ids=tuple(int(t) for t in token_ids))
  lg = batched_forward(fn, params, rows, batch_size=batch_size, mesh=mesh, side="left",
                       max_length=max_length)
  return lg[:, 0] - lg[:, 1]
