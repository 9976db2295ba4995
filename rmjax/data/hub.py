"""Rows of data sets read through Hugging Face `datasets`: a parquet file, a folder written by
`save_to_disk` (a Dataset, or one split of a DatasetDict such as UltraFeedback's
train_prefs / test_prefs), or a hub name. Every failure to find or open one is a one-line
DataError / ConfigError (offline, unknown name or split, missing file), never a traceback.
`datasets` is imported on first use (slow to import).
"""

import os
import pathlib

from rmjax.data.records import check_file
from rmjax.errors import ConfigError, DataError


def _saved_dataset(folder, split, where):
  """A `save_to_disk` folder: a Dataset, or one split of a DatasetDict (named, or its only one)."""
  import datasets  # pylint: disable=g-import-not-at-top  (slow import, only when used)
  ds = datasets.load_from_disk(str(folder))
  if isinstance(ds, datasets.DatasetDict):
    names = list(ds)
    if split is None and len(names) == 1:
      split = names[0]
    if split not in ds:
      raise ConfigError(f'{where}: ' + (f'no split {split!r}' if split else 'name a split') +
                        f'; it has {names} (hub:DIR:SPLIT or ?split=SPLIT)')
    return ds[split]
  if split is not None:
    raise ConfigError(f'{where}: a single saved Dataset has no splits (got split={split!r})')
  return ds


def _is_saved_dataset(folder):
  return folder.is_dir() and any((folder / f).exists() for f in ('dataset_dict.json', 'state.json'))


def dataset_records(kind, target, split):
  """(row number, row dict) of a parquet file, a saved dataset folder or a hub data set; every
  failure to find or open it is a one-line DataError / ConfigError."""
  import datasets  # pylint: disable=g-import-not-at-top  (slow import, only when used)
  where, folder = f'{kind}:{target}', pathlib.Path(target).expanduser()
  if kind == 'parquet':
    if not any(c in target for c in '*?['):
      check_file(target, text=False)
    try:
      ds = datasets.load_dataset('parquet', data_files=target, split=split or 'train')
    except Exception as e:  # pylint: disable=broad-except  (any failure is the file's fault)
      raise DataError(target, None, None, f'cannot read as parquet: {type(e).__name__}: '
                      f'{_first_line(e)}') from None
  elif _is_saved_dataset(folder):
    ds = _saved_dataset(folder, split, where)
  elif folder.exists() or target.startswith(('/', './', '../', '~')):
    if folder.is_dir():
      raise DataError(target, None, None, 'not a saved dataset folder (no dataset_dict.json or '
                      'state.json from save_to_disk)')
    raise DataError(target, None, None, 'not found' if not folder.exists() else
                    'a file, not a dataset folder or hub name (use json:PATH or parquet:PATH)')
  else:
    try:
      ds = datasets.load_dataset(target, split=split or 'train')
    except Exception as e:  # pylint: disable=broad-except  (offline, unknown name, bad split...)
      offline = any(os.environ.get(v, '') not in ('', '0') for v in
                    ('HF_HUB_OFFLINE', 'HF_DATASETS_OFFLINE'))
      hint = ' (offline: only data sets already in the HF cache load)' if offline else ''
      raise ConfigError(f'{where}: cannot load the data set{hint}: {type(e).__name__}: '
                        f'{_first_line(e)}') from None
  return enumerate(ds, start=1)


def _first_line(e):
  return (str(e).strip().splitlines() or [''])[0][:300]
