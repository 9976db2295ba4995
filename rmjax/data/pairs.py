"""Preference pairs: one record type, the input layouts, and line-numbered reading with stats.

Layouts recognised per record by `parse_pair` (TRL's four, each read as TRL reads it, plus
hh-rlhf transcripts):
  standard, explicit prompt      {"prompt": str | [messages], "chosen": str, "rejected": str}
  standard, implicit prompt      {"chosen": str, "rejected": str}: prompt = the longest common
                                 prefix of the two texts (TRL `extract_prompt`; a space right
                                 before the split goes to the responses)
  conversational, explicit       {"prompt": [messages], "chosen": [messages], "rejected": [...]}
  conversational, implicit       {"chosen": [messages], "rejected": [messages]}: prompt = the
                                 longest common message prefix, responses = the remaining
                                 assistant turn(s) (several are joined with a blank line)
  string prompt + conversations  UltraFeedback-binarized: "prompt" is a string and chosen /
                                 rejected are full conversations holding the user turn; as in
                                 TRL (`maybe_extract_prompt`) the conversations' own common
                                 prefix is the prompt, so the user turn is not duplicated
                                 (assistant-only lists are completions appended to the prompt)
  hh-rlhf                        {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", ...}:
                                 transcripts split into the shared multi-turn prompt and the two
                                 final Assistant turns
Optional keys: subset (str), margin (finite number). An empty response ("") is valid (counted
as empty_response); a missing field, a wrong type, an empty prompt, or conversations without a
shared prompt are not. Every problem is a DataError naming `path:line: field`, and
`collect_pairs` reports every bad record of a file in one error, so a bad row in a 60K-line
file can be found and fixed.
"""

import dataclasses
import gzip
import json
import math
import re

from rmjax.data.records import iter_records  # re-exported: the reader of pair files
from rmjax.data.tokenize import normalize_prompt
from rmjax.errors import DataError

MAX_REPORTED = 20  # bad records named in one error; the rest are counted

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
    check_response(text, path, line, name)
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
  """A text that must say something (a transcript, an instruction): a non-blank string."""
  if not isinstance(text, str):
    raise DataError(path, line, field, f'expected a string, got {type(text).__name__}')
  if not text.strip():
    raise DataError(path, line, field, 'empty text')
  return text


def check_response(text, path, line, field):
  """A response must be a string; an empty one is a valid (if poor) answer."""
  if not isinstance(text, str):
    raise DataError(path, line, field, f'expected a string, got {type(text).__name__}')
  return text


def split_hh_transcript(text, path, line, field):
  """'\\n\\nHuman: a\\n\\nAssistant: b...' -> [(role, content)] with stripped contents."""
  check_text(text, path, line, field)
  parts = _HH_TURN.split(text)
  if parts[0].strip() or len(parts) < 3:
    raise DataError(path, line, field, "not an hh-rlhf transcript ('\\n\\nHuman: ...')")
  return [(_HH_ROLES[r], c.strip()) for r, c in zip(parts[1::2], parts[2::2])]


def _common_prefix(a, b):
  n = 0
  while n < min(len(a), len(b)) and a[n] == b[n]:
    n += 1
  return n


def _split_conversations(chosen, rejected, path, line):
  """Two turn lists -> (prompt turns = their longest common prefix, chosen reply, rejected
  reply); each reply is the remaining assistant turn(s). Equal conversations give an identical
  pair (counted by `collect_pairs`), not an error."""
  n = _common_prefix(chosen, rejected)
  if n == len(chosen) == len(rejected):
    n -= 1
  if n <= 0:
    raise DataError(path, line, 'rejected', 'chosen and rejected differ from the first message '
                    '(no shared prompt)')
  replies = []
  for name, rest in (('chosen', chosen[n:]), ('rejected', rejected[n:])):
    if not rest:
      raise DataError(path, line, name, f'no reply after the shared prompt of {n} messages '
                      '(the other side continues the conversation)')
    role = next((r for r, _ in rest if r != 'assistant'), None)
    if role is not None:
      raise DataError(path, line, 'rejected', f'chosen and rejected differ before the final '
                      f'assistant turn (a {role} turn follows the shared prompt of {n} messages)')
    replies.append('\n\n'.join(c for _, c in rest))
  return chosen[:n], replies[0], replies[1]


