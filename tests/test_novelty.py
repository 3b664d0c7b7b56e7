"""Novelty: the suffix array, the matching statistics and the figures, checked by brute force;
the cache in a run directory; charnn sample --novelty and --format jsonl."""

from __future__ import annotations

import builtins
import json
import os

import numpy as np
import pytest

import charnn
from charnn import checkpoint
from charnn.cli import main
from charnn.data import suffixarray
from charnn.data.novelty import NGRAMS, document_novelty, measure, query_ids
from charnn.data.suffixarray import SuffixIndex, open_index, suffix_array
from charnn.data.vocab import Vocab
from charnn.errors import CharnnError
from charnn.infer.novelty import open_novelty, run_document_novelty
from conftest import TINY_MODEL, TINY_TRAIN

RNG = np.random.default_rng(0)


# --- brute force ------------------------------------------------------------------------------
def brute_matching(train: str | list, query: str | list) -> list[int]:
    """ms[i]: the longest prefix of query[i:] that is a substring of train, by trying them all."""
    out = []
    for i in range(len(query)):
        k = 0
        while i + k < len(query) and _contains(train, query[i : i + k + 1]):
            k += 1
        out.append(k)
    return out


def _contains(train, piece) -> bool:
    if isinstance(train, str):
        return piece in train
    return any(train[j : j + len(piece)] == piece for j in range(len(train) - len(piece) + 1))


def brute_longest(train: str, text: str) -> int:
    substrings = {train[a:b] for a in range(len(train)) for b in range(a + 1, len(train) + 1)}
    return max((b - a for a in range(len(text)) for b in range(a + 1, len(text) + 1) if text[a:b] in substrings),
               default=0)


def brute_fraction(train: str, text: str, n: int) -> float | None:
    grams = {train[j : j + n] for j in range(len(train) - n + 1)}
    mine = [text[i : i + n] for i in range(len(text) - n + 1)]
    return sum(g in grams for g in mine) / len(mine) if mine else None


def index_of(train: str) -> tuple[SuffixIndex, Vocab]:
    vocab = Vocab.from_text(train)
    ids = vocab.encode(train)
    return SuffixIndex(ids, suffix_array(ids)), vocab


# --- the suffix array -------------------------------------------------------------------------
@pytest.mark.parametrize("alphabet", [1, 2, 4, 300, 70_000])
def test_suffix_array_sorts_every_suffix(alphabet):
    for _ in range(30):
        ids = RNG.integers(0, alphabet, int(RNG.integers(1, 80)))
        expected = sorted(range(len(ids)), key=lambda j: ids[j:].tolist())
        assert suffix_array(ids).tolist() == expected
        assert suffixarray._prefix_doubling(ids).tolist() == expected


def test_numpy_fallback_without_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_divsufsort(name, *args, **kwargs):
        if name == "pydivsufsort":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    ids = RNG.integers(0, 5, 500)
    expected = suffix_array(ids)
    monkeypatch.setattr(builtins, "__import__", no_divsufsort)
    assert np.array_equal(suffix_array(ids), expected)
    assert len(suffix_array(np.zeros(0, dtype=np.int64))) == 0


# --- matching statistics ----------------------------------------------------------------------
@pytest.mark.parametrize("budget", [suffixarray._BUDGET, 1])  # 1: the comparisons in the narrowest steps
def test_matching_statistics_equal_brute_force_on_random_texts(monkeypatch, budget):
    monkeypatch.setattr(suffixarray, "_BUDGET", budget)
    for _ in range(200):
        sigma = int(RNG.integers(1, 5))
        train = RNG.integers(0, sigma, int(RNG.integers(1, 50))).tolist()
        query = RNG.integers(-1, sigma, int(RNG.integers(0, 30))).tolist()  # -1: not in the text
        if RNG.random() < 0.5:  # a passage copied from the training text
            a = int(RNG.integers(0, len(train)))
            query += train[a : a + int(RNG.integers(1, 40))]
        index = SuffixIndex(np.array(train), suffix_array(np.array(train)))
        ms, at = index.matching_statistics(np.array(query, dtype=np.int64))
        assert ms.tolist() == brute_matching(train, query)
        for i, (length, j) in enumerate(zip(ms.tolist(), at.tolist())):
            assert train[j : j + length] == query[i : i + length] if length else j == -1
        limit = int(RNG.integers(0, 6))
        capped, _ = index.matching_statistics(np.array(query, dtype=np.int64), limit=limit)
        assert capped.tolist() == np.minimum(ms, limit).tolist()


def test_a_long_copy_and_a_query_longer_than_the_text():
    train = "abracadabra, said the cat"
    index, vocab = index_of(train)
    ms, at = index.matching_statistics(query_ids(vocab, train + train))
    assert ms.tolist() == brute_matching(train, train + train)
    assert ms[0] == len(train) and at[0] == 0


