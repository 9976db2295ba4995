"""Tokenizers and chat rendering: prompt messages + response -> token ids, with explicit truncation.

`ByteTokenizer` is a built-in, offline tokenizer (UTF-8 bytes + 4 ChatML specials) for tiny
models and the default `rmjax train` run. `ChatEncoder` works with it and with HF tokenizers
(e.g. SmolLM2's, loaded from its GGUF) alike: it only uses the small interface below
(`apply_chat_template`, `encode`, `eos_token`, `pad_token_id`, ...).

Why prompt and response are tokenized apart: GRM/SFT losses mask the prompt, ArmoRM reads the
hidden state at the last prompt token (`prompt_end_index = len(prompt_ids) - 1`), and truncation
treats them differently (the prompt loses its oldest tokens, the response its tail).
"""

import re

from rmjax.errors import DataError

SPECIAL_TOKENS = ('<pad>', '<|im_start|>', '<|im_end|>', '<bos>')
BYTE_OFFSET = len(SPECIAL_TOKENS)  # byte b has id b + 4
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
ROLES = ('system', 'user', 'assistant', 'tool')


class ByteTokenizer:
  """UTF-8 bytes as tokens: ids 0..3 = <pad>, <|im_start|>, <|im_end|>, <bos>; byte b = b + 4.

  vocab_size 260 fits the tiny model's 512-entry vocabulary. Special strings in text are
  recognised by `encode` (as HF tokenizers do), so a rendered ChatML conversation encodes to
  the same structure SmolLM2's tokenizer produces (<|im_start|> ... <|im_end|>).
  """

  name_or_path = 'byte'
  chat_template = CHATML_TEMPLATE
  vocab_size = BYTE_OFFSET + 256
  pad_token, bos_token, eos_token = '<pad>', '<bos>', '<|im_end|>'
  pad_token_id, bos_token_id, eos_token_id = 0, 3, 2
  _special_ids = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
  _special_re = re.compile('(' + '|'.join(re.escape(t) for t in SPECIAL_TOKENS) + ')')

  def __len__(self):
    return self.vocab_size

  def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False, **kwargs):
    """ChatML: '<|im_start|>role\\ncontent<|im_end|>\\n' per message (+ assistant header)."""
    del kwargs  # HF passes extras (return_dict, ...) that this subset ignores
    text = ''.join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    if add_generation_prompt:
      text += '<|im_start|>assistant\n'
    return self.encode(text) if tokenize else text

  def encode(self, text, add_special_tokens=False):
    """Text -> ids; special strings become their ids; `add_special_tokens` prepends <bos>."""
    ids = [self.bos_token_id] if add_special_tokens else []
    for piece in self._special_re.split(text):
      if piece in self._special_ids:
        ids.append(self._special_ids[piece])
      elif piece:
        ids.extend(b + BYTE_OFFSET for b in piece.encode('utf-8'))
    return ids

  def __call__(self, text, add_special_tokens=False, **kwargs):
    del kwargs
    if isinstance(text, (list, tuple)):
      return {'input_ids': [self.encode(t, add_special_tokens) for t in text]}
    return {'input_ids': self.encode(text, add_special_tokens)}

  def decode(self, ids, skip_special_tokens=False):
    """Ids -> text; bytes that do not form valid UTF-8 decode as U+FFFD."""
    out, buf = [], bytearray()
    for i in (int(i) for i in ids):
      if BYTE_OFFSET <= i < BYTE_OFFSET + 256:
        buf.append(i - BYTE_OFFSET)
        continue
      if i >= BYTE_OFFSET + 256:  # ids past the byte range (a bigger model vocab): unknown
        buf.extend('\ufffd'.encode())
        continue
      out.append(buf.decode('utf-8', errors='replace'))
      buf = bytearray()
      if not skip_special_tokens:
        out.append(SPECIAL_TOKENS[i])
    out.append(buf.decode('utf-8', errors='replace'))
    return ''.join(out)

  def convert_tokens_to_ids(self, tokens):
    """Special token or single-byte character -> id (None if not a token); lists map over."""
    if isinstance(tokens, (list, tuple)):
      return [self.convert_tokens_to_ids(t) for t in tokens]
    if tokens in self._special_ids:
      return self._special_ids[tokens]
    raw = tokens.encode('utf-8')
    return raw[0] + BYTE_OFFSET if len(raw) == 1 else None


def normalize_prompt(prompt, path='<prompt>', line=None, field='prompt'):
  """str -> [{'role': 'user', 'content': str}]; a message list is validated and copied.

  Raises DataError naming `path:line: field` on anything else.
  """
  if isinstance(prompt, str):
    if not prompt.strip():
      raise DataError(path, line, field, 'empty text')
    return [{'role': 'user', 'content': prompt}]
  if isinstance(prompt, (list, tuple)) and not isinstance(prompt, str):
    if not prompt:
      raise DataError(path, line, field, 'empty message list')
    out = []
    for i, m in enumerate(prompt):
      if isinstance(m, (list, tuple)) and len(m) == 2:  # (role, content) tuples
        m = {'role': m[0], 'content': m[1]}
      if not isinstance(m, dict) or 'role' not in m or 'content' not in m:
        raise DataError(path, line, f'{field}[{i}]', "expected a message {'role', 'content'}")
      if m['role'] not in ROLES:
        raise DataError(path, line, f'{field}[{i}].role',
                        f'unknown role {m["role"]!r} (expected one of {list(ROLES)})')
      if not isinstance(m['content'], str):
        raise DataError(path, line, f'{field}[{i}].content',
                        f'expected a string, got {type(m["content"]).__name__}')
      out.append({'role': m['role'], 'content': m['content']})
    return out
  raise DataError(path, line, field,
                  f'expected a string or a list of messages, got {type(prompt).__name__}')


