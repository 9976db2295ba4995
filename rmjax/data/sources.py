"""Where pairs come from: data source specs, converters for the shared sets, prompt-hash splits.

Spec strings (`config.data.source`, CLI `--data`), each optionally followed by `?key=value&...`:
  json:PATH          local .jsonl / .jsonl.gz / .json; format auto-detected per record
                     (`detect_format`: the shared sets' keys, else `parse_pair`), or forced:
                     `json:PATH?format=llmbar` (format=pairs: only the DESIGN.md pair formats)
  shared:NAME[/STEM] a directory of the shared data root (all its files, or one file by stem);
                     subset = file stem unless the converter sets one; format = directory name
  parquet:PATH       a local parquet file through `datasets.load_dataset('parquet')`
  hub:NAME[:SPLIT]   `datasets.load_dataset(NAME, split=SPLIT)` (offline: only cached sets); a
                     local folder written by `save_to_disk` is read with `load_from_disk` (a
                     DatasetDict, e.g. train_prefs/test_prefs, needs its SPLIT unless it has one)
Options: format=NAME (a key of SHARED_FORMATS or 'auto'), on_identical=drop|keep|fail,
on_invalid=fail|skip (default: fail for json/parquet/hub, skip for shared, whose real rows
include a few broken transcripts), limit=N, subset=NAME (sets every example's subset),
split=SPLIT (parquet/hub, the same as the :SPLIT suffix).
The shared data root is $RMJAX_SHARED_DATA, else ../shared/data beside the repo or the cwd.
"""

import collections
import dataclasses
import hashlib
import os
import pathlib
import urllib.parse

from rmjax.data.pairs import (
    check_text, collect_pairs, iter_records, make_pair, parse_hh_rlhf, parse_pair, prompt_key)
from rmjax.data.hub import dataset_records
from rmjax.errors import ConfigError, DataError


def _get(obj, key, path, line):
  if not isinstance(obj, dict):
    raise DataError(path, line, None, f'expected a JSON object, got {type(obj).__name__}')
  if key not in obj:
    raise DataError(path, line, key, 'missing field')
  return obj[key]


def _label(obj, key, allowed, path, line):
  """Reads a label, accepting ints, floats and numeric strings ('1')."""
  value = _get(obj, key, path, line)
  try:
    value = float(value)
  except (TypeError, ValueError):
    value = None
  if value is None or value not in allowed:
    raise DataError(path, line, key, f'expected one of {sorted(allowed)}, got {obj[key]!r}')
  return int(value)


def _by_label(prompt, first, second, label, path, line, fields, **kw):
  """label 1: first is better; 2: second is better."""
  chosen, rejected = (first, second) if label == 1 else (second, first)
  names = (fields[1], fields[2]) if label == 1 else (fields[2], fields[1])
  return make_pair(prompt, chosen, rejected, path=path, line=line,
                   fields=(fields[0],) + names, **kw)


def from_llmbar(obj, path, line):
  """LLMBar: input, output_1, output_2, label 1|2."""
  f = ('input', 'output_1', 'output_2')
  vals = [_get(obj, k, path, line) for k in f]
  return _by_label(*vals, _label(obj, 'label', {1, 2}, path, line), path, line, f)


def from_autoj(obj, path, line):
  """Auto-J pairwise: prompt, 'response 1', 'response 2', label 0 (1st better) | 1 | 2 (tie)."""
  f = ('prompt', 'response 1', 'response 2')
  label = _label(obj, 'label', {0, 1, 2}, path, line)
  if label == 2:
    return []
  vals = [_get(obj, k, path, line) for k in f]
  scenario = obj.get('scenario')
  return _by_label(*vals, label + 1, path, line, f,
                   subset=scenario if isinstance(scenario, str) else None)


def from_pandalm(obj, path, line):
  """PandaLM: instruction (+ input), response1/2, majority of annotator1..3 (0 = tie: dropped)."""
  instruction = check_text(_get(obj, 'instruction', path, line), path, line, 'instruction')
  extra = obj.get('input') or ''
  prompt = f'{instruction}\n\n{extra}' if isinstance(extra, str) and extra.strip() else instruction
  votes = collections.Counter(
      _label(obj, f'annotator{i}', {0, 1, 2}, path, line) for i in (1, 2, 3))
  label, count = votes.most_common(1)[0]
  if count < 2 or label == 0:
    return []
  f = ('instruction', 'response1', 'response2')
  return _by_label(prompt, _get(obj, f[1], path, line), _get(obj, f[2], path, line), label,
                   path, line, f)


