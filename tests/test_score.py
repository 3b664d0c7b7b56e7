"""charnn score: per-character surprisal that adds up to charnn eval's loss, positions that line
up with the text (non-ASCII included), outputs that stream, and every bad input one line."""

from __future__ import annotations

import html
import json
import math
import re

import numpy as np
import pytest
import torch

import charnn
from charnn.cli import main
from charnn.infer import score as score_module
from charnn.infer.score import WINDOW, ScoreConfig, Totals, score_chunks, score_file
from conftest import TINY_MODEL, TINY_TEXT

# Every kind of character whose offsets differ between code points, UTF-8 and UTF-16: 2-byte
# Latin, a combining mark, 3-byte CJK, 4-byte emoji (a surrogate pair in UTF-16), a ZWJ sequence.
UNICODE_TEXT = "Où est le café? e\u0301t\u00e9 日本語です 😀👍🏽 👨\u200d👩\u200d👧 fin.\n" * 30


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, out, err, *patterns):
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("charnn: error: ") and "Traceback" not in err, err
    for p in patterns:
        assert p in lines[0], (p, lines[0])


@pytest.fixture(scope="module")
def unicode_run(tmp_path_factory):
    """A run whose vocabulary holds every character of UNICODE_TEXT (a few steps: only the
    bookkeeping is tested on it, not its quality)."""
    root = tmp_path_factory.mktemp("unicode_run")
    corpus = root / "corpus.txt"
    corpus.write_text(UNICODE_TEXT, encoding="utf-8")
    charnn.train(corpus=[str(corpus)], out=str(root / "run"), max_steps=3, progress=False, batch_size=2,
                 seq_len=16, eval_every=3, sample_chars=0, **TINY_MODEL)
    return root / "run"


@pytest.fixture
def long_text(tmp_path):
    """Over two of score's windows, so window edges (and eval's chunk edges) are crossed."""
    path = tmp_path / "long.txt"
    path.write_text(TINY_TEXT[: 2 * WINDOW + 300], encoding="utf-8")
    assert len(path.read_text(encoding="utf-8")) > 2 * WINDOW + 1
    return path


