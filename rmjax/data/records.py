"""A line-numbered reader of JSON records (.jsonl, .jsonl.gz, .json list) that turns every way a
file can be wrong into one DataError naming the file (and line): a missing file, a directory, a
binary file, gzip data without .gz (or .gz without gzip data), a truncated gzip, invalid UTF-8,
malformed JSON.

`iter_records(path, bad='yield')` yields a line's DataError in place of its record instead of
raising it, so a caller can report every bad line of a file at once (`collect_pairs`).
"""

import gzip
import json
import pathlib
import zlib

from rmjax.errors import DataError

GZIP_MAGIC = b'\x1f\x8b'


def check_file(path, text=True):
  """Raises a DataError unless `path` is a readable file: text (or, named .gz, gzip) unless
  text=False (a binary format such as parquet)."""
  p = pathlib.Path(path)
  if p.is_dir():
    raise DataError(path, None, None, 'is a directory, not a data file (a saved dataset '
                    'folder is read with hub:DIR)')
  if not p.exists():
    raise DataError(path, None, None, 'file not found')
  try:
    with open(p, 'rb') as f:
      head = f.read(8192)
  except OSError as e:
    raise DataError(path, None, None, f'cannot read: {e.strerror or e}') from None
  gz = str(path).endswith('.gz')
  if not text:
    return
  if head[:2] == GZIP_MAGIC and not gz:
    raise DataError(path, None, None, 'gzip-compressed data in a file not named .gz '
                    '(rename it to end in .gz)')
  if gz and head and head[:2] != GZIP_MAGIC:
    raise DataError(path, None, None, 'named .gz but not gzip-compressed')
  if not gz and b'\0' in head:
    raise DataError(path, None, None, 'a binary file (NUL bytes), not JSON text')


def _decode(raw, path, line):
  try:
    return raw.decode('utf-8')
  except UnicodeDecodeError as e:
    return DataError(path, line, None, f'invalid UTF-8 (byte {e.start} of the line)')


def _json_list(raw, path):
  try:
    text = raw.decode('utf-8')
  except UnicodeDecodeError as e:
    raise DataError(path, raw[:e.start].count(b'\n') + 1, None, 'invalid UTF-8') from None
  try:
    data = json.loads(text.lstrip('\ufeff'))
  except json.JSONDecodeError as e:
    raise DataError(path, e.lineno, None, f'malformed JSON: {e.msg}') from None
  if not isinstance(data, list):
    raise DataError(path, None, None, 'a .json file must hold a list of records')
  return data


def _json_line(raw, path, number):
  text = _decode(raw, path, number)
  if isinstance(text, DataError):
    return text
  try:
    return json.loads(text.lstrip('\ufeff') if number == 1 else text)
  except json.JSONDecodeError as e:
    return DataError(path, number, None, f'malformed JSON: {e.msg} (column {e.colno})')


def iter_records(path, bad='raise'):
  """Yields (line, obj) from .jsonl / .jsonl.gz (1-based line numbers, blank lines skipped) or
  a .json list (line = 1-based element index). bad='raise': a malformed line raises its
  DataError; bad='yield': it is yielded as (line, DataError) and reading goes on. Whole-file
  problems (see the module docstring) always raise."""
  if bad not in ('raise', 'yield'):
    raise ValueError(f"bad must be 'raise' or 'yield', got {bad!r}")
  path = str(path)
  check_file(path)
  gz = path.endswith('.gz')
  stem = path[:-3] if gz else path
  number = 0
  try:
    with (gzip.open if gz else open)(path, 'rb') as f:
      if stem.endswith('.json'):
        yield from enumerate(_json_list(f.read(), path), start=1)
        return
      for number, raw in enumerate(f, start=1):
        if not raw.strip():
          continue
        obj = _json_line(raw, path, number)
        if isinstance(obj, DataError) and bad == 'raise':
          raise obj
        yield number, obj
  except (EOFError, zlib.error, gzip.BadGzipFile) as e:
    raise DataError(path, number + 1 if number else None, None,
                    f'truncated or corrupt gzip data ({e})') from None
  except OSError as e:
    raise DataError(path, None, None, f'cannot read: {e.strerror or e}') from None