# --- the figures ------------------------------------------------------------------------------
HAND_MADE = [
    ("the cat sat on the mat", "a cat sat on a hat"),
    ("naïve café — über straße, 東京へ行く", "über café 東京 naïve!"),  # non-ASCII
    ("abc", ""),  # an empty sample
    ("abc", "abcabcabcabcabcabcabc"),  # a sample longer than the text
    ("abcabc", "xyz"),  # no character of the sample in the text
    ("hello world", "hello, wörld"),  # some characters absent from the text
]


@pytest.mark.parametrize("train,text", HAND_MADE)
def test_novelty_equals_brute_force_on_hand_made_texts(train, text):
    check(train, text)


def test_novelty_equals_brute_force_on_random_texts():
    for _ in range(60):
        alphabet = "abé東 "[: int(RNG.integers(1, 6))]
        train = "".join(RNG.choice(list(alphabet), int(RNG.integers(1, 40))))
        text = "".join(RNG.choice(list(alphabet + "xz"), int(RNG.integers(0, 40))))
        check(train, text)


def check(train: str, text: str) -> None:
    index, vocab = index_of(train)
    got = measure(index, vocab, text, ns=(1, 2, 3, 4, 8, 16))
    assert got.chars == len(text)
    assert got.longest == brute_longest(train, text)
    if got.longest:
        assert got.longest_text == text[got.text_offset : got.text_offset + got.longest]
        assert train[got.train_offset : got.train_offset + got.longest] == got.longest_text
    else:
        assert (got.longest_text, got.text_offset, got.train_offset) == ("", -1, -1)
    for n in (1, 2, 3, 4, 8, 16):
        assert got.ngrams[n] == pytest.approx(brute_fraction(train, text, n)) if len(text) >= n \
            else got.ngrams[n] is None


def test_summary_line_and_json():
    index, vocab = index_of("to be or not to be, that is the question")
    got = measure(index, vocab, "to be or not to be, that is a puzzle")
    line = got.summary(8, {8: 0.25})
    assert line.startswith('longest copied 28 chars ("to be or not to be, that is ")')
    assert line.endswith("% of 8-grams in the training text (held-out text: 25.0 %)")
    assert json.loads(json.dumps(got.to_dict()))["ngrams"]["8"] == got.ngrams[8]
    assert measure(index, vocab, "xyz").summary(16) == "no character in the training text; too short for 16-grams"
    long = measure(index, vocab, "to be or not to be, that is the question\n").summary()
    assert long.startswith('longest copied 40 chars ("to be or not to be, that is the question")')
    assert measure(*index_of("ab\n" * 30), "ab\n" * 20).summary().startswith(
        'longest copied 60 chars ("' + "ab\\n" * 13 + 'a...")')


def test_documents_in_train_held_out_or_new():
    train, held_out = ["anna", "bob", "carl"], ["dora", "bob", "emil"]
    got = document_novelty(["anna", "bob", "dora", "zed", "zed", ""], train, held_out)
    assert (got.total, got.in_train, got.in_held_out, got.new) == (6, 2, 1, 3)  # train wins over held-out
    assert got.fractions()["new"] == pytest.approx(0.5)
    assert "6 documents: 2 (33.3 %) in the training set" in got.summary()
    assert document_novelty([], train, held_out).fractions() == {"in_train": None, "in_held_out": None, "new": None}


# --- the cache ---------------------------------------------------------------------------------
def test_cache_is_used_rebuilt_when_its_key_changes_and_when_damaged(tmp_path, monkeypatch):
    paths = tmp_path / "novelty.npy", tmp_path / "novelty.json"
    a = np.array([1, 2, 3, 1, 2, 0])
    index, record = open_index(*paths, {"corpus_sha256": "a"}, lambda: a, lambda i: {"held_out": 1})
    assert record["held_out"] == 1 and paths[0].exists()
    built = []
    real = suffixarray.suffix_array
    monkeypatch.setattr(suffixarray, "suffix_array", lambda ids: built.append(1) or real(ids))
    again, record = open_index(*paths, {"corpus_sha256": "a"}, lambda: a, lambda i: {"held_out": 2})
    assert not built and record["held_out"] == 1 and np.array_equal(again.sa, index.sa)
    b = np.array([3, 3, 0, 1])  # another corpus: rebuilt, and its answers are the new text's
    other, _ = open_index(*paths, {"corpus_sha256": "b"}, lambda: b)
    assert built == [1] and other.sa.tolist() == suffix_array(b).tolist()
    assert other.matching_statistics(np.array([3, 3, 0]))[0].tolist() == [3, 2, 1]
    raw = bytearray(paths[0].read_bytes())  # a damaged array: its checksum fails, rebuilt
    raw[-1] ^= 1
    paths[0].write_bytes(bytes(raw))
    open_index(*paths, {"corpus_sha256": "b"}, lambda: b)
    assert built == [1, 1]
    paths[1].write_text("{not json")
    open_index(*paths, {"corpus_sha256": "b"}, lambda: b)
    assert built == [1, 1, 1]


