"""Pair formats and errors, sources, tokenize_pairs, PairBatcher, synthetic set, shared data."""

import gzip
import json
import math

import numpy as np
import pytest

from rmjax.data import (
    BATCH_KEYS, ByteTokenizer, ChatEncoder, PairBatcher, load_source, parse_pair, read_pairs,
    split_by_prompt_hash, tokenize_pairs)
from rmjax.data import sources, synthetic
from rmjax.errors import ConfigError, DataError

HH = {'chosen': '\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Tell a joke\n\nAssistant: A pun.',
      'rejected': '\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Tell a joke\n\nAssistant: No.'}


def write_lines(path, lines):
  path.write_text(''.join(line + '\n' for line in lines))
  return str(path)


# ---------------------------------------------------------------- formats


def test_parse_explicit():
  ex = parse_pair({'prompt': 'q', 'chosen': 'a', 'rejected': 'b', 'subset': 's', 'margin': 2},
                  'f', 1)
  assert ex.prompt == (('user', 'q'),) and (ex.chosen, ex.rejected) == ('a', 'b')
  assert ex.subset == 's' and ex.margin == 2.0 and ex.source == 'f:1'
  msgs = [{'role': 'system', 'content': 's'}, {'role': 'user', 'content': 'q'}]
  assert parse_pair({'prompt': msgs, 'chosen': 'a', 'rejected': 'b'}).messages == msgs


def test_parse_trl():
  user = [{'role': 'user', 'content': 'q'}]
  ex = parse_pair({'chosen': user + [{'role': 'assistant', 'content': 'a'}],
                   'rejected': user + [{'role': 'assistant', 'content': 'b'}]})
  assert ex.prompt == (('user', 'q'),) and (ex.chosen, ex.rejected) == ('a', 'b')
  ex = parse_pair({'prompt': user, 'chosen': [{'role': 'assistant', 'content': 'a'}],
                   'rejected': [{'role': 'assistant', 'content': 'b'}]})
  assert ex.prompt == (('user', 'q'),) and ex.chosen == 'a'


def test_parse_hh_multi_turn():
  ex = parse_pair(HH, 'hh', 7)
  assert ex.prompt == (('user', 'Hi'), ('assistant', 'Hello.'), ('user', 'Tell a joke'))
  assert (ex.chosen, ex.rejected) == ('A pun.', 'No.')


def test_parse_hh_diverging_transcripts():
  bad = dict(HH, rejected='\n\nHuman: Other\n\nAssistant: No.')
  with pytest.raises(DataError, match="hh:3: field 'rejected': chosen and rejected differ"):
    parse_pair(bad, 'hh', 3)


@pytest.mark.parametrize('line, field, message', [
    ('{"prompt": "q", "chosen": "a", "rejected": ', None, 'malformed JSON'),
    ('[1, 2]', None, 'expected a JSON object'),
    ('{"prompt": "q", "chosen": "a"}', 'rejected', 'missing field'),
    ('{"prompt": "q", "chosen": [], "rejected": "b"}', 'chosen', 'expected a string, got list'),
    ('{"prompt": "", "chosen": "a", "rejected": "b"}', 'prompt', 'empty text'),
    ('{"prompt": "q", "chosen": "a", "rejected": 3}', 'rejected', 'expected a string, got int'),
    ('{"question": "q", "answer": "a"}', None, "unknown pair format: found keys ['answer', "
                                               "'question']"),
    ('{"prompt": "q", "chosen": "a", "rejected": "b", "margin": NaN}', 'margin', 'not a finite'),
    ('{"prompt": "q", "chosen": "a", "rejected": "b", "margin": "x"}', 'margin', 'expected a num'),
    ('{"prompt": "q", "chosen": "same", "rejected": "same"}', 'rejected', 'identical to chosen'),
])
def test_bad_input_names_file_line_field(tmp_path, line, field, message):
  path = write_lines(tmp_path / 'bad.jsonl', [json.dumps(HH), '', line])
  with pytest.raises(DataError) as err:
    read_pairs(path, on_identical='fail')
  where = f"{path}:3: field '{field}': " if field else f'{path}:3: '
  assert str(err.value).startswith(where + message), str(err.value)
  assert (err.value.path, err.value.line, err.value.field) == (path, 3, field)


