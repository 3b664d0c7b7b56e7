"""charnn prepare: streamed token files equal the in-memory encoding; training from them too."""

import json
import tracemalloc

import numpy as np
import pytest

import charnn
from charnn import checkpoint
from charnn.cli import main
from charnn.data.corpus import read_corpus, text_digest
from charnn.data.prepare import find_prepared, open_prepared, prepare, token_dtype
from charnn.data.vocab import Vocab
from charnn.errors import CharnnError
from conftest import TINY_MODEL, TINY_TEXT, TINY_TRAIN
from test_train import assert_identical


def prepared_equals_text(prep_dir, paths, encoding="utf-8", errors="strict"):
    """The prepared ids, vocabulary and digest are what charnn train builds in memory."""
    text = read_corpus(paths, encoding, errors).text
    p = open_prepared(prep_dir)
    vocab = Vocab.from_text(text)
    assert p.vocab == vocab
    assert np.array_equal(np.asarray(p.tokens, dtype=np.int64), vocab.encode(text))
    assert p.meta["sha256"] == text_digest(text) and p.meta["tokens"] == len(text)
    assert p.tokens.dtype == np.dtype(token_dtype(len(vocab)))
    return p


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 4096])
def test_chunks_cut_through_multibyte_characters(tmp_path, chunk):
    (tmp_path / "d").mkdir()
    (tmp_path / "a.txt").write_text(TINY_TEXT[:500], encoding="utf-8")
    (tmp_path / "d" / "b.txt").write_text("€𝄞 naïve — ∑\n" * 20, encoding="utf-8")  # 2-, 3-, 4-byte
    paths = [str(tmp_path / "a.txt"), str(tmp_path / "d")]
    s = prepare(paths, tmp_path / "p", chunk_bytes=chunk, progress=False)
    p = prepared_equals_text(tmp_path / "p", paths)
    assert s.tokens == len(p.tokens) and s.dtype == "uint8" and s.files == 2


@pytest.mark.parametrize("bad_at", [0, 5, 6, 7, 4095, 4096])
def test_invalid_bytes_same_message_and_policies_as_reading_whole(tmp_path, bad_at):
    path = tmp_path / "bad.txt"
    data = ("é" * 3000).encode()  # 2 bytes per character
    data = data[:bad_at] + b"\xff" + data[bad_at:]
    path.write_bytes(data)
    with pytest.raises(CharnnError) as whole:
        read_corpus([str(path)])
    for chunk in (3, 4096):
        with pytest.raises(CharnnError) as streamed:
            prepare([str(path)], tmp_path / f"s{chunk}", chunk_bytes=chunk, progress=False)
        assert str(streamed.value) == str(whole.value)
        # At an odd offset the 0xff cuts an "é" (c3 a9): the error is at its first byte.
        assert f"at byte offset {bad_at - bad_at % 2} (bytes " in str(streamed.value)
        assert not (tmp_path / f"s{chunk}" / "prepared.json").exists()
        for errors in ("replace", "ignore"):
            out = tmp_path / f"{errors}{chunk}"
            prepare([str(path)], out, errors=errors, chunk_bytes=chunk, progress=False)
            prepared_equals_text(out, [str(path)], errors=errors)


def test_truncated_character_at_the_end_of_a_file(tmp_path):
    path = tmp_path / "cut.txt"
    path.write_bytes("abc€".encode()[:-1])
    with pytest.raises(CharnnError) as whole:
        read_corpus([str(path)])
    with pytest.raises(CharnnError) as streamed:
        prepare([str(path)], tmp_path / "p", chunk_bytes=2, progress=False)
    assert str(streamed.value) == str(whole.value)


def test_other_encodings(tmp_path):
    (tmp_path / "l.txt").write_bytes("café ökonomie\n".encode("latin-1") * 50)
    (tmp_path / "u.txt").write_bytes("naïve Ω\n".encode("utf-16") * 1)  # with a BOM
    for name, enc in (("l.txt", "latin-1"), ("u.txt", "utf-16")):
        prepare([str(tmp_path / name)], tmp_path / f"p{name}", encoding=enc, chunk_bytes=3, progress=False)
        prepared_equals_text(tmp_path / f"p{name}", [str(tmp_path / name)], encoding=enc)


