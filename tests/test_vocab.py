import json

import numpy as np
import pytest

from charnn.data.vocab import END, START, UNK, Vocab
from charnn.errors import CharnnError


def test_round_trip_non_ascii_and_newlines():
    text = "Ünïcödé 日本語 text\nwith\r\nnewlines\t and emoji 🎭 and combining e\u0301"
    v = Vocab.from_text(text)
    assert v.decode(v.encode(text)) == text
    assert list(v.chars) == sorted(set(text))
    assert v.encode("🎭").tolist() == [v.id_of("🎭")]


def test_json_round_trip_keeps_everything(tmp_path):
    text = 'quote " backslash \\ newline \n nul \x00 surrogate-free ✓'
    v = Vocab.from_text(text, specials=(START, END, UNK))
    path = tmp_path / "vocab.json"
    path.write_text(v.to_json(), encoding="utf-8")
    w = Vocab.load(path)
    assert w == v
    assert json.loads(path.read_text())["version"] == 1
    assert w.decode(w.encode(text)) == text


def test_special_tokens_follow_the_characters():
    v = Vocab.from_text("ba", specials=(START, END))
    assert v.chars == ("a", "b")
    assert v.id_of(START) == 2 and v.id_of(END) == 3 and len(v) == 4
    assert v.decode([2, 0, 1, 3]) == "ab"
    assert v.decode([2, 0, 1, 3], specials=True) == "<start>ab<end>"


def test_unknown_policies():
    v = Vocab.from_text("abc")
    with pytest.raises(CharnnError, match=r"2 character\(s\) outside.*'x', 'z'.*--unknown"):
        v.encode("axbz", what="the prime")
    assert v.encode("axbz", unknown="skip").tolist() == [0, 1]
    assert v.encode("axbz", unknown="replace").tolist() == [0, v.id_of(UNK), 1, v.id_of(UNK)]
    assert v.unknown_chars("zzax") == ["x", "z"]
    no_unk = Vocab.from_text("abc", specials=(START, END))
    with pytest.raises(CharnnError, match="no <unk>"):
        no_unk.encode("x", unknown="replace")


def test_encode_is_int64_and_empty_ok():
    v = Vocab.from_text("hello")
    assert v.encode("").dtype == np.int64 and len(v.encode("")) == 0


@pytest.mark.parametrize(
    "content, match",
    [("{", "not valid JSON"), ('{"format": "other"}', "not a charnn vocabulary"),
     ('{"format": "charnn-vocab", "version": 99, "chars": [], "specials": []}', "version 99"),
     ('{"format": "charnn-vocab", "version": 1, "chars": ["b", "a"], "specials": []}', "sorted")],
)
def test_bad_vocab_files(tmp_path, content, match):
    path = tmp_path / "vocab.json"
    path.write_text(content)
    with pytest.raises(CharnnError, match=match):
        Vocab.load(path)