def test_read_pairs_identical_gz_json_and_skip(tmp_path):
  rows = [{'prompt': 'q', 'chosen': 'a', 'rejected': 'a'}, HH,
          {'prompt': 'q', 'chosen': '', 'rejected': 'b'}]
  gz = tmp_path / 'p.jsonl.gz'
  with gzip.open(gz, 'wt') as f:
    f.write(''.join(json.dumps(r) + '\n' for r in rows[:2]))
  ex, stats = read_pairs(gz)
  assert len(ex) == 1 and stats['identical'] == 1 and stats['read'] == 2 and stats['kept'] == 1
  assert len(read_pairs(gz, on_identical='keep')[0]) == 2
  js = tmp_path / 'p.json'
  js.write_text(json.dumps(rows))
  ex, stats = read_pairs(js)  # an empty response is a valid, counted response
  assert len(ex) == 2 and stats['empty_response'] == 1 and stats['dropped'] == {'identical': 1}
  rows[2] = {'prompt': 'q', 'chosen': None, 'rejected': 'b'}
  js.write_text(json.dumps(rows))
  ex, stats = read_pairs(js, on_invalid='skip')
  assert stats['invalid'] == 1 and "p.json:3: field 'chosen': expected a string" in (
      stats['invalid_examples'][0])
  assert stats['n_in'] == stats['kept'] + sum(stats['dropped'].values()) == 3
  assert read_pairs(js, on_identical='keep', on_invalid='skip', limit=1)[1]['kept'] == 1


# ---------------------------------------------------------------- converters and sources

CONVERTED = [
    ('llmbar', {'input': 'q', 'output_1': 'x', 'output_2': 'y', 'label': 2}, ('y', 'x')),
    ('autoj_pairwise_test', {'prompt': 'q', 'response 1': 'x', 'response 2': 'y', 'label': 0,
                             'scenario': 's'}, ('x', 'y')),
    ('pandalm_testset', {'instruction': 'q', 'input': 'i', 'response1': 'x', 'response2': 'y',
                         'annotator1': 2, 'annotator2': 2, 'annotator3': 0}, ('y', 'x')),
    ('judgebench', {'question': 'q', 'response_A': 'x', 'response_B': 'y', 'label': 'B>A'},
     ('y', 'x')),
    ('alpaca_eval_annotations', {'instruction': 'q', 'output_1': 'x', 'output_2': 'y',
                                 'preference': 1.2}, ('x', 'y')),
]


@pytest.mark.parametrize('fmt, row, expect', CONVERTED)
def test_converters(fmt, row, expect):
  got = sources.SHARED_FORMATS[fmt](row, 'f', 1)
  (ex,) = got if isinstance(got, list) else [got]
  assert sources.detect_format(row) == fmt
  assert (ex.chosen, ex.rejected) == expect
  if fmt == 'pandalm_testset':
    assert ex.prompt == (('user', 'q\n\ni'),)


@pytest.mark.parametrize('fmt, row', [
    ('autoj_pairwise_test', {'prompt': 'q', 'response 1': 'x', 'response 2': 'y', 'label': 2}),
    ('pandalm_testset', {'instruction': 'q', 'response1': 'x', 'response2': 'y',
                         'annotator1': 1, 'annotator2': 2, 'annotator3': 0}),
    ('alpaca_eval_annotations', {'instruction': 'q', 'output_1': 'x', 'output_2': 'y',
                                 'preference': 1.5}),
    ('alpaca_eval_annotations', {'instruction': 'q', 'output_1': 'x', 'output_2': 'y',
                                 'preference': None}),
])
def test_converters_drop_ties(fmt, row):
  assert sources.SHARED_FORMATS[fmt](row, 'f', 1) == []


def test_converter_bad_label():
  with pytest.raises(DataError, match="f:4: field 'label': expected one of"):
    sources.from_llmbar({'input': 'q', 'output_1': 'x', 'output_2': 'y', 'label': 3}, 'f', 4)


def test_rm_bench_3x3():
  row = {'prompt': 'q', 'chosen': ['c0', 'c1', 'c2'], 'rejected': ['r0', 'r1', 'r2']}
  out = sources.from_rm_bench(row, '/x/chat_filtered.jsonl.gz', 5)
  assert len(out) == 9 and out[1].chosen == 'c0' and out[1].rejected == 'r1'
  assert out[1].subset == 'chat/hard' and out[0].subset == 'chat/normal'
  assert out[3].subset == 'chat/easy' and out[1].source.endswith(':5#c0r1')
  assert len(sources.from_rm_bench_diag(row, 'chat.jsonl', 5)) == 3