def test_a_cache_that_cannot_be_written_is_not_kept(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(suffixarray, "atomic_stream", refuse)
    index, _ = open_index(tmp_path / "n.npy", tmp_path / "n.json", {}, lambda: np.array([0, 1, 0]))
    assert index.sa.tolist() == [2, 0, 1] and not list(tmp_path.iterdir())


# --- a run -----------------------------------------------------------------------------------
CORPUS = ("ROMEO: café au lait, naïve one?\nJULIET: über alles — and yet, no.\n"
          "Thou art more lovely and more temperate. 東京.\n") * 8 + "The end is near, says the fool.\n" * 4


def train_run(tmp_path, corpus) -> str:
    out = tmp_path / "run"
    charnn.train(corpus=[str(corpus)], out=str(out), max_steps=4, progress=False,
                 **TINY_MODEL, **{**TINY_TRAIN, "eval_every": 2})
    return str(out)


@pytest.fixture
def run(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    return train_run(tmp_path, corpus)


def training_text(run_dir) -> str:
    n = json.loads(checkpoint.novelty_paths(run_dir)[1].read_text())["tokens"]
    return CORPUS[:n]


def test_run_novelty_against_its_training_split(run):
    text = "JULIET: über alles — and yet, no.\nThe end is near, Ω"
    got = charnn.novelty(run, text)
    train = training_text(run)
    assert len(train) == int(len(CORPUS) * 0.9)
    assert got.longest == brute_longest(train, text)
    assert got.ngrams[8] == pytest.approx(brute_fraction(train, text, 8))
    assert train[got.train_offset : got.train_offset + got.longest] == got.longest_text
    record = json.loads(checkpoint.novelty_paths(run)[1].read_text())
    held_out = CORPUS[len(train) :]
    assert record["held_out"]["chars"] == len(held_out)
    assert record["held_out"]["ngrams"]["16"] == pytest.approx(brute_fraction(train, held_out, 16))
    assert charnn.load(run).novelty(text) == got


def test_a_run_without_a_held_out_split_and_documents(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    out = tmp_path / "run"
    charnn.train(corpus=[str(corpus)], out=str(out), max_steps=2, progress=False, val_fraction=0.0,
                 **TINY_MODEL, **{**TINY_TRAIN, "eval_every": 2})
    index = open_novelty(out)
    assert index.held_out == {}
    assert index.summary(index.measure("The end is near")) == \
        'longest copied 15 chars ("The end is near"); too short for 16-grams'
    assert index.summary(index.measure("The end is near, says the fool.\n")) == \
        'longest copied 32 chars ("The end is near, says the fool.\\n"), 100.0 % of 16-grams in the training text'
    asked = []
    counts = run_document_novelty(out, ["anna", "zed"], lambda files: asked.append(files.path) or (["anna"], []))
    assert asked == [out] and (counts.in_train, counts.new) == (1, 1)


def test_a_changed_corpus_is_one_line(tmp_path, run):
    charnn.novelty(run, "ROMEO")
    (tmp_path / "corpus.txt").write_text(CORPUS + "more", encoding="utf-8")
    with pytest.raises(CharnnError, match="changed since it was trained, so the text it trained on is gone"):
        charnn.novelty(run, "ROMEO")


def test_a_run_on_a_prepared_corpus(tmp_path, run):
    corpus = tmp_path / "corpus.txt"
    assert main(["prepare", str(corpus), "--out", str(tmp_path / "prepared"), "--quiet"]) == 0
    (tmp_path / "p").mkdir()
    prepared_run = train_run(tmp_path / "p", tmp_path / "prepared")
    text = "Thou art more lovely, café 東京 and the fool"
    got = charnn.novelty(prepared_run, text)
    assert got == charnn.novelty(run, text)  # the same ids, the same split
    assert got.longest == brute_longest(training_text(run), text)


def test_cli_sample_novelty_and_jsonl(run, capsys):
    assert main(["sample", run, "--length", "60", "--seed", "3", "--num-samples", "2", "--novelty"]) == 0
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("novelty: ")]
    assert len(lines) == 2 and "% of 16-grams in the training text (held-out text: " in lines[0]
    assert main(["sample", run, "--length", "60", "--seed", "3", "--num-samples", "2", "--novelty",
                 "--format", "jsonl", "--prime", "ROMEO"]) == 0
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["sample"] for r in records] == [0, 1] and [r["seed"] for r in records] == [3, 4]
    model = charnn.load(run)
    for r in records:
        assert r["prime"] == "ROMEO" and r["text"] == model.generate("ROMEO", 60, seed=r["seed"])
        assert r["novelty"] == charnn.novelty(run, r["text"]).to_dict()
        assert set(r["novelty"]["ngrams"]) == {str(n) for n in NGRAMS}
    assert main(["sample", run, "--length", "5", "--seed", "3", "--format", "jsonl"]) == 0
    assert "novelty" not in json.loads(capsys.readouterr().out)


def test_cli_novelty_error_comes_before_any_text(tmp_path, run, capsys):
    os.unlink(tmp_path / "corpus.txt")
    assert main(["sample", run, "--length", "20", "--seed", "1", "--novelty"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "corpus" in err
