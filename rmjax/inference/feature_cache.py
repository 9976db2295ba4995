"""One on-disk cache of frozen-backbone features for experiments: extracted once, resumably.

Head-only experiments (RM ensembles, ArmoRM's stages, a gold RM) all read pooled features of the
same (prompt, response) rows. `FeatureCache(directory, spec, max_length)` holds them:

- a row is the exact token sequence `rmjax score` feeds the model (the chat-rendered conversation,
  `encode_many` + `ChatEncoder.cut`, so its truncation is the scorer's and is counted per row);
- a row is keyed by the sha1 of its token ids, so the same response under the same prompt is
  extracted once whichever data set or split asks for it (AlpacaEval repeats its reference
  outputs 53 times);
- one forward per row gives `last` (final-norm hidden state at the last token: what reward heads
  read), `prompt_end` (the same at the token closing the user turn: ArmoRM's gate input, found by
  the chat template's pattern exactly as `rmjax.models.armorm` finds it) and `mean` (mean over the
  row's real tokens). The LM head is never computed;
- rows are extracted in length order, padded to a multiple of 32 tokens (not a power of two: a
  sorted stream of 130-token rows would otherwise compute 256), and written in shards of
  `chunk` rows (`shard-NNNNN.npz`, atomically), so a killed extraction resumes where it stopped;
- `meta.json` records the model spec, a fingerprint of its weights, max_length and the prompt
  pattern: a cache is refused (ConfigError) by a reader with other settings.

`python -m rmjax.inference.feature_cache --cache DIR --data SPEC [--data SPEC ...]` extracts every
pair of the specs (both responses) and prints one JSON object last (rows, tokens, truncated,
useful tokens/s). Experiments call `FeatureCache.pairs(examples)` for aligned arrays.
"""

from __future__ import annotations

import argparse
import functools
import glob
import hashlib
import json
import os
import sys
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rmjax import checkpoints
from rmjax.data import load_source
from rmjax.data.encode_batch import encode_many
from rmjax.data.tokenize import ChatEncoder, normalize_prompt
from rmjax.errors import ConfigError, RmjaxError
from rmjax.inference import embed as emb
from rmjax.models.armorm import gather_embeddings
from rmjax.models.llama import Llama, LlamaConfig

FEATURES = ("last", "prompt_end", "mean")
PAD_MULTIPLE = 32