def test_smallest_dtype_that_fits_the_vocabulary(tmp_path):
    assert [token_dtype(n) for n in (1, 256, 257, 65536, 65537)] == ["uint8", "uint8", "uint16", "uint16", "uint32"]
    text = "".join(chr(0x4E00 + i) for i in range(300)) * 3  # 300 CJK characters + <unk>
    (tmp_path / "cjk.txt").write_text(text, encoding="utf-8")
    prepare([str(tmp_path / "cjk.txt")], tmp_path / "p", progress=False)
    p = prepared_equals_text(tmp_path / "p", [str(tmp_path / "cjk.txt")])
    assert p.tokens.dtype == np.uint16 and (tmp_path / "p" / "tokens.bin").stat().st_size == 2 * len(text)


def test_bundled_corpus_by_default(tmp_path):
    s = prepare([], tmp_path / "p", progress=False)
    assert s.tokens == 1_115_394 and s.dtype == "uint8"
    meta = json.loads((tmp_path / "p" / "prepared.json").read_text())
    assert meta["sources"] == ["<bundled:tinyshakespeare>"] and meta["format"] == "charnn-tokens"


def test_user_errors(tmp_path, capsys):
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(CharnnError, match="the corpus is empty"):
        prepare([str(tmp_path / "e.txt")], tmp_path / "p", progress=False)
    assert not (tmp_path / "p").exists()
    (tmp_path / "c.txt").write_text("hello")
    prepare([str(tmp_path / "c.txt")], tmp_path / "p", progress=False)
    with pytest.raises(CharnnError, match="already holds a prepared corpus"):
        prepare([str(tmp_path / "c.txt")], tmp_path / "p", progress=False)
    with pytest.raises(CharnnError, match="is a file"):
        prepare([str(tmp_path / "c.txt")], tmp_path / "c.txt", progress=False)
    with pytest.raises(CharnnError, match="--encoding 'klingon'"):
        prepare([str(tmp_path / "c.txt")], tmp_path / "q", encoding="klingon", progress=False)
    with pytest.raises(CharnnError, match="train on it alone"):
        find_prepared([str(tmp_path / "p"), str(tmp_path / "c.txt")])
    code = main(["prepare", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("charnn: error: corpus path") and err.count("\n") == 1


def test_damaged_prepared_directory_is_reported(tmp_path):
    (tmp_path / "c.txt").write_text("hello world")
    prepare([str(tmp_path / "c.txt")], tmp_path / "p", progress=False)
    tokens = tmp_path / "p" / "tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:-1])
    with pytest.raises(CharnnError, match=r"tokens.bin has 10 bytes but prepared.json says 11 uint8 tokens.*prepare again"):
        open_prepared(tmp_path / "p")
    vocab = tmp_path / "p" / "vocab.json"
    vocab.write_text(vocab.read_text().replace('"w"', '"x"'))  # still a valid vocabulary
    with pytest.raises(CharnnError, match="vocab.json does not match prepared.json"):
        open_prepared(tmp_path / "p")


@pytest.mark.slow
def test_training_from_a_prepared_directory_equals_training_from_text(corpus_file, tmp_path, capsys):
    assert main(["prepare", str(corpus_file), "--out", str(tmp_path / "p"), "--quiet"]) == 0
    assert "train with: charnn train" in capsys.readouterr().out
    common = {**TINY_MODEL, **TINY_TRAIN, "max_steps": 30, "progress": False}
    charnn.train(corpus=[str(corpus_file)], out=str(tmp_path / "text"), **common)
    charnn.train(corpus=[str(tmp_path / "p")], out=str(tmp_path / "prep"), **common, should_stop=lambda s: s == 12)
    charnn.train(resume=str(tmp_path / "prep"), progress=False)  # resume from tokens too
    assert_identical(tmp_path / "text", tmp_path / "prep")
    data = checkpoint.read_run(tmp_path / "prep").data
    assert data["prepared"] == str(tmp_path / "p") and data["sha256"] == text_digest(TINY_TEXT)
    # charnn eval scores the same validation split, mapped from the token file.
    outs = []
    for run in ("text", "prep"):
        assert main(["eval", str(tmp_path / run), "--json"]) == 0
        outs.append({k: v for k, v in json.loads(capsys.readouterr().out).items() if k != "run"})
    assert outs[0] == outs[1]


def test_a_changed_prepared_corpus_refuses_resume(corpus_file, tmp_path):
    prepare([str(corpus_file)], tmp_path / "p", progress=False)
    charnn.train(corpus=[str(tmp_path / "p")], out=str(tmp_path / "r"), **TINY_MODEL, **TINY_TRAIN,
                 max_steps=5, progress=False)
    meta = json.loads((tmp_path / "p" / "prepared.json").read_text())
    meta["sha256"] = "0" * 64
    (tmp_path / "p" / "prepared.json").write_text(json.dumps(meta))
    with pytest.raises(CharnnError, match="changed since the run started"):
        charnn.train(resume=str(tmp_path / "r"), max_steps=10, progress=False)


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_corpus(tmp_path):
    """Peak Python/numpy allocations of prepare and of training from the token file are the
    same for a 1 MB and a 12 MB corpus (benchmarks/prepare_memory.py measures 2 GB)."""
    line = "The quick brown fox — naïve café — jumps over the lazy dog 0123456789.\n"
    for size in (1, 12):
        corpus = tmp_path / f"c{size}.txt"
        corpus.write_text(line * (size * 2**20 // len(line.encode())), encoding="utf-8")

    def prep(size, out=""):
        prepare([str(tmp_path / f"c{size}.txt")], tmp_path / (out or f"p{size}"), chunk_bytes=1 << 18,
                progress=False)

    def train(size, run):
        charnn.train(corpus=[str(tmp_path / f"p{size}")], out=str(tmp_path / run), **TINY_MODEL,
                     **{**TINY_TRAIN, "eval_every": 0}, max_steps=3, progress=False,
                     val_fraction=0.2 / size)  # the same 200 kB to validate

    prep(1)
    train(1, "warm-up")  # imports and first-call caches are not the corpus's doing
    prep1, prep12 = _peak_bytes(lambda: prep(1, "again")), _peak_bytes(lambda: prep(12))
    train1, train12 = _peak_bytes(lambda: train(1, "r1")), _peak_bytes(lambda: train(12, "r12"))
    assert prep12 < prep1 + 2**20 and train12 < train1 + 2**20, (prep1, prep12, train1, train12)
    # Reading the text whole would cost more than the corpus itself (12 MiB); prepare's
    # fixed code-point tables (5.5 MiB) and its chunks' working set stay below that.
    assert prep12 < 12 * 2**20 and train12 < 4 * 2**20, (prep12, train12)


def test_token_file_reads_like_an_array(tmp_path):
    from charnn.data.prepare import TokenFile

    rng = np.random.default_rng(0)
    data = rng.integers(0, 60000, 5000).astype("<u2")
    path = tmp_path / "t.bin"
    data.tofile(path)
    tf = TokenFile(path, "uint16", len(data))
    assert len(tf) == 5000 and np.array_equal(np.asarray(tf), data)
    view = tf[1000:4000][500:]  # views of views read from the right place
    assert len(view) == 2500 and np.array_equal(np.asarray(view), data[1500:4000])
    assert view[0] == data[1500] and view[-1] == data[3999]
    for idx in (rng.integers(0, 2500, (7, 33)), np.array([5, 5, 4, 2000, 3, 2499]),
                np.arange(100)[:, None] * 25 + np.arange(20)[None, :]):  # rows, as batches ask
        got = view[idx]
        assert got.shape == idx.shape and got.dtype == np.dtype("<u2")
        assert np.array_equal(got, data[1500:4000][idx])
    with pytest.raises(IndexError):
        view[np.array([2500])]


def test_validation_text_of_a_prepared_run(corpus_file, tmp_path):
    from charnn.data.source import validation_text

    prepare([str(corpus_file)], tmp_path / "p", progress=False)
    for name, corpus in (("text", corpus_file), ("prep", tmp_path / "p")):
        charnn.train(corpus=[str(corpus)], out=str(tmp_path / name), **TINY_MODEL, **TINY_TRAIN,
                     max_steps=2, progress=False)
    text = validation_text(checkpoint.read_run(tmp_path / "text"))
    assert validation_text(checkpoint.read_run(tmp_path / "prep")) == text == TINY_TEXT[int(len(TINY_TEXT) * 0.9):]