def _message_turns(value, path, line, field):
  return [(m['role'], m['content']) for m in normalize_prompt(value, path, line, field)]


def _is_hh(text):
  return text.lstrip().startswith('Human:')


def extract_prompt_text(chosen, rejected):
  """TRL `extract_prompt` on two full texts: (prompt = longest common prefix, chosen rest,
  rejected rest); a space right before the split stays with the responses."""
  n = _common_prefix(chosen, rejected)
  if 0 < n < min(len(chosen), len(rejected)) and chosen[n - 1] == ' ':
    n -= 1
  return chosen[:n], chosen[n:], rejected[n:]


def _splits_a_word(prompt, chosen, rejected):
  """Whether a common prefix ends inside a word of either text ('no' of 'no transcript' /
  'nor here'): two texts that merely start alike, not a shared prompt."""
  return prompt[-1:].isalnum() and (chosen[:1].isalnum() or rejected[:1].isalnum())


def parse_hh_rlhf(obj, path='<data>', line=None):
  """`format=hh_rlhf`: both sides must be hh-rlhf transcripts (no other layout is tried)."""
  if not isinstance(obj, dict):
    raise DataError(path, line, None, f'expected a JSON object, got {type(obj).__name__}')
  for name in ('chosen', 'rejected'):
    if name not in obj:
      raise DataError(path, line, name, 'missing field')
  turns = _split_conversations(split_hh_transcript(obj['chosen'], path, line, 'chosen'),
                               split_hh_transcript(obj['rejected'], path, line, 'rejected'),
                               path, line)
  return make_pair(*turns, subset=obj.get('subset'), margin=obj.get('margin'), path=path,
                   line=line)


def _conversational(obj, path, line, extra):
  chosen = _message_turns(obj['chosen'], path, line, 'chosen')
  rejected = _message_turns(obj['rejected'], path, line, 'rejected')
  prompt = obj.get('prompt')
  completions = all(r == 'assistant' for r, _ in chosen + rejected)
  if isinstance(prompt, list) or (prompt is not None and completions):  # explicit prompt
    prefix = _message_turns(prompt, path, line, 'prompt')
    chosen, rejected = prefix + chosen, prefix + rejected
  # else: implicit, or a string prompt beside full conversations (UltraFeedback): TRL takes the
  # conversations' own prefix, which already holds the user turn
  return make_pair(*_split_conversations(chosen, rejected, path, line), **extra)


def parse_pair(obj, path='<data>', line=None):
  """One decoded JSON record -> PairExample (layout detected from its keys and types)."""
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
  if isinstance(chosen, list) and isinstance(rejected, list):
    return _conversational(obj, path, line, extra)
  if 'prompt' in obj:  # standard, explicit prompt (make_pair names a side of the wrong type)
    return make_pair(obj['prompt'], chosen, rejected, **extra)
  if isinstance(chosen, str) and isinstance(rejected, str):
    if _is_hh(chosen) or _is_hh(rejected):  # hh-rlhf transcripts
      return parse_hh_rlhf(obj, path, line)
    prompt, chosen, rejected = extract_prompt_text(chosen, rejected)  # standard, implicit
    if not prompt.strip() or _splits_a_word(prompt, chosen, rejected):
      raise DataError(path, line, 'rejected', 'chosen and rejected share no prompt (an '
                      'implicit-prompt record must start with the same prompt text, an hh-rlhf '
                      "record with '\\n\\nHuman: ...')")
    return make_pair(prompt, chosen, rejected, **extra)
  bad = 'chosen' if not isinstance(chosen, (str, list)) else 'rejected'
  raise DataError(path, line, bad, f'expected a string or a message list, got '
                  f'{type(obj[bad]).__name__} (and both sides must have the same type)')