def from_judgebench(obj, path, line):
  """JudgeBench: question, response_A/B, label 'A>B' | 'B>A'; subset = source field."""
  label = _get(obj, 'label', path, line)
  if label not in ('A>B', 'B>A'):
    raise DataError(path, line, 'label', f"expected 'A>B' or 'B>A', got {label!r}")
  f = ('question', 'response_A', 'response_B')
  vals = [_get(obj, k, path, line) for k in f]
  source = obj.get('source')
  return _by_label(*vals, 1 if label == 'A>B' else 2, path, line, f,
                   subset=source if isinstance(source, str) else None)


def from_alpaca_eval(obj, path, line):
  """AlpacaEval annotations: instruction, output_1/2, preference 1|2 (soft in [1, 2] for the
  weighted set: < 1.5 -> 1, > 1.5 -> 2); ties (1.5) and unparsed (0, null) are dropped."""
  pref = _get(obj, 'preference', path, line)
  if pref is None or isinstance(pref, bool) or not isinstance(pref, (int, float)) or not (
      1 <= pref <= 2) or pref == 1.5:
    return []
  f = ('instruction', 'output_1', 'output_2')
  vals = [_get(obj, k, path, line) for k in f]
  dataset = obj.get('dataset')
  return _by_label(*vals, 1 if pref < 1.5 else 2, path, line, f,
                   subset=dataset if isinstance(dataset, str) else None)


def rm_bench_level(i, j):
  """RM-Bench 3x3: styles 0 concise, 1 detailed plain, 2 detailed markdown. Chosen less styled
  than rejected (i < j) is 'hard', equal style 'normal', chosen more styled (i > j) 'easy'."""
  return 'hard' if i < j else ('normal' if i == j else 'easy')


def _rm_bench(obj, path, line, diagonal):
  prompt = _get(obj, 'prompt', path, line)
  chosen, rejected = _get(obj, 'chosen', path, line), _get(obj, 'rejected', path, line)
  for name, value in (('chosen', chosen), ('rejected', rejected)):
    if not isinstance(value, list) or len(value) != 3:
      raise DataError(path, line, name, 'expected a list of 3 style variants')
  domain = pathlib.Path(str(path)).name.split('.')[0].removesuffix('_filtered')
  out = []
  for i in range(3):
    for j in range(3):
      if diagonal and i != j:
        continue
      ex = make_pair(prompt, chosen[i], rejected[j], path=path, line=line,
                     fields=('prompt', f'chosen[{i}]', f'rejected[{j}]'),
                     subset=f'{domain}/{rm_bench_level(i, j)}')
      out.append(dataclasses.replace(ex, source=f'{path}:{line}#c{i}r{j}'))
  return out


def from_rm_bench(obj, path, line):
  """RM-Bench: all 9 (chosen style i, rejected style j) pairs; subset '<file domain>/<level>'."""
  return _rm_bench(obj, path, line, diagonal=False)


def from_rm_bench_diag(obj, path, line):
  """RM-Bench: the 3 same-style pairs only (subset '<domain>/normal')."""
  return _rm_bench(obj, path, line, diagonal=True)


SIGNATURES = (  # (format, keys a record must have); checked in order by `parse_auto`
    ('llmbar', {'input', 'output_1', 'output_2', 'label'}),
    ('autoj_pairwise_test', {'prompt', 'response 1', 'response 2', 'label'}),
    ('pandalm_testset', {'instruction', 'response1', 'response2', 'annotator1'}),
    ('judgebench', {'question', 'response_A', 'response_B', 'label'}),
    ('alpaca_eval_annotations', {'instruction', 'output_1', 'output_2', 'preference'}),
)


def detect_format(obj):
  """The shared-set format whose keys a record has, 'rm_bench' for style-variant lists, else
  'pairs' (explicit / TRL / hh-rlhf, told apart by `parse_pair`)."""
  if isinstance(obj, dict):
    for name, keys in SIGNATURES:
      if keys <= set(obj):
        return name
    if 'prompt' in obj and isinstance(obj.get('chosen'), list) and obj['chosen'] and all(
        isinstance(c, str) for c in obj['chosen']):
      return 'rm_bench'
  return 'pairs'