@functools.partial(jax.jit, static_argnames=("cfg", "pattern"))
def _features(params, ids, mask, cfg: LlamaConfig, pattern: tuple):
  """{'last', 'prompt_end', 'mean'} [B, D] float32 from one hidden-state forward (no LM head)."""
  hidden = Llama(cfg).apply({"params": params}, ids, mask, output="hidden")
  last, prompt_end = gather_embeddings(hidden, ids, mask, pattern)
  m = mask[..., None].astype(jnp.float32)
  mean = (hidden.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
  return {"last": last, "prompt_end": prompt_end, "mean": mean}


def row_key(ids: Sequence[int]) -> str:
  return hashlib.sha1(np.asarray(ids, np.int32).tobytes()).hexdigest()


class FeatureCache:
  """Features of token rows under one backbone and max_length; see the module docstring."""

  def __init__(self, directory: str, spec: str = "smollm2-135m", max_length: int = 256,
               batch_size: int = 16, chunk: int = 256, model: tuple | None = None):
    """`model`: another cache's `model()` (same spec and max_length), to share loaded weights."""
    self.directory, self.spec, self.max_length = directory, spec, int(max_length)
    self.batch_size, self.chunk = batch_size, chunk
    self._model = None
    if model is not None:
      self._check_meta(model[4])
      self._model = model
    self._index: dict | None = None

  # ------------------------------------------------------------------ model, encoding
  def model(self) -> tuple:
    """(LlamaConfig, params, ChatEncoder, prompt-end pattern, settings), loaded once; the settings
    are checked against (or recorded in) the directory's meta.json."""
    if self._model is None:
      cfg, params = checkpoints.load_pretrained(self.spec)
      tok = checkpoints.load_tokenizer(self.spec)
      enc = ChatEncoder(tok, self.max_length)
      pattern = tuple(emb.prompt_end_pattern(tok))
      meta = {"spec": self.spec, "max_length": self.max_length, "pattern": list(pattern),
              "params": emb.params_fingerprint(params), "features": list(FEATURES),
              "dim": int(cfg.hidden_size)}
      self._check_meta(meta)
      self._model = (cfg, params, enc, pattern, meta)
    return self._model

  def _check_meta(self, meta: dict) -> None:
    path = os.path.join(self.directory, "meta.json")
    if os.path.exists(path):
      with open(path) as f:
        old = json.load(f)
      diff = [k for k in meta if old.get(k) != meta[k]]
      if diff:
        raise ConfigError(f"{path}: feature cache made with other settings ({', '.join(diff)}: "
                          f"{[old.get(k) for k in diff]} vs {[meta[k] for k in diff]}); use "
                          "another --cache directory")
      return
    os.makedirs(self.directory, exist_ok=True)
    _write_json(path, meta)

  def encode(self, items: Sequence[tuple]) -> tuple[list, np.ndarray]:
    """[(prompt, response)] -> (token rows, truncated [N] bool): exactly what `rmjax score` reads."""
    enc = self.model()[2]
    grouped = [(normalize_prompt(p), [r]) for p, r in items]
    rows, cut = [], []
    for prompt_ids, response_ids in encode_many(enc, grouped):
      prompt_ids, (response_ids,), was_cut = enc.cut(prompt_ids, response_ids)
      rows.append(list(prompt_ids) + list(response_ids))
      cut.append(was_cut)
    return rows, np.asarray(cut, bool)

  # ------------------------------------------------------------------------- storage
  def _shards(self) -> list:
    return sorted(glob.glob(os.path.join(self.directory, "shard-*.npz")))

  def index(self) -> dict:
    """{row key: (shard path, position)} over every shard on disk."""
    if self._index is None:
      self._index = {}
      for path in self._shards():
        with np.load(path) as z:
          for i, k in enumerate(z["keys"]):
            self._index[str(k)] = (path, i)
    return self._index

  def extract(self, rows: Sequence[Sequence[int]], progress: bool = True,
              log=None) -> dict:
    """Features of every row not yet on disk, in length order, a shard per `chunk` rows.
    Returns {'rows', 'new_rows', 'new_tokens', 'seconds', 'useful_tokens_per_s'}."""
    cfg, params, enc, pattern, _ = self.model()
    have = self.index()
    todo = {}
    for r in rows:
      k = row_key(r)
      if k not in have and k not in todo:
        todo[k] = list(r)
    keys = sorted(todo, key=lambda k: (len(todo[k]), k))
    fn = functools.partial(_features, cfg=cfg, pattern=pattern)
    n_shard = len(self._shards())
    tokens, t0 = 0, time.perf_counter()
    for s in range(0, len(keys), self.chunk):
      part = keys[s:s + self.chunk]
      got = emb.batched_forward(fn, params, [todo[k] for k in part], batch_size=self.batch_size,
                                pad_id=enc.pad_id, bucket_multiple=PAD_MULTIPLE,
                                max_length=self.max_length, progress=False)
      path = os.path.join(self.directory, f"shard-{n_shard:05d}.npz")
      tmp = path + ".tmp.npz"
      np.savez(tmp, keys=np.asarray(part), lengths=np.asarray([len(todo[k]) for k in part]),
               **{f: np.asarray(got[f], np.float32) for f in FEATURES})
      os.replace(tmp, path)
      for i, k in enumerate(part):
        have[k] = (path, i)
      n_shard += 1
      tokens += sum(len(todo[k]) for k in part)
      dt = time.perf_counter() - t0
      msg = (f"[feature_cache] {min(s + self.chunk, len(keys))}/{len(keys)} new rows, "
             f"{tokens} tokens, {dt:.0f} s, {tokens / max(dt, 1e-9):.0f} useful tokens/s")
      if log:
        log(msg)
      elif progress:
        print(msg, file=sys.stderr, flush=True)
    dt = time.perf_counter() - t0
    return {"rows": len(set(map(row_key, rows))), "new_rows": len(keys), "new_tokens": tokens,
            "seconds": round(dt, 1),
            "useful_tokens_per_s": round(tokens / dt, 1) if keys else None}

  def lookup(self, rows: Sequence[Sequence[int]], features: Sequence[str] = FEATURES) -> dict:
    """{feature: [N, D]} for rows already extracted (KeyError naming how many are missing)."""
    idx = self.index()
    keys = [row_key(r) for r in rows]
    missing = sum(k not in idx for k in keys)
    if missing:
      raise KeyError(f"{missing} of {len(keys)} rows are not in the feature cache "
                     f"{self.directory}: extract them first")
    by_shard: dict = {}
    for j, k in enumerate(keys):
      path, i = idx[k]
      by_shard.setdefault(path, []).append((j, i))
    out = {f: None for f in features}
    for path, pos in by_shard.items():
      with np.load(path) as z:
        for f in features:
          arr = z[f]
          if out[f] is None:
            out[f] = np.zeros((len(keys), arr.shape[1]), np.float32)
          js, iz = zip(*pos)
          out[f][list(js)] = arr[list(iz)]
    return out

  # ------------------------------------------------------------------------ pairs API
  def pairs(self, examples: Sequence, features: Sequence[str] = FEATURES,
            extract: bool = True) -> dict:
    """Aligned arrays for pair examples (`PairExample`s): {'chosen': {feature: [N, D]},
    'rejected': {...}, 'truncated': [N] (either side cut), 'tokens_chosen', 'tokens_rejected'}.
    Each side is encoded alone (`encode`), not with the pair's one prompt cut that training and
    `rmjax eval` use (`rmjax.data.tokenize.truncate`), so the rows already on disk stay valid;
    the two differ only on the pairs counted in 'truncated'."""
    items = [(e.messages, e.chosen) for e in examples] + [(e.messages, e.rejected) for e in examples]
    rows, cut = self.encode(items)
    if extract:
      self.extract(rows)
    f = self.lookup(rows, features)
    n = len(examples)
    lens = np.asarray([len(r) for r in rows])
    return {"chosen": {k: v[:n] for k, v in f.items()},
            "rejected": {k: v[n:] for k, v in f.items()},
            "truncated": cut[:n] | cut[n:], "tokens_chosen": lens[:n], "tokens_rejected": lens[n:]}

  def responses(self, items: Sequence[tuple], features: Sequence[str] = FEATURES,
                extract: bool = True) -> dict:
    """{feature: [N, D], 'truncated': [N]} for (prompt, response) items (rated rows)."""
    rows, cut = self.encode(items)
    if extract:
      self.extract(rows)
    return dict(self.lookup(rows, features), truncated=cut)


def _write_json(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--cache", required=True, help="feature cache directory (resumable)")
  p.add_argument("--data", action="append", required=True, help="a pair source spec "
                 "(shared:NAME, json:PATH, ...); repeat for several")
  p.add_argument("--spec", default="smollm2-135m", help="backbone (a preset or hf:DIR)")
  p.add_argument("--max_length", type=int, default=256)
  p.add_argument("--batch_size", type=int, default=16)
  a = p.parse_args(argv)
  cache = FeatureCache(a.cache, a.spec, a.max_length, a.batch_size)
  examples, per_spec = [], {}
  for spec in a.data:
    got, stats = load_source(spec)
    examples += got
    per_spec[spec] = {"pairs": len(got), "dropped": stats.get("dropped", {})}
  items = [(e.messages, r) for e in examples for r in (e.chosen, e.rejected)]
  rows, cut = cache.encode(items)
  info = cache.extract(rows)
  info.update(data=per_spec, truncated_rows=int(cut.sum()), total_rows=len(rows),
              total_tokens=int(sum(map(len, rows))))
  print(json.dumps(info))
  return info


if __name__ == "__main__":
  try:
    main()
  except RmjaxError as e:  # bad input: one line, exit 2 (as the rmjax CLI)
    print(f"feature_cache: error: {e}".splitlines()[0], file=sys.stderr)
    sys.exit(2)
