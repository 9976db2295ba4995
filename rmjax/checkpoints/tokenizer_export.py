"""The tokenizer that travels with an exported reward model, and its pad token.

`byte_tokenizer_fast()` rebuilds rmjax's built-in `ByteTokenizer` (rmjax/data/tokenize.py) with
the `tokenizers` library: a byte-level BPE without merges (byte b -> id b + 4, GPT-2's
byte-to-unicode alphabet) plus the four specials at ids 0..3, recognised anywhere in text. It
encodes every string exactly as `ByteTokenizer.encode(text)` does, and `tokenizer(text)` (the
call TRL / RewardBench make) too: like SmolLM2's tokenizer it adds no special token by itself
(ByteTokenizer's `add_special_tokens=True` would prepend <bos>; rmjax never scores with it).
It carries the ChatML chat template and `AutoTokenizer.from_pretrained(OUT)` loads it.

Why the pad token matters: transformers' `LlamaForSequenceClassification` pools the logits at
the rightmost token that is not `config.pad_token_id`, RLHFlow's ArmoRM at the token before the
first pad; rmjax pools at the last token of the attention mask. They agree for right and left
padding as long as no real token equals the pad id. With pad == eos (SmolLM2, Llama-3 setups
pad with eos) a sequence that ends in eos would be pooled one token early, so `export_tokenizer`
makes the pad distinct: the tokenizer's own pad if it is not an eos/bos id; else a new
`<|rmjax_pad|>` special when the model's vocabulary has a free row (ids past the tokenizer); else
an existing special token the chat template never emits (names with 'pad', then 'reserved',
then any other, e.g. SmolLM2's `<repo_name>`). The exported tokenizer pads with that token and
config.json's pad_token_id names it, so padded batches give the unpadded rewards.

`save_tokenizer` writes it so that transformers 4.x loads it too (RewardBench pins 4.51):
transformers 5 names its fast tokenizers' class `TokenizersBackend`, which 4.x does not have;
a tokenizer.json-backed tokenizer is `PreTrainedTokenizerFast` on both, with
`model_input_names` [input_ids, attention_mask] (4.x's default would add token_type_ids, which
Llama does not take) and the chat template also inside tokenizer_config.json.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Optional

from rmjax.data.tokenize import BYTE_OFFSET, CHATML_TEMPLATE, SPECIAL_TOKENS, ByteTokenizer
from rmjax.errors import CheckpointError

NEW_PAD = "<|rmjax_pad|>"


def bytes_to_unicode() -> dict:
  """GPT-2's reversible byte -> printable character map (the ByteLevel alphabet)."""
  bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1)))
  cs, n = bs[:], 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


def byte_tokenizer_fast():
  """A transformers fast tokenizer that encodes, decodes and chat-renders like ByteTokenizer."""
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers  # optional dep
  from transformers import PreTrainedTokenizerFast  # optional dep, only for exports
  alphabet = bytes_to_unicode()
  vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
  vocab.update({alphabet[b]: b + BYTE_OFFSET for b in range(256)})
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
  b = ByteTokenizer
  out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=b.bos_token,
                                eos_token=b.eos_token, pad_token=b.pad_token)
  out.chat_template = CHATML_TEMPLATE
  return out


def _eos_ids(tok, extra_eos) -> set:
  ids = {getattr(tok, "eos_token_id", None), getattr(tok, "bos_token_id", None)}
  for x in extra_eos or ():
    ids.add(x)
  return {int(i) for i in ids if i is not None}


def _unused_special(tok, vocab_size: int, taken: set) -> Optional[str]:
  """An existing special token the chat template never writes (pad-like names first)."""
  template = str(getattr(tok, "chat_template", "") or "")
  skip = {getattr(tok, "unk_token", None)}
  found = []
  for i, t in getattr(tok, "added_tokens_decoder", {}).items():
    text = getattr(t, "content", str(t))
    if (i < vocab_size and i not in taken and getattr(t, "special", True) and text not in skip
        and text not in template):
      rank = 0 if "pad" in text.lower() else 1 if "reserved" in text.lower() else 2
      found.append((rank, i, text))
  return min(found)[2] if found else None


def export_tokenizer(tokenizer: Any, vocab_size: int, extra_eos=()) -> tuple:
  """(HF tokenizer to save, pad id for config.json, note for the model card).

  `tokenizer` is rmjax's ByteTokenizer or an HF tokenizer (from an HF dir or a GGUF file); it
  is copied, never changed (`load_tokenizer` caches it). `extra_eos`: the model config's eos ids.
  """
  if isinstance(tokenizer, ByteTokenizer):
    return byte_tokenizer_fast(), ByteTokenizer.pad_token_id, "ByteTokenizer's <pad> (id 0)"
  tok = copy.deepcopy(hf_tokenizer(tokenizer))
  taken = _eos_ids(tok, extra_eos)
  pad = getattr(tok, "pad_token_id", None)
  if pad is not None and int(pad) not in taken and int(pad) < vocab_size:
    return tok, int(pad), f"the tokenizer's own pad token {tok.pad_token!r} (id {pad})"
  if len(tok) < vocab_size:
    tok.add_special_tokens({"pad_token": NEW_PAD})
    pad = tok.convert_tokens_to_ids(NEW_PAD)
    return tok, int(pad), f"a new {NEW_PAD} special (id {pad}, a free embedding row)"
  name = _unused_special(tok, vocab_size, taken)
  if name is None:
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    tok.pad_token_id = pad
    return tok, pad, (f"id {pad}, which is also eos: no free token; a sequence ending in that "
                      "token is pooled one token early by transformers")
  tok.pad_token = name
  pad = tok.convert_tokens_to_ids(name)
  return tok, int(pad), f"{name!r} (id {pad}), a special token the chat template never writes"


def hf_tokenizer(tokenizer: Any):
  """A tokenizer that can be saved: ByteTokenizer becomes its `tokenizers` twin, an HF one stays."""
  if isinstance(tokenizer, ByteTokenizer):
    return byte_tokenizer_fast()
  if not hasattr(tokenizer, "save_pretrained"):
    raise CheckpointError(f"cannot export a {type(tokenizer).__name__} tokenizer: only "
                          "ByteTokenizer and transformers tokenizers can be written")
  return tokenizer


FAST_CLASS = "PreTrainedTokenizerFast"
INPUT_NAMES = ["input_ids", "attention_mask"]


def save_tokenizer(tokenizer: Any, path: str) -> None:
  """`tokenizer.save_pretrained(path)`, with tokenizer_config.json made loadable by
  transformers 4.x and 5.x alike (see the module docstring)."""
  hf_tokenizer(tokenizer).save_pretrained(path)
  conf_path = os.path.join(path, "tokenizer_config.json")
  if not os.path.exists(os.path.join(path, "tokenizer.json")) or not os.path.exists(conf_path):
    return  # a slow (sentencepiece-only) tokenizer: its own class loads everywhere
  with open(conf_path) as f:
    conf = json.load(f)
  conf["tokenizer_class"] = FAST_CLASS
  conf["model_input_names"] = list(INPUT_NAMES)
  template = os.path.join(path, "chat_template.jinja")
  if "chat_template" not in conf and os.path.exists(template):
    with open(template) as f:
      conf["chat_template"] = f.read()
  with open(conf_path, "w") as f:
    json.dump(conf, f, indent=2, ensure_ascii=False)
