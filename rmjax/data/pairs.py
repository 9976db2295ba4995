"""Preference pairs: one record type, the three input formats, and a line-numbered reader.

Formats recognised per record by `parse_pair` (DESIGN.md section 5):
  explicit   {"prompt": str | [messages], "chosen": str, "rejected": str, "subset"?, "margin"?}
             (chosen/rejected may also be assistant message lists appended to the prompt)
  TRL        {"chosen": [messages], "rejected": [messages]}: prompt = the shared prefix,
             responses = the final assistant contents
  hh-rlhf    {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}: transcripts
             split into the shared multi-turn prompt and the two final Assistant turns
Every problem is a DataError naming `path:line: field`, so a bad row in a 60K-line file can be
found and fixed.
"""

import dataclasses
import gzip
import json
import math
import re

from rmjax.data.tokenize import normalize_prompt
from rmjax.errors import DataError

_HH_TURN = re.compile(r'(?:^|\n\n)(Human|Assistant): ?')
_HH_ROLES = {'Human': 'user', 'Assistant': 'assistant'}


@dataclasses.dataclass(frozen=True)
class PairExample:
  """One comparison. prompt: ((role, content), ...); source: 'path:line' for error messages."""
  prompt: tuple
  chosen: str
  rejected: str
  subset: str | None = None
  margin: float | None = None
  source: str = ''

  @property
  def messages(self):
    """The prompt as chat-template messages [{'role', 'content'}]."""
    return [{'role': r, 'content': c} for r, c in self.prompt]

  def with_subset(self, subset):
    return dataclasses.replace(self, subset=subset)


def make_pair(prompt, chosen, rejected, *, subset=None, margin=None, path='<data>', line=None,
              fields=('prompt', 'chosen', 'rejected')):
  """Validates and builds a PairExample; `fields` name the inputs in error messages."""
  messages = normalize_prompt(prompt, path, line, fields[0])
  for name, text in zip(fields[1:], (chosen, rejected)):
    check_text(text, path, line, name)
  if subset is not None and not isinstance(subset, str):
    raise DataError(path, line, 'subset', f'expected a string, got {type(subset).__name__}')
  if margin is not None:
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
      raise DataError(path, line, 'margin', f'expected a number, got {type(margin).__name__}')
    if not math.isfinite(margin):
      raise DataError(path, line, 'margin', f'not a finite number ({margin})')
    margin = float(margin)
  return PairExample(prompt=tuple((m['role'], m['content']) for m in messages), chosen=chosen,
                     rejected=rejected, subset=subset, margin=margin,
                     source=f'{path}:{line}' if line is not None else str(path))


def check_text(text, path, line, field):
  """A response must be a non-blank string."""
  if not isinstance(text, str):
    raise DataError(path, line, field, f'expected a string, got {type(text).__name__}')
  if not text.strip():
    raise DataError(path, line, field, 'empty text')
  return text


def split_hh_transcript(text, path, line, field):
  """'\\n\\nHuman: a\\n\\nAssistant: b...' -> [(role, content)] with stripped contents."""
  check_text(text, path, line, field)
  parts = _HH_TURN.split(text)
  if parts[0].strip() or len(parts) < 3:
    raise DataError(path, line, field, "not an hh-rlhf transcript ('\\n\\nHuman: ...')")
  return [(_HH_ROLES[r], c.strip()) for r, c in zip(parts[1::2], parts[2::2])]


def _split_conversations(chosen, rejected, path, line):
  """Two turn lists -> (shared prompt turns, chosen reply, rejected reply)."""
  for name, turns in (('chosen', chosen), ('rejected', rejected)):
    if not turns or turns[-1][0] != 'assistant':
      raise DataError(path, line, name, 'the conversation does not end with an assistant turn')
  if chosen[:-1] != rejected[:-1]:
    raise DataError(path, line, 'rejected',
                    'chosen and rejected differ before the final assistant turn')
  if not chosen[:-1]:
    raise DataError(path, line, 'chosen', 'no prompt before the final assistant turn')
  return chosen[:-1], chosen[-1][1], rejected[-1][1]


def _message_turns(value, path, line, field):
  return [(m['role'], m['content']) for m in normalize_prompt(value, path, line, field)]


def parse_pair(obj, path='<data>', line=None):
  """One decoded JSON record -> PairExample (format detected from its keys)."""
  if not isinstance(obj, dict):
    raise DataError(path, line, None, f'expected a JSON object, got {type(obj).__name__}')
  extra = {'subset': obj.get('subset'), 'margin': obj.get('margin'), 'path': path, 'line': line}
  keys = set(obj)
  if 'prompt' in keys or ({'chosen', 'rejected'} & keys and not {'chosen', 'rejected'} <= keys):
    for name in ('chosen', 'rejected'):
      if name not in obj:
        raise DataError(path, line, name, 'missing field')
  if not {'chosen', 'rejected'} <= keys:
    raise DataError(path, line, None,
                    f'unknown pair format: found keys {sorted(keys)}; expected prompt/chosen/'
                    'rejected, TRL message lists, or hh-rlhf transcripts')
  chosen, rejected = obj['chosen'], obj['rejected']
  if 'prompt' in obj:
    if isinstance(chosen, list) and isinstance(rejected, list):  # TRL with explicit prompt
      prefix = _message_turns(obj['prompt'], path, line, 'prompt')
      turns = _split_conversations(prefix + _message_turns(chosen, path, line, 'chosen'),
                                   prefix + _message_turns(rejected, path, line, 'rejected'),
                                   path, line)
      return make_pair(turns[0], turns[1], turns[2], **extra)
    return make_pair(obj['prompt'], chosen, rejected, **extra)
  if isinstance(chosen, list) and isinstance(rejected, list):  # TRL implicit prompt
    turns = _split_conversations(_message_turns(chosen, path, line, 'chosen'),
                                 _message_turns(rejected, path, line, 'rejected'), path, line)
    return make_pair(*turns, **extra)
  if isinstance(chosen, str) and isinstance(rejected, str):  # hh-rlhf transcripts
    turns = _split_conversations(split_hh_transcript(chosen, path, line, 'chosen'),
                                 split_hh_transcript(rejected, path, line, 'rejected'), path, line)
    return make_pair(*turns, **extra)
  bad = 'chosen' if not isinstance(chosen, (str, list)) else 'rejected'
  raise DataError(path, line, bad, f'expected a string or a message list, got '
                  f'{type(obj[bad]).__name__} (and both sides must have the same type)')