def truncate(prompt_ids, responses, max_length):
  """Cuts (prompt, responses sharing it) so that len(prompt) + len(each response) <= max_length.

  The prompt is cut from the LEFT (its last tokens, nearest the response, stay) and only as far
  as needed for the longest response to keep min(len, max_length // 2) tokens; responses are then
  cut from the RIGHT. One prompt cut for all responses, so chosen and rejected see the same
  context. Returns (prompt_ids, [response_ids], truncated).

  This is rmjax's one truncation rule, for training, `rmjax eval` / `compare` and `rmjax score`
  alike: a preference pair is cut as ONE call with both responses (training batches,
  `ChatEncoder.encode_responses`, `Scorer.pair_rows`), so eval feeds the model exactly the ids
  the pair had in training; a response scored alone (`rmjax score`, `serve`'s /v1/score) is one
  call with one response, which gives it the ids it has in a pair whose other response is not
  longer (the cut depends only on the longest response). A pair is truncated when
  prompt + its longer response exceeds max_length, i.e. when either side alone would be.
  ArmoRM's pair rows use it too (`rmjax.inference.embed.encode_pair_rows`). Not under it:
  `FeatureCache.pairs` cuts each side alone (its on-disk rows are keyed by those ids), and
  `serve`'s /get_reward keeps the first max_length tokens of an already rendered text.
  """
  longest = max((len(r) for r in responses), default=0)
  if len(prompt_ids) + longest <= max_length:
    return list(prompt_ids), [list(r) for r in responses], False
  keep_response = min(longest, max_length // 2)
  prompt_budget = max_length - keep_response
  prompt_ids = list(prompt_ids[-prompt_budget:]) if len(prompt_ids) > prompt_budget else list(
      prompt_ids)
  room = max_length - len(prompt_ids)
  return prompt_ids, [list(r[:room]) for r in responses], True


class ChatEncoder:
  """Renders (prompt messages, response) with the tokenizer's chat template and tokenizes.

  prompt_ids = template(messages, add_generation_prompt=True); response_ids = tokens of the full
  conversation (messages + assistant response) after the prompt's tokens, so prompt + response
  is exactly how the tokenizer reads the whole conversation (end-of-turn tokens included). When
  the rendered prompt is not a prefix of the full render (templates that rewrite history), the
  response is tokenized alone plus the end-of-turn text.
  """

  def __init__(self, tokenizer, max_length, max_prompt_length=None):
    if max_length < 2:
      raise ValueError(f'max_length must be >= 2, got {max_length}')
    self.tokenizer = tokenizer
    self.max_length = int(max_length)
    self.max_prompt_length = max_prompt_length
    self.eot_text = (getattr(tokenizer, 'eos_token', None) or '') + '\n'
    self.n_truncated = 0  # inputs `cut` shortened: readers report it (`rmjax score`, eval)

  @property
  def pad_id(self):
    """Pad id for batches: the tokenizer's pad, else its EOS, else 0 (masks mark validity)."""
    for name in ('pad_token_id', 'eos_token_id'):
      value = getattr(self.tokenizer, name, None)
      if value is not None:
        return int(value)
    return 0

  def _encode(self, text):
    return list(self.tokenizer.encode(text, add_special_tokens=False))

  def render_prompt(self, messages):
    return self.tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=True)

  def encode_prompt(self, messages):
    """Prompt ids (generation prompt included), left-cut to max_prompt_length / max_length - 1."""
    ids = self._encode(self.render_prompt(messages))
    limit = min(self.max_prompt_length or self.max_length, self.max_length - 1)
    return ids[-limit:] if len(ids) > limit else ids

  def _response_ids(self, messages, prompt_text, prompt_ids, response):
    full = self.tokenizer.apply_chat_template(
        list(messages) + [{'role': 'assistant', 'content': response}],
        tokenize=False, add_generation_prompt=False)
    if full.startswith(prompt_text):
      full_ids = self._encode(full)
      if full_ids[:len(prompt_ids)] == prompt_ids:
        return full_ids[len(prompt_ids):]
      return self._encode(full[len(prompt_text):])  # token boundary moved: tokenize the rest
    return self._encode(response + self.eot_text)

  def encode_untruncated(self, messages, responses):
    """(prompt_ids, [response_ids]) for several responses to one prompt, without any cut."""
    messages = list(messages)
    prompt_text = self.render_prompt(messages)
    prompt_ids = self._encode(prompt_text)
    return prompt_ids, [self._response_ids(messages, prompt_text, prompt_ids, r) for r in responses]

  def cut(self, prompt_ids, responses):
    """Applies max_prompt_length then `truncate` to max_length: (prompt, responses, truncated)."""
    was_cut = False
    if self.max_prompt_length and len(prompt_ids) > self.max_prompt_length:
      prompt_ids, was_cut = prompt_ids[-self.max_prompt_length:], True
    prompt_ids, responses, cut_more = truncate(prompt_ids, responses, self.max_length)
    self.n_truncated += int(was_cut or cut_more)
    return prompt_ids, responses, was_cut or cut_more

  def encode_responses(self, messages, responses):
    """(prompt_ids, [response_ids], truncated) for several responses sharing one prompt cut
    (a preference pair: the rule `truncate` documents)."""
    return self.cut(*self.encode_untruncated(messages, responses))

  def encode_pair(self, messages, response):
    """(prompt_ids, response_ids, truncated) of one response alone (`truncate`: as the longer
    side of a pair); prompt_end_index = len(prompt_ids) - 1."""
    prompt_ids, (response_ids,), was_cut = self.encode_responses(messages, [response])
    return prompt_ids, response_ids, was_cut