def test_load_source_json_and_format(tmp_path):
  path = write_lines(tmp_path / 'l.jsonl', [json.dumps(
      {'input': 'q', 'output_1': 'x', 'output_2': 'y', 'label': 1})])
  ex, stats = load_source(f'json:{path}?format=llmbar&subset=mine')
  assert ex[0].chosen == 'x' and ex[0].subset == 'mine' and stats['kept'] == 1
  assert load_source(f'json:{path}')[0][0].chosen == 'x'  # detected by its keys
  with pytest.raises(DataError, match=r"l.jsonl:1: unknown pair format: found keys \['input'"):
    load_source(f'json:{path}?format=pairs')
  for bad in ('csv:x', f'json:{path}?format=nope', f'json:{path}?colour=red'):
    with pytest.raises(ConfigError):
      load_source(bad)


def test_load_source_through_datasets(tmp_path):
  datasets = pytest.importorskip('datasets')
  rows = [{'prompt': f'q{i}', 'chosen': 'a', 'rejected': 'b'} for i in range(3)]
  ds = datasets.Dataset.from_list(rows)
  ds.to_parquet(str(tmp_path / 'p.parquet'))
  ex, _ = load_source(f'parquet:{tmp_path / "p.parquet"}')
  assert [e.prompt[0][1] for e in ex] == ['q0', 'q1', 'q2']
  ds.save_to_disk(str(tmp_path / 'saved'))
  assert len(load_source(f'hub:{tmp_path / "saved"}')[0]) == 3
  datasets.DatasetDict({'test': ds}).save_to_disk(str(tmp_path / 'dd'))
  assert len(load_source(f'hub:{tmp_path / "dd"}', split='test')[0]) == 3


def test_split_by_prompt_hash_deterministic_and_disjoint():
  examples = synthetic.make_pairs(400, seed=3)
  train, evals = split_by_prompt_hash(examples, 0.25, seed=1)
  assert (train, evals) == split_by_prompt_hash(examples, 0.25, seed=1)
  assert len(train) + len(evals) == 400 and evals
  assert not {e.prompt for e in train} & {e.prompt for e in evals}
  assert split_by_prompt_hash(examples, 0.25, seed=2) != (train, evals)


# ---------------------------------------------------------------- tokenize and batch


def _tokenized(n=37, max_length=512, seed=0):
  enc = ChatEncoder(ByteTokenizer(), max_length)
  return tokenize_pairs(synthetic.make_pairs(n, seed), enc)


def test_tokenize_pairs_truncation_counted_and_modes():
  tok = ByteTokenizer()
  ex = parse_pair({'prompt': 'p' * 100, 'chosen': 'c' * 100, 'rejected': 'r', 'margin': 1.5},
                  'f.jsonl', 9)
  enc = ChatEncoder(tok, 64)
  tp, stats = tokenize_pairs([ex], enc)
  assert stats['truncated'] == 1 and stats['kept'] == 1
  chosen = tok.decode(tp.chosen[0])
  assert len(tp.chosen[0]) == 64 and tp.prompt_len[0] == 32
  assert chosen.endswith('assistant\n' + 'c' * 32)  # prompt cut left, response right
  assert tok.decode(tp.rejected[0][32:]) == 'r<|im_end|>\n' and tp.margin[0] == 1.5
  assert tokenize_pairs([ex], enc, on_overlong='drop')[1]['dropped'] == 1
  with pytest.raises(DataError, match=r"f.jsonl:9: field 'chosen': \d+ tokens > max_length 64"):
    tokenize_pairs([ex], enc, on_overlong='fail')


def test_batch_shapes_and_buckets():
  tp, _ = _tokenized()
  batcher = PairBatcher(tp, 8, buckets=(32, 64, 128, 256))
  for _ in range(6):
    b = next(batcher)
    assert tuple(b) == BATCH_KEYS
    longest = max(b['chosen_mask'].sum(1).max(), b['rejected_mask'].sum(1).max())
    t = b['chosen_ids'].shape[1]
    assert t in (64, 128) and t >= longest and (t == 64 or longest > 64)
    assert b['rejected_ids'].shape == (8, t) and b['chosen_ids'].dtype == np.int32
    assert b['weight'].tolist() == [1.0] * 8 and b['margin'].dtype == np.float32
    row = b['index'][0]
    assert b['prompt_len'][0] == tp.prompt_len[row]
    n = len(tp.chosen[row])
    assert (b['chosen_ids'][0, :n] == tp.chosen[row]).all() and (b['chosen_ids'][0, n:] == 0).all()
  b = PairBatcher(tp, 8, buckets=(), pad_multiple=16).make_batch([0])
  assert b['chosen_ids'].shape[1] % 16 == 0 and b['weight'].sum() == 1


