"""Principle collections: loading, validation errors, RM input rendering."""

import json

import pytest

from rmjax.data import principles as P
from rmjax.data.tokenize import ByteTokenizer
from rmjax.errors import ConfigError, DataError


def _write(tmp_path, data, name="p.json"):
  path = tmp_path / name
  path.write_text(json.dumps(data) if not isinstance(data, str) else data)
  return str(path)


def test_default_set_loads_with_negations_and_weights():
  ps = P.load_principles()
  assert len(ps) >= 8 and len({p.dimension for p in ps}) == len(ps)
  assert all(p.negative_definition and p.weight > 0 for p in ps)
  assert "Concise" in P.by_dimension(ps)
  assert ps[0].text(negated=True) == ps[0].negative_definition


def test_shared_collections_load(shared_data):
  rm = P.load_principles("shared:principle_collection_rm", require_negative=True)
  ppo = P.load_principles("shared:principle_collection_ppo", require_weight=True)
  assert len(rm) == 11 and len(ppo) == 14
  assert rm[1].dimension == "Concise"


def test_aliases_and_list_input():
  ps = P.load_principles([{"name": "Short", "text": "Be short."}])
  assert ps == [P.Principle("Short", "Be short.", None, 1.0)]


@pytest.mark.parametrize("data,field,msg", [
    ([{"dimension": "A", "definition": "x"}, {"dimension": "B"}], "[1].definition", "missing"),
    ([{"definition": "x"}], "[0].dimension", "missing"),
    ([{"dimension": "A", "definition": "  "}], "[0].definition", "non-empty"),
    ([{"dimension": "A", "definition": "x", "weight": -1}], "[0].weight", "positive"),
    ([{"dimension": "A", "definition": "x", "weight": "3"}], "[0].weight", "positive"),
    ([{"dimension": "A", "definition": "x"}, {"dimension": "A", "definition": "y"}],
     "[1].dimension", "duplicate"),
    (["Concise"], "[0]", "expected an object"),
])
def test_bad_entries_name_file_index_field(tmp_path, data, field, msg):
  path = _write(tmp_path, data)
  with pytest.raises(DataError, match=msg) as e:
    P.load_principles(path)
  assert path in str(e.value) and f"'{field}'" in str(e.value)


def test_empty_list_not_a_list_missing_file_malformed(tmp_path):
  with pytest.raises(DataError, match="empty principle list"):
    P.load_principles(_write(tmp_path, []))
  with pytest.raises(DataError, match="JSON list"):
    P.load_principles(_write(tmp_path, {"dimension": "A"}))
  with pytest.raises(DataError, match="file not found"):
    P.load_principles(str(tmp_path / "nope.json"))
  with pytest.raises(DataError, match="malformed JSON"):
    P.load_principles(_write(tmp_path, "[{"))


def test_required_fields(tmp_path):
  path = _write(tmp_path, [{"dimension": "A", "definition": "x"}])
  with pytest.raises(DataError, match=r"\[0\].negative_definition.*missing"):
    P.load_principles(path, require_negative=True)
  with pytest.raises(DataError, match=r"\[0\].weight.*missing"):
    P.load_principles(path, require_weight=True)
  with pytest.raises(ConfigError, match="no negative_definition"):
    P.load_principles(path)[0].text(negated=True)


def test_rm_input_order_and_truncation():
  tok = ByteTokenizer()
  ids = P.encode_rm_input(tok, "0123456789", "abcdefghij", ["Be brief.", "Be kind."],
                          query_len=4, response_len=3, template="compact")
  text = tok.decode(ids)
  # response first (right-cut to 3), instruction second (left-cut to 4), bullets in order, last
  assert text == ("Response:\nabc\nInstruction:\n6789\nPrinciples:\n- Be brief.\n- Be kind.\n"
                  "Quality:")
  full = tok.decode(P.encode_rm_input(tok, "Q?", "A.", ["p"], 256, 256, "v0"))
  assert full.index("A.") < full.index("Q?") < full.index("- p\n")
  assert full.endswith("the quality of the output is")
  with pytest.raises(ConfigError, match="at least one principle"):
    P.encode_rm_input(tok, "q", "r", [], 8, 8)
  with pytest.raises(ConfigError, match="unknown SALMON template"):
    P.encode_rm_input(tok, "q", "r", ["p"], 8, 8, template="v9")


def test_instruction_text():
  assert P.instruction_text([{"role": "user", "content": "hi"}]) == "hi"
  chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
          {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
  assert P.instruction_text(chat) == "User: a\n\nAssistant: b\n\nUser: c"