def iter_records(path):
  """Yields (line, obj) from .jsonl / .jsonl.gz (1-based line numbers, blank lines skipped) or
  a .json list (line = 1-based element index)."""
  path = str(path)
  opener = gzip.open if path.endswith('.gz') else open
  stem = path[:-3] if path.endswith('.gz') else path
  try:
    with opener(path, 'rt', encoding='utf-8') as f:
      if stem.endswith('.json'):
        try:
          data = json.load(f)
        except json.JSONDecodeError as e:
          raise DataError(path, e.lineno, None, f'malformed JSON: {e.msg}') from None
        if not isinstance(data, list):
          raise DataError(path, None, None, 'a .json file must hold a list of records')
        yield from enumerate(data, start=1)
        return
      for number, text in enumerate(f, start=1):
        if not text.strip():
          continue
        try:
          obj = json.loads(text)
        except json.JSONDecodeError as e:
          raise DataError(path, number, None,
                          f'malformed JSON: {e.msg} (column {e.colno})') from None
        yield number, obj
  except FileNotFoundError:
    raise DataError(path, None, None, 'file not found') from None


def collect_pairs(records, path, parser=None, *, on_identical='drop', on_invalid='fail',
                  limit=None):
  """(line, obj) records -> (examples, stats). `parser(obj, path, line)` returns a PairExample,
  a list of them, or [] to skip (e.g. a tie); the default is `parse_pair`.

  on_identical: 'drop' | 'keep' | 'fail' for chosen == rejected (counted either way).
  on_invalid: 'fail' raises the DataError; 'skip' counts it (real data sets have a few broken
  rows: empty responses, transcripts that diverge early) and keeps the first messages.
  limit: stop after this many kept examples.
  """
  if on_identical not in ('drop', 'keep', 'fail'):
    raise ValueError(f'on_identical must be drop|keep|fail, got {on_identical!r}')
  if on_invalid not in ('fail', 'skip'):
    raise ValueError(f'on_invalid must be fail|skip, got {on_invalid!r}')
  parser = parser or parse_pair
  stats = {'read': 0, 'kept': 0, 'identical': 0, 'skipped': 0, 'invalid': 0, 'invalid_examples': []}
  out = []
  for line, obj in records:
    if limit is not None and len(out) >= limit:
      break
    stats['read'] += 1
    try:
      got = parser(obj, path, line)
    except DataError as e:
      if on_invalid == 'fail':
        raise
      stats['invalid'] += 1
      if len(stats['invalid_examples']) < 5:
        stats['invalid_examples'].append(str(e))
      continue
    got = [got] if isinstance(got, PairExample) else list(got)
    if not got:
      stats['skipped'] += 1
    for ex in got:
      if ex.chosen.strip() == ex.rejected.strip():
        stats['identical'] += 1
        if on_identical == 'fail':
          raise DataError(path, line, 'rejected', 'identical to chosen')
        if on_identical == 'drop':
          continue
      out.append(ex)
  if limit is not None:
    out = out[:limit]
  stats['kept'] = len(out)
  return out, stats


def read_pairs(path, *, on_identical='drop', on_invalid='fail', limit=None, parser=None):
  """Reads a pairs file (.jsonl, .jsonl.gz, .json list) -> (list[PairExample], stats dict).

  stats: read (records), kept, identical, skipped (parser returned nothing), invalid.
  """
  return collect_pairs(iter_records(path), str(path), parser, on_identical=on_identical,
                       on_invalid=on_invalid, limit=limit)


def pair_to_json(ex):
  """PairExample -> the explicit JSON record (a single user turn is written as a string)."""
  prompt = ex.prompt[0][1] if len(ex.prompt) == 1 and ex.prompt[0][0] == 'user' else ex.messages
  obj = {'prompt': prompt, 'chosen': ex.chosen, 'rejected': ex.rejected}
  if ex.subset is not None:
    obj['subset'] = ex.subset
  if ex.margin is not None:
    obj['margin'] = ex.margin
  return obj


def write_pairs(path, examples):
  """Writes PairExamples as explicit-format JSON Lines (.gz compresses)."""
  path = str(path)
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'wt', encoding='utf-8') as f:
    for ex in examples:
      f.write(json.dumps(pair_to_json(ex), ensure_ascii=False) + '\n')


def prompt_key(ex):
  """Canonical text of a prompt (for hashing/splitting): JSON of its (role, content) turns."""
  return json.dumps([list(t) for t in ex.prompt], ensure_ascii=False)
