"""Batched, cached tokenization of (prompt, responses) examples: the fast path of `ChatEncoder`.

`ChatEncoder.encode_untruncated` renders the chat template and calls the tokenizer per example
(3 renders + 3 encode calls per pair). `encode_many` gives the same ids (tested to be identical)
with the template rendered once per distinct prompt and all texts encoded in large batches
(`tokenizer(texts)`: the Rust fast tokenizer encodes a batch on all cores). `cached_encode_many`
stores the untruncated ids on disk, keyed by the examples' text, the tokenizer (vocabulary,
special tokens, chat template) and nothing else: truncation to `max_length` is cheap and done
afterwards, so train, eval and score at any max_length reuse one cache entry.

Cache: `<dir>/tokens-<key>.npz` (flat int32 ids + offsets), written atomically; dir =
`data.token_cache`, else $RMJAX_CACHE/tokens, else ~/.cache/rmjax/tokens ("off" disables it).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

try:  # the compiled chat template (transformers' own cache); optional
  from transformers.utils import chat_template_utils
except ImportError:  # pragma: no cover
  chat_template_utils = None

CHUNK = 2048  # texts per tokenizer call: large enough for the Rust batch, small enough for tqdm


def _encode_texts(tokenizer, texts: Sequence[str], progress: bool, desc: str) -> list:
  """Ids of many texts, no special tokens added: the Rust tokenizer's `encode_batch_fast` (no
  offsets) when there is one, else `tokenizer(texts)`."""
  backend = getattr(tokenizer, "backend_tokenizer", None)
  fast = getattr(backend, "encode_batch_fast", None)
  out = []
  for i in tqdm(range(0, len(texts), CHUNK), desc=desc, disable=not progress, leave=False):
    chunk = list(texts[i:i + CHUNK])
    if fast is not None:
      out += [e.ids for e in fast(chunk, add_special_tokens=False)]
    else:
      out += [list(x) for x in tokenizer(chunk, add_special_tokens=False)["input_ids"]]
  return out


def _key(messages) -> str:
  return json.dumps(messages, sort_keys=True, ensure_ascii=False)


def _renderer(tokenizer):
  """render(messages, add_generation_prompt) -> text, equal to `tokenizer.apply_chat_template(
  ..., tokenize=False)`. For HF tokenizers the compiled Jinja template is called directly
  (apply_chat_template's per-call message normalisation costs more than the render itself);
  checked against apply_chat_template on a probe conversation, else apply_chat_template it is."""
  def slow(messages, gen):
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=gen)
  template = getattr(tokenizer, "chat_template", None)
  if not isinstance(template, str) or chat_template_utils is None:
    return slow
  compiled = chat_template_utils._compile_jinja_template(template)  # cached by transformers
  specials = dict(getattr(tokenizer, "special_tokens_map", {}) or {})
  def fast(messages, gen):
    return compiled.render(messages=[dict(m) for m in messages], add_generation_prompt=gen,
                           tools=None, documents=None, **specials)
  probe = [{"role": "system", "content": "s"}, {"role": "user", "content": " a\n"},
           {"role": "assistant", "content": "b "}, {"role": "user", "content": "c"}]
  try:
    ok = all(fast(probe[:k], g) == slow(probe[:k], g) for k in (2, 3, 4) for g in (True, False))
  except Exception:  # noqa: BLE001 -- any template surprise: keep the reference path
    ok = False
  return fast if ok else slow


def _suffix_splitter(tokenizer):
  """boundary_ok(text, at) for tokenizers where ids(text) == ids(text[:at]) + ids(text[at:])
  whenever `at` is a pre-token boundary: BPE over a ByteLevel pre-tokenizer without prefix space
  and without a normaliser (GPT-2 / Llama-3 / SmolLM2 style). None for any other tokenizer."""
  backend = getattr(tokenizer, "backend_tokenizer", None)
  if backend is None:
    return None
  spec = json.loads(backend.to_str())
  pre = spec.get("pre_tokenizer") or {}
  if (spec.get("normalizer") is not None or spec.get("model", {}).get("type") != "BPE"
      or pre.get("type") != "ByteLevel" or pre.get("add_prefix_space")):
    return None
  specials = sorted((t["content"] for t in spec.get("added_tokens", [])), key=len, reverse=True)
  pre_tok = backend.pre_tokenizer

  def boundary_ok(text: str, at: int) -> bool:
    start = max((text.rfind(t, 0, at) + len(t) for t in specials if t in text[:at]), default=0)
    if start > at:
      return False
    window = text[start:at + 32]  # pre-tokens never look further than one run of a class
    return any(end == at - start for _, (_, end) in pre_tok.pre_tokenize_str(window))
  return boundary_ok


def encode_many(encoder, items: Sequence[tuple], progress: bool = False) -> list:
  """[(prompt_ids, [response_ids, ...])] for items [(messages, [response, ...])], untruncated;
  element-wise equal to `encoder.encode_untruncated(messages, responses)`.

  Per response the full conversation is rendered; where the rendered prompt is a prefix ending
  at a pre-token boundary only the rest is encoded (BPE never merges across that boundary), else
  the whole conversation is encoded and compared with the prompt's ids as ChatEncoder does."""
  tok = encoder.tokenizer
  render, boundary_ok = _renderer(tok), _suffix_splitter(tok)
  item_keys = [_key(messages) for messages, _ in items]  # one JSON dump per item
  prompts: dict = {}
  for k, (messages, _) in zip(item_keys, items):
    prompts.setdefault(k, list(messages))
  keys = list(prompts)
  prompt_text = {k: render(prompts[k], True) for k in keys}
  texts = [prompt_text[k] for k in keys]
  slots = []  # per response: (index into texts, is_suffix, full text)
  for k, (messages, responses) in zip(item_keys, items):
    p_text = prompt_text[k]
    for r in responses:
      full = render(list(messages) + [{"role": "assistant", "content": r}], False)
      suffix = (boundary_ok is not None and full.startswith(p_text)
                and boundary_ok(full, len(p_text)))
      slots.append((len(texts), suffix, full))
      texts.append(full[len(p_text):] if suffix else full)
  ids = _encode_texts(tok, texts, progress, "tokenize")
  prompt_ids = dict(zip(keys, ids[:len(keys)]))
  out, redo, slot = [], [], iter(slots)
  for i, (k, (_, responses)) in enumerate(zip(item_keys, items)):
    p_text, p_ids = prompt_text[k], prompt_ids[k]
    resp = []
    for j, r in enumerate(responses):
      at, suffix, full = next(slot)
      f_ids = ids[at]
      if suffix:
        resp.append(f_ids)
      elif full.startswith(p_text) and f_ids[:len(p_ids)] == p_ids:
        resp.append(f_ids[len(p_ids):])
      else:  # token boundary moved, or a template that rewrites history (ChatEncoder's rule)
        resp.append(None)
        redo.append((i, j, full[len(p_text):] if full.startswith(p_text) else r + encoder.eot_text))
    out.append((list(p_ids), resp))
  if redo:
    for (i, j, _), got in zip(redo, _encode_texts(tok, [t for *_, t in redo], False, "")):
      out[i][1][j] = got
  return out


def tokenizer_fingerprint(tokenizer) -> str:
  """Hash of what decides the ids: vocabulary + merges (the serialised fast tokenizer, or the
  class for the built-in byte tokenizer), special tokens and the chat template."""
  h = hashlib.sha256(type(tokenizer).__name__.encode())
  backend = getattr(tokenizer, "backend_tokenizer", None)
  if backend is not None:
    h.update(backend.to_str().encode())
  for name in ("chat_template", "eos_token", "bos_token", "pad_token"):
    h.update(f"|{name}={getattr(tokenizer, name, None)}".encode())
  return h.hexdigest()[:16]


def _items_fingerprint(items) -> str:
  h = hashlib.sha256()
  for messages, responses in items:
    h.update(json.dumps([list(messages), list(responses)], ensure_ascii=False).encode() + b"\n")
  return h.hexdigest()[:16]


def cache_dir(configured: str = "") -> str:
  return configured or os.path.join(
      os.environ.get("RMJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rmjax"),
      "tokens")


def _pack(encoded) -> dict:
  seqs = [p for p, _ in encoded] + [r for _, rs in encoded for r in rs]
  return {"ids": np.asarray([t for s in seqs for t in s], np.int32),
          "lengths": np.asarray([len(s) for s in seqs], np.int64),
          "per_item": np.asarray([len(rs) for _, rs in encoded], np.int64)}


def _unpack(z) -> list:
  ids, lengths, per_item = z["ids"], z["lengths"], z["per_item"]
  bounds = np.concatenate([[0], np.cumsum(lengths)])
  seqs = [ids[bounds[i]:bounds[i + 1]].tolist() for i in range(len(lengths))]
  n = len(per_item)
  prompts, rest, out = seqs[:n], iter(seqs[n:]), []
  for p, k in zip(prompts, per_item):
    out.append((p, [next(rest) for _ in range(int(k))]))
  return out


def cached_encode_many(encoder, items: Sequence[tuple], directory: str = "",
                       progress: bool = False) -> tuple:
  """(encode_many(encoder, items), hit: bool) through the on-disk cache (directory 'off': none)."""
  if directory == "off":
    return encode_many(encoder, items, progress), False
  directory = cache_dir(directory)
  path = os.path.join(directory, f"tokens-{tokenizer_fingerprint(encoder.tokenizer)}-"
                                 f"{_items_fingerprint(items)}.npz")
  if os.path.exists(path):
    try:
      with np.load(path) as z:
        return _unpack(z), True
    except (OSError, ValueError, KeyError):  # a damaged entry is recomputed, never trusted
      pass
  encoded = encode_many(encoder, items, progress)
  try:
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **_pack(encoded))
    os.replace(tmp, path)
  except OSError:  # a read-only cache dir costs speed, not correctness
    pass
  return encoded, False
