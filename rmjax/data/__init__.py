"""Data: load -> validate -> tokenize -> batch (numpy). See DESIGN.md section 5 for formats."""

from rmjax.data.batching import (
    BATCH_KEYS, PairBatcher, TokenizedPairs, bucket_length, tokenize_pairs)
from rmjax.data.pairs import (
    PairExample, iter_records, make_pair, parse_pair, read_pairs, write_pairs)
from rmjax.data.sources import (
    SHARED_FORMATS, detect_format, load_source, shared_data_root, split_by_prompt_hash)
from rmjax.data.tokenize import ByteTokenizer, ChatEncoder, normalize_prompt, truncate

__all__ = [
    'BATCH_KEYS', 'PairBatcher', 'TokenizedPairs', 'bucket_length', 'tokenize_pairs',
    'PairExample', 'iter_records', 'make_pair', 'parse_pair', 'read_pairs', 'write_pairs',
    'SHARED_FORMATS', 'detect_format', 'load_source', 'shared_data_root', 'split_by_prompt_hash',
    'ByteTokenizer', 'ChatEncoder', 'normalize_prompt', 'truncate',
]