class BadRecords(DataError):
  """Several bad records in one error, on one line, the first culprit first:
  '3 bad records: f.jsonl:2: field 'chosen': missing field; f.jsonl:5: ...; ... and N more'.
  `errors` holds the reported DataErrors; path/line/field are the first one's."""

  def __init__(self, errors, total):
    first = errors[0]
    self.path, self.line, self.field, self.errors = first.path, first.line, first.field, errors
    more = f'; ... and {total - len(errors)} more' if total > len(errors) else ''
    ValueError.__init__(self, f'{total} bad records: ' + '; '.join(map(str, errors)) + more)


def new_stats():
  """The read accounting: n_in (records in, a record that yields k pairs counting k) = kept +
  sum(dropped); `read` counts records, `empty_response` kept pairs with an empty response.
  The flat identical/skipped/invalid counts mirror `dropped` (identical: also when kept)."""
  return {'read': 0, 'n_in': 0, 'kept': 0, 'identical': 0, 'skipped': 0, 'invalid': 0,
          'empty_response': 0, 'dropped': {}, 'invalid_examples': []}


def _drop(stats, reason, n=1):
  stats['dropped'][reason] = stats['dropped'].get(reason, 0) + n


def collect_pairs(records, path, parser=None, *, on_identical='drop', on_invalid='fail',
                  limit=None):
  """(line, obj) records -> (examples, stats). `parser(obj, path, line)` returns a PairExample,
  a list of them, or [] to skip (e.g. a tie); the default is `parse_pair`. A record may be a
  DataError (a malformed line from `iter_records(bad='yield')`): it counts as invalid.

  on_identical: 'drop' | 'keep' | 'fail' for chosen == rejected (counted either way).
  on_invalid: 'fail' raises after reading everything, one `BadRecords` error naming every bad
  record (the plain DataError when there is one); 'skip' counts them (real data sets have a few
  broken rows: transcripts that diverge early) and keeps the first messages.
  limit: stop after this many kept examples. stats: see `new_stats`.
  """
  if on_identical not in ('drop', 'keep', 'fail'):
    raise ValueError(f'on_identical must be drop|keep|fail, got {on_identical!r}')
  if on_invalid not in ('fail', 'skip'):
    raise ValueError(f'on_invalid must be fail|skip, got {on_invalid!r}')
  parser = parser or parse_pair
  stats, out, fatal = new_stats(), [], []  # fatal: the errors to raise (all counted)
  for line, obj in records:
    if limit is not None and len(out) >= limit:
      break
    stats['read'] += 1
    try:
      if isinstance(obj, DataError):
        raise obj
      got = parser(obj, path, line)
    except DataError as e:
      stats['n_in'] += 1
      stats['invalid'] += 1
      _drop(stats, 'invalid')
      if len(stats['invalid_examples']) < 5:
        stats['invalid_examples'].append(str(e))
      if on_invalid == 'fail':
        fatal.append(e)
      continue
    got = [got] if isinstance(got, PairExample) else list(got)
    stats['n_in'] += len(got) or 1
    if not got:
      stats['skipped'] += 1
      _drop(stats, 'skipped')
    for ex in got:
      if ex.chosen.strip() == ex.rejected.strip():
        stats['identical'] += 1
        if on_identical == 'fail':
          fatal.append(DataError(path, line, 'rejected', 'identical to chosen'))
        if on_identical != 'keep':
          _drop(stats, 'identical')
          continue
      out.append(ex)
  if fatal:
    raise fatal[0] if len(fatal) == 1 else BadRecords(fatal[:MAX_REPORTED], len(fatal))
  if limit is not None and len(out) > limit:
    _drop(stats, 'over_limit', len(out) - limit)
    out = out[:limit]
  stats['kept'] = len(out)
  stats['empty_response'] = sum(1 for ex in out if not ex.chosen.strip() or not ex.rejected.strip())
  return out, stats


def read_pairs(path, *, on_identical='drop', on_invalid='fail', limit=None, parser=None):
  """Reads a pairs file (.jsonl, .jsonl.gz, .json list) -> (list[PairExample], stats dict).

  stats: see `new_stats` (read, n_in, kept, dropped by reason, empty_response, ...).
  """
  return collect_pairs(iter_records(path, bad='yield'), str(path), parser,
                       on_identical=on_identical, on_invalid=on_invalid, limit=limit)


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