# --- the total is charnn eval's ---------------------------------------------------------------
def test_totals_equal_eval_stateful_loss(capsys, tiny_run, long_text):
    code, out, _ = run(capsys, "eval", tiny_run, "--text", long_text, "--json")
    assert code == 0
    expected = json.loads(out)
    code, out, err = run(capsys, "score", tiny_run, long_text, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["chars"] == expected["chars"] == len(long_text.read_text(encoding="utf-8")) - 1
    assert doc["loss"] == pytest.approx(expected["loss"], rel=1e-9, abs=1e-12)
    assert doc["bpc"] == pytest.approx(expected["bpc"], rel=1e-9)
    assert doc["total_bits"] == pytest.approx(doc["total_nats"] / math.log(2))
    # The summary on stderr says the same, in eval's words.
    assert f"loss {expected['loss']:.4f} nats/char, {expected['bpc']:.4f} bits/char" in err
    # Each position's log-probability adds up to the total (to the rounding of 6 decimals each).
    scored = [p["logprob"] for p in doc["positions"] if p["logprob"] is not None]
    assert len(scored) == doc["chars"] and len(doc["positions"]) == doc["chars"] + 1
    assert -sum(scored) == pytest.approx(doc["total_nats"], abs=1e-6 * len(scored))


def test_unknown_skip_and_replace_agree_with_eval(capsys, tiny_run, tmp_path):
    f = tmp_path / "other.txt"
    f.write_text("ROMEO: ZQX café\n" * 5, encoding="utf-8")
    for policy in ("skip", "replace"):
        _, out, _ = run(capsys, "eval", tiny_run, "--text", f, "--unknown", policy, "--json")
        expected = json.loads(out)
        code, out, err = run(capsys, "score", tiny_run, f, "--unknown", policy, "--json")
        doc = json.loads(out)
        assert code == 0 and doc["chars"] == expected["chars"]
        assert doc["loss"] == pytest.approx(expected["loss"], rel=1e-9)
        assert (doc["skipped"], doc["replaced"]) == ((15, 0) if policy == "skip" else (0, 15))
        assert ("15 skipped" if policy == "skip" else "15 scored as <unk>") in err


def test_logprobs_are_the_models_log_softmax(tiny_run):
    """Computed here from CharLM's raw logits over the whole text in one pass."""
    model = charnn.load(tiny_run)
    text = TINY_TEXT[:300]
    doc = model.score(text, top=3)
    ids = torch.as_tensor(model.vocab.encode(text))
    with torch.no_grad():
        logits, _ = model.model(ids[None, :-1])
    lp = torch.log_softmax(logits[0].double(), dim=-1)  # (T - 1, V)
    positions = doc["positions"]
    assert positions[0]["logprob"] is None and positions[0]["top"] == []
    n_chars = len(model.vocab.chars)
    for j, p in enumerate(positions[1:], start=1):
        assert p["logprob"] == pytest.approx(float(lp[j - 1, ids[j]]), abs=2e-6)
        assert p["bits"] == pytest.approx(-p["logprob"] / math.log(2), abs=1e-4)
        best = torch.topk(lp[j - 1, :n_chars], 3)
        assert [c for c, _ in p["top"]] == [model.vocab.chars[i] for i in best.indices.tolist()]
        assert [q for _, q in p["top"]] == pytest.approx(best.values.exp().tolist(), abs=1e-6)


def test_reading_in_chunks_changes_nothing(tiny_run, long_text, monkeypatch):
    """A text cut into 7-byte pieces (through multi-byte characters) scores as one piece."""
    def scored(path):
        s = score_file(tiny_run, str(path), ScoreConfig())
        windows = list(s)
        return s.totals, np.concatenate([w.logprob for w in windows]), np.concatenate([w.offset for w in windows])

    long_text.write_text(TINY_TEXT[:2500], encoding="utf-8")  # é, ï, ü, —: cut by 7-byte reads
    whole = scored(long_text)
    monkeypatch.setattr(score_module, "READ_BYTES", 7)
    pieces = scored(long_text)
    assert pieces[0].nats == whole[0].nats and pieces[0].chars == whole[0].chars == 2499
    np.testing.assert_array_equal(pieces[1], whole[1])
    np.testing.assert_array_equal(pieces[2], np.arange(2500))


def test_windows_come_before_the_text_is_read(tiny_run):
    """Memory stays flat: a window is handed on as soon as its characters are read."""
    model = charnn.load(tiny_run)
    taken = []

    def chunks():
        for i in range(50):
            taken.append(i)
            yield TINY_TEXT[:500]

    totals = Totals()
    windows = score_chunks(model.model, model.vocab, chunks(), 2, "error", totals)
    first = next(windows)
    assert len(first) == WINDOW + 1 and len(taken) == 3  # 1,500 characters read for 1,025 positions
    rest = list(windows)
    assert sum(len(w) for w in rest) + len(first) == 50 * 500 and totals.chars == 50 * 500 - 1


# --- positions line up with the text ----------------------------------------------------------
def test_jsonl_offsets_line_up_with_non_ascii_text(capsys, unicode_run, tmp_path):
    f = tmp_path / "u.txt"
    f.write_text(UNICODE_TEXT, encoding="utf-8")
    code, out, err = run(capsys, "score", unicode_run, f, "--top", "2")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    text = UNICODE_TEXT
    u8, u16 = text.encode("utf-8"), text.encode("utf-16-le")
    assert len(rows) == len(text) and "".join(r["char"] for r in rows) == text
    for r in rows:
        c = r["char"]
        assert text[r["i"]] == c
        assert u8[r["utf8"] : r["utf8"] + len(c.encode("utf-8"))] == c.encode("utf-8")
        assert u16[2 * r["utf16"] : 2 * r["utf16"] + len(c.encode("utf-16-le"))] == c.encode("utf-16-le")
        assert len(r["top"]) == (2 if r["i"] else 0)
    assert rows[-1]["utf8"] == len(u8) - 1 and rows[-1]["utf16"] == len(u16) // 2 - 1


def test_every_output_tells_the_same_positions(capsys, unicode_run, tmp_path):
    """JSON lines, the JSON document and CharModel.score (the Python API) agree, number for number."""
    text = UNICODE_TEXT[:400] + "ZQ<&>\"\\"  # with characters scored as <unk> and JSON's escapes
    f = tmp_path / "u.txt"
    f.write_text(text, encoding="utf-8")
    _, out, _ = run(capsys, "score", unicode_run, f, "--unknown", "replace", "--top", "4")
    lines = [json.loads(line) for line in out.splitlines()]
    _, out, _ = run(capsys, "score", unicode_run, f, "--unknown", "replace", "--top", "4", "--json")
    doc = json.loads(out)
    api = charnn.load(unicode_run).score(text, top=4, unknown="replace")
    assert lines == doc["positions"] == api["positions"]
    assert {k: v for k, v in doc.items() if k not in ("positions", "run", "text")} == {
        k: v for k, v in api.items() if k != "positions"}
    assert doc["replaced"] == 7 and doc["run"] == str(unicode_run) and doc["text"] == str(f)


def test_skipped_characters_keep_the_offsets_of_the_text(capsys, tiny_run, tmp_path):
    text = "ROMEO 😀 e\u0301 日本: café\n"
    f = tmp_path / "u.txt"
    f.write_text(text, encoding="utf-8")
    code, out, _ = run(capsys, "score", tiny_run, f, "--unknown", "skip")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [text[r["i"]] for r in rows] == [r["char"] for r in rows]
    assert "".join(r["char"] for r in rows) == "ROMEO  e : café\n"
    u8 = text.encode("utf-8")
    assert all(u8[r["utf8"] : r["utf8"] + len(r["char"].encode())] == r["char"].encode() for r in rows)


# --- the HTML page ----------------------------------------------------------------------------
def test_html_page_is_self_contained_and_holds_the_text(capsys, unicode_run, tmp_path):
    f = tmp_path / "u.txt"
    f.write_text(UNICODE_TEXT[:200] + "<b>&amp;\"'</b>", encoding="utf-8")
    code, out, err = run(capsys, "score", unicode_run, f, "--html", tmp_path / "page.html", "--unknown", "replace")
    assert code == 0 and out == "" and "page.html" in err  # --html alone: stdout stays quiet
    page = (tmp_path / "page.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert not re.search(r"""(src|href)\s*=|url\(|@import""", page)  # no external asset
    spans = re.findall(r'<span class="(b\d|first)" title="([^"]*)">(.*?)</span>\n?', page, re.S)
    text = "".join("\n" if "↵" in body else html.unescape(body) for _, _, body in spans)
    assert text == f.read_text(encoding="utf-8")
    tips = [html.unescape(t) for _, t, _ in spans]
    assert "not scored" in tips[0] and all("p = " in t and "most likely:\n1. " in t for t in tips[1:])
    assert tips[1].count("\n") == 6  # the probability, a heading and the 5 most likely
    doc_bpc = re.search(r"<b>([\d.]+) bits/char</b>", page).group(1)
    assert f"{doc_bpc} bits/char" in err
    # With --json too, the document goes to stdout beside the page.
    code, out, _ = run(capsys, "score", unicode_run, f, "--html", tmp_path / "p2.html", "--json",
                       "--unknown", "replace")
    assert code == 0 and json.loads(out)["chars"] == len(f.read_text(encoding="utf-8")) - 1


# --- bad input: one line, exit 2, nothing on stdout -------------------------------------------
@pytest.mark.parametrize("content, argv, patterns", [
    (b"", [], ["the corpus is empty", "some text"]),
    (bytes(range(256)) * 4, [], ["not valid utf-8 at byte offset 128", "--encoding"]),
    ("ROMEO: ZQX 😀\n".encode(), [], ["4 character(s) outside the model's vocabulary", "'Q'", "'😀'",
                                      "--unknown skip"]),
    (b"R", [], ["needs at least 2"]),
    (b"ZZZQ", ["--unknown", "skip"], ["has 0 character(s)", "needs at least 2"]),
    (b"ROMEO", ["--top", "-1"], ["--top must be >= 0"]),
    (b"ROMEO", ["--html", "/nonexistent-dir/p.html"], ["--html", "does not exist"]),
    (b"ROMEO", ["--encoding", "klingon"], ["--encoding 'klingon' is not a known"]),
])
def test_bad_input_is_one_line(capsys, tiny_run, tmp_path, content, argv, patterns):
    f = tmp_path / "input.bin"
    f.write_bytes(content)
    code, out, err = run(capsys, "score", tiny_run, f, *argv)
    assert_user_error(code, out, err, *patterns)


def test_two_characters_are_enough(capsys, tiny_run, tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("ZZ R", encoding="utf-8")
    code, out, _ = run(capsys, "score", tiny_run, f, "--unknown", "skip")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [(r["i"], r["char"], r["logprob"] is None) for r in rows] == [(2, " ", True), (3, "R", False)]


def test_missing_file_and_run(capsys, tiny_run, tmp_path):
    code, out, err = run(capsys, "score", tiny_run, tmp_path / "nope.txt")
    assert_user_error(code, out, err, "does not exist")
    code, out, err = run(capsys, "score", tmp_path / "norun", tmp_path / "nope.txt")
    assert_user_error(code, out, err, "does not exist")
    code, out, err = run(capsys, "score", tiny_run, tmp_path, "--html", tmp_path)
    assert_user_error(code, out, err, "is a directory")