def parse_auto(obj, path, line):
  """Per-record format detection (`detect_format`), then that format's converter."""
  return SHARED_FORMATS[detect_format(obj)](obj, path, line)


SHARED_FORMATS = {
    'auto': parse_auto, 'pairs': parse_pair, 'hh_rlhf': parse_hh_rlhf,
    'llmbar': from_llmbar, 'rm_bench': from_rm_bench, 'rm_bench_diag': from_rm_bench_diag,
    'autoj_pairwise_test': from_autoj, 'pandalm_testset': from_pandalm,
    'judgebench': from_judgebench, 'alpaca_eval_annotations': from_alpaca_eval,
}
SHARED_DIR_FORMATS = {'hh_rlhf_harmless_test': 'hh_rlhf', 'hh_rlhf_helpful_test': 'hh_rlhf'}


def shared_data_root(required=False):
  """$RMJAX_SHARED_DATA, else ../shared/data beside the repo, else beside the cwd; None if absent
  (or ConfigError when `required`)."""
  env = os.environ.get('RMJAX_SHARED_DATA')
  candidates = [pathlib.Path(env)] if env else [
      pathlib.Path(__file__).resolve().parents[2].parent / 'shared' / 'data',
      pathlib.Path.cwd().parent / 'shared' / 'data', pathlib.Path.cwd() / 'shared' / 'data']
  for c in candidates:
    if c.is_dir():
      return c
  if required:
    raise ConfigError(f'shared data not found (looked in {", ".join(map(str, candidates))}; '
                      'set RMJAX_SHARED_DATA)')
  return None


def _parser(name):
  if name not in SHARED_FORMATS:
    raise ConfigError(f'unknown data format {name!r}; known: {sorted(SHARED_FORMATS)}')
  return SHARED_FORMATS[name]


SPEC_OPTIONS = ('format', 'on_identical', 'on_invalid', 'limit', 'subset', 'split')


def _split_suffix(target):
  """'NAME:SPLIT' -> (NAME, SPLIT); a suffix with '/' or '.' is part of a path, not a split."""
  name, sep, split = target.rpartition(':')
  if sep and name and split and split.replace('_', '').replace('-', '').isalnum():
    return name, split
  return target, None


def parse_spec(spec):
  """'kind:target?k=v' -> (kind, target, options dict); hub:NAME:SPLIT becomes options['split'];
  option values are checked here (limit a whole number >= 0, known modes)."""
  kind, sep, rest = str(spec).partition(':')
  if not sep or kind not in ('json', 'shared', 'parquet', 'hub') or not rest:
    raise ConfigError(f'bad data source {spec!r}: expected json:PATH, shared:NAME, parquet:PATH '
                      'or hub:NAME[:SPLIT]')
  target, _, query = rest.partition('?')
  options = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
  unknown = set(options) - set(SPEC_OPTIONS)
  if unknown:
    raise ConfigError(f'bad data source {spec!r}: unknown options {sorted(unknown)}; known: '
                      f'{list(SPEC_OPTIONS)}')
  if kind == 'hub':
    target, split = _split_suffix(target)
    if split and options.get('split', split) != split:
      raise ConfigError(f'bad data source {spec!r}: two splits ({split!r} and '
                        f'{options["split"]!r})')
    if split:
      options['split'] = split
  if 'limit' in options and not options['limit'].isdigit():
    raise ConfigError(f'bad data source {spec!r}: limit must be a whole number >= 0, got '
                      f'{options["limit"]!r}')
  for key, allowed in (('on_identical', ('drop', 'keep', 'fail')), ('on_invalid', ('fail', 'skip'))):
    if key in options and options[key] not in allowed:
      raise ConfigError(f'bad data source {spec!r}: {key} must be one of {list(allowed)}, got '
                        f'{options[key]!r}')
  if options.get('split') is not None and kind in ('json', 'shared'):
    raise ConfigError(f'bad data source {spec!r}: split applies to parquet:/hub: sources only')
  if not target:
    raise ConfigError(f'bad data source {spec!r}: no path or name')
  return kind, target, options