def test_shuffle_deterministic_and_exact_resume():
  tp, _ = _tokenized()
  a, b = PairBatcher(tp, 8, seed=5), PairBatcher(tp, 8, seed=5)
  seq_a = [next(a)['index'].tolist() for _ in range(10)]
  assert seq_a == [next(b)['index'].tolist() for _ in range(10)]
  assert seq_a[0] != seq_a[4]  # 37 // 8 = 4 batches an epoch, then a new permutation
  assert sorted(sum(seq_a[:4], [])) == sorted(set(sum(seq_a[:4], [])))
  c = PairBatcher(tp, 8, seed=5)
  for _ in range(3):
    next(c)
  state = json.loads(json.dumps(c.state()))
  expected = [next(c) for _ in range(5)]
  d = PairBatcher(tp, 8, seed=5)
  d.restore(state)
  for want in expected:
    got = next(d)
    assert all((got[k] == want[k]).all() for k in BATCH_KEYS)
  assert PairBatcher(tp, 8, seed=6).__next__()['index'].tolist() != seq_a[0]
  assert next(PairBatcher(tp, 8, shuffle=False))['index'].tolist() == list(range(8))


def test_partial_batches_and_eval_batches():
  tp, _ = _tokenized()
  batcher = PairBatcher(tp, 8, drop_remainder=False)
  epoch = [next(batcher) for _ in range(5)]
  assert [b['weight'].sum() for b in epoch] == [8, 8, 8, 8, 5]
  seen = []
  for b in batcher.eval_batches():
    assert b['chosen_ids'].shape[0] == 8 and tuple(b) == BATCH_KEYS
    seen += b['index'][b['weight'] > 0].tolist()
  assert seen == list(range(37))
  with pytest.raises(ConfigError):
    PairBatcher(tp, 64)


# ---------------------------------------------------------------- synthetic


def test_synthetic_gold_reward_and_pairs(tmp_path):
  assert synthetic.gold_reward('Say something kind about cats.', 'great cats.') == 2.0
  assert synthetic.gold_reward('Say something harsh about cats.', 'great cats.') == 0.0
  assert synthetic.gold_reward('Say something kind about cats.', 'dogs bad.') == -2.0
  pairs = synthetic.make_pairs(200, seed=1)
  assert pairs == synthetic.make_pairs(200, seed=1)
  assert {p.subset for p in pairs} == set(synthetic.MODES)
  for p in pairs:
    q = p.prompt[0][1]
    assert synthetic.gold_reward(q, p.chosen) > synthetic.gold_reward(q, p.rejected)
  path = tmp_path / 'syn.jsonl.gz'
  synthetic.write_jsonl(path, pairs)
  back, stats = read_pairs(path)
  assert [(b.prompt, b.chosen, b.rejected, b.subset) for b in back] == [
      (p.prompt, p.chosen, p.rejected, p.subset) for p in pairs]
  prompts = synthetic.make_prompts(5, seed=0)
  assert len(prompts) == 5 and all(synthetic.parse_prompt(p['prompt']) for p in prompts)
  tp, _ = tokenize_pairs(pairs, ChatEncoder(ByteTokenizer(), 256))
  assert tp.max_length <= 128


# ---------------------------------------------------------------- shared data (skips when absent)


def test_shared_hh_rlhf(shared_data, monkeypatch):
  monkeypatch.setenv('RMJAX_SHARED_DATA', str(shared_data))
  ex, stats = load_source('shared:hh_rlhf_harmless_test')
  assert stats['read'] == 2312 and stats['kept'] + stats['invalid'] == 2312
  assert stats['invalid'] < 20 and all(e.prompt[-1][0] == 'user' for e in ex)
  assert any(len(e.prompt) > 1 for e in ex) and ex[0].subset == 'harmless-base_test'
  train, evals = split_by_prompt_hash(ex, 0.1)
  assert 0.05 < len(evals) / len(ex) < 0.15


@pytest.mark.parametrize('name, rows', [('llmbar', 1000), ('rm_bench', 798),
                                        ('autoj_pairwise_test', 1309), ('judgebench', 620),
                                        ('pandalm_testset', 999)])
def test_shared_sets(shared_data, monkeypatch, name, rows):
  monkeypatch.setenv('RMJAX_SHARED_DATA', str(shared_data))
  ex, stats = load_source(f'shared:{name}')
  assert stats['read'] == rows and len(ex) > 0.6 * rows
  assert all(e.subset for e in ex) and stats['n_in'] == len(ex) + sum(stats['dropped'].values())
  assert stats['empty_response'] == sum(not e.chosen.strip() or not e.rejected.strip() for e in ex)
  assert all(math.isfinite(e.margin) for e in ex if e.margin is not None)
