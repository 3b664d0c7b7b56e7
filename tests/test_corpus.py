import os

import numpy as np
import pytest

from charnn.data.corpus import read_corpus, split_text
from charnn.errors import CharnnError


def test_bundled_corpus_is_tiny_shakespeare():
    c = read_corpus()
    assert len(c.text) == 1_115_394
    assert c.text.startswith("First Citizen:")
    assert c.sources == ("<bundled:tinyshakespeare>",)


def test_files_and_directories_in_order(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.txt").write_text("B")
    (tmp_path / "d" / "a.txt").write_text("A")
    (tmp_path / "d" / "sub" / "c.txt").write_text("C")
    (tmp_path / "d" / ".hidden").write_text("H")
    (tmp_path / "x.txt").write_text("X")
    c = read_corpus([str(tmp_path / "x.txt"), str(tmp_path / "d")])
    assert c.text == "XABC"
    assert len(c.sources) == 4


def test_split_matches_nanogpt():
    train, val = split_text("0123456789" * 3, 0.1)
    assert len(train) == int(30 * 0.9) and train + val == "0123456789" * 3
    assert split_text("abc", 0.0) == ("abc", "")


def test_missing_paths_reported_together(tmp_path):
    with pytest.raises(CharnnError, match=r"nope1 does not exist; .*nope2 does not exist"):
        read_corpus([str(tmp_path / "nope1"), str(tmp_path / "nope2")])


def test_empty_corpus(tmp_path):
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(CharnnError, match="empty"):
        read_corpus([str(tmp_path / "e.txt")])


def test_empty_directory(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(CharnnError, match="holds no files"):
        read_corpus([str(tmp_path / "d")])


def test_invalid_utf8_names_file_and_offset(tmp_path):
    p = tmp_path / "latin.txt"
    p.write_bytes(b"caf" + b"\xe9 ok")
    with pytest.raises(CharnnError, match=r"latin.txt is not valid utf-8 at byte offset 3.*--encoding.*--errors"):
        read_corpus([str(p)])
    assert read_corpus([str(p)], encoding="latin-1").text == "café ok"
    assert read_corpus([str(p)], errors="replace").text == "caf\ufffd ok"
    assert read_corpus([str(p)], errors="ignore").text == "caf ok"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    p = tmp_path / "secret.txt"
    p.write_text("x")
    p.chmod(0)
    with pytest.raises(CharnnError, match="cannot read corpus file"):
        read_corpus([str(p)])


def test_unknown_encoding(tmp_path):
    with pytest.raises(CharnnError, match="--encoding 'klingon'"):
        read_corpus([], encoding="klingon")


def test_read_error_is_a_user_error(tmp_path, monkeypatch):
    # Root can read a chmod-0 file, so simulate the OS refusing the read.
    from pathlib import Path

    p = tmp_path / "locked.txt"
    p.write_text("x")

    def refuse(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(CharnnError, match="cannot read corpus file .*locked.txt: Permission denied"):
        read_corpus([str(p)])


def test_open_corpus_answers_for_text_and_prepared_alike(tmp_path):
    from charnn.data.prepare import prepare
    from charnn.data.source import open_corpus
    from charnn.data.vocab import Vocab

    text = "ROMEO: café au lait\nJULIET: no.\n" * 20
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    c = open_corpus([str(tmp_path / "c.txt")], val_fraction=0.1)
    n = int(len(text) * 0.9)
    assert c.n_train == n and c.vocab == Vocab.from_text(text)
    assert c.train_ids.tolist() == c.vocab.encode(text[:n]).tolist()
    assert c.val_ids.tolist() == c.vocab.encode(text[n:]).tolist() and c.val_text == text[n:]
    assert c.record["chars"] == len(text) and c.record["sources"] == [str(tmp_path / "c.txt")]

    prepare([str(tmp_path / "c.txt")], tmp_path / "p", progress=False)
    p = open_corpus([str(tmp_path / "p")], val_fraction=0.1)
    assert p.n_train == n and p.vocab == c.vocab and p.record["sha256"] == c.record["sha256"]
    assert np.asarray(p.train_ids).tolist() == c.train_ids.tolist() and p.val_text == text[n:]
    with pytest.raises(CharnnError, match="does not apply to the prepared corpus"):
        open_corpus([str(tmp_path / "p")], transliterate="ascii")