def _shared_files(target):
  root = shared_data_root(required=True)
  name, _, stem = target.partition('/')
  folder = root / name
  if not folder.is_dir():
    known = sorted(p.name for p in root.iterdir() if p.is_dir())
    raise ConfigError(f'unknown shared data set {name!r}; known: {known}')
  files = sorted(p for p in folder.iterdir()
                 if p.name.endswith(('.jsonl', '.jsonl.gz', '.json', '.json.gz')))
  if stem:
    files = [p for p in files if p.name.split('.')[0] == stem]
    if not files:
      raise ConfigError(f'no file {stem!r} in shared data set {name!r}')
  return name, files


def _merge(total, stats):
  """Adds read stats (numbers, lists, and the `dropped` dict) into `total`."""
  for k, v in stats.items():
    if isinstance(v, dict):
      _merge(total.setdefault(k, {}), v)
    else:
      total[k] = total.get(k, [] if isinstance(v, list) else 0) + v
  return total


def load_source(spec, split=None, *, on_identical=None, on_invalid=None, limit=None):
  """Loads pairs from a spec string (see the module docstring) -> (examples, stats).

  `split` names the HF split for parquet/hub (default 'train'); for json/shared it must be None
  (split local data with `split_by_prompt_hash`). Keyword arguments override spec options.
  """
  kind, target, opts = parse_spec(spec)
  on_identical = on_identical or opts.get('on_identical', 'drop')
  on_invalid = on_invalid or opts.get('on_invalid', 'skip' if kind == 'shared' else 'fail')
  limit = limit if limit is not None else (int(opts['limit']) if opts.get('limit') else None)
  kw = dict(on_identical=on_identical, on_invalid=on_invalid, limit=limit)
  if split is not None and kind in ('json', 'shared'):
    raise ConfigError(f'split={split!r} applies to parquet:/hub: sources only ({spec!r})')
  split = split or opts.get('split')
  if kind == 'shared':
    name, files = _shared_files(target)
    parser = _parser(opts.get('format', SHARED_DIR_FORMATS.get(name, name)))
    examples, stats = [], {}
    for f in files:
      kw['limit'] = None if limit is None else limit - len(examples)
      if kw['limit'] == 0:
        break
      got, s = collect_pairs(iter_records(f, bad='yield'), str(f), parser, **kw)
      stem = f.name.split('.')[0]
      examples += [e if e.subset else e.with_subset(stem) for e in got]
      _merge(stats, s)
  elif kind == 'json':
    examples, stats = collect_pairs(iter_records(target, bad='yield'), target,
                                    _parser(opts.get('format', 'auto')), **kw)
  else:
    examples, stats = collect_pairs(dataset_records(kind, target, split), f'{kind}:{target}',
                                    _parser(opts.get('format', 'auto')), **kw)
  if opts.get('subset'):
    examples = [e.with_subset(opts['subset']) for e in examples]
  stats['invalid_examples'] = stats.get('invalid_examples', [])[:5]
  return examples, stats


def prompt_hash_fraction(ex, seed=0, key=prompt_key):
  """A number in [0, 1) fixed by sha256(seed, key(ex)) (by default the rendered prompt)."""
  digest = hashlib.sha256(f'{seed}\0{key(ex)}'.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') / 2.0**64


SPLIT_SEED, EVAL_FRACTION = 0, 0.1   # the hh-rlhf split of experiments/data_shared.py


def split_side(spec: str) -> tuple:
  """'SPEC@train' / 'SPEC@eval' -> (SPEC, side); anything else -> (spec, None)."""
  base, sep, side = spec.rpartition('@')
  return (base, side) if sep and side in ('train', 'eval') else (spec, None)


def hash_side(examples, side):
  """The `side` ('train' 90% / 'eval' 10%) of the prompt-hash split (seed 0), or all when None."""
  if side is None:
    return list(examples)
  train, evals = split_by_prompt_hash(examples, EVAL_FRACTION, SPLIT_SEED)
  return train if side == 'train' else evals


def split_by_prompt_hash(examples, eval_fraction=0.1, seed=0, key=prompt_key):
  """-> (train, eval): deterministic by prompt hash, so pairs sharing a prompt never straddle the
  split; input order is kept within each part. `key(example)` -> the prompt text to hash."""
  if not 0.0 <= eval_fraction <= 1.0:
    raise ConfigError(f'eval_fraction must be in [0, 1], got {eval_fraction}')
  train, evals = [], []
  for ex in examples:
    (evals if prompt_hash_fraction(ex, seed, key) < eval_fraction else train).append(ex)
  return train, evals
