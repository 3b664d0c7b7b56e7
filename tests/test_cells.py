"""charnn cells: it finds units planted to track a feature, records what the model computes, and
fails on bad input with one line."""

import json
import random

import numpy as np
import pytest
import torch

from charnn import checkpoint
from charnn.cli import main
from charnn.data.source import open_corpus
from charnn.evaluate import evaluate_ids
from charnn.lab.cells import CellsConfig, analyse, compare
from charnn.lab.record import record_units
from charnn.lab.report import format_table, to_json, write_html
from charnn.models import ModelConfig, build_model

BIG = 30.0  # sigmoid(30) = 1 and sigmoid(-30) = 0 in float32, to within 1e-13


def planted_text(seed: int = 0, lines: int = 160) -> str:
    """Lines of a-b-c words of random lengths, with brackets (nested up to 2, across lines) and stops."""
    rng = random.Random(seed)
    out, depth = [], 0
    for _ in range(lines):
        line = []
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            if r < 0.15 and depth < 2:
                line.append("(")
                depth += 1
            elif r < 0.3 and depth > 0:
                line.append(")")
                depth -= 1
            line.append("".join(rng.choice("abc") for _ in range(rng.randint(1, 6))))
            line.append(rng.choice([" ", " ", ". "]))
        out.append("".join(line).rstrip())
    return "\n".join(out) + ")" * depth + "\n"


def plant(model, vocab) -> None:
    """Set a one-layer one-hot LSTM's units 0, 1, 2 by hand so that their cells c hold, exactly:
    0: the column (tanh(1/2) per character, reset by a newline), 1: the bracket depth
    (+1 on "(", -1 on ")"), 2: +1 inside a word, -1 outside. Their h is ~0 (output gate shut)."""
    H = model.config.hidden
    rnn = model.core.rnn
    W, b, Wh, bh = rnn.weight_ih_l0, rnn.bias_ih_l0, rnn.weight_hh_l0, rnn.bias_hh_l0
    i, f, g, o = (slice(k * H, (k + 1) * H) for k in range(4))  # torch's gate order
    chars = list(vocab.chars)
    with torch.no_grad():
        for u in range(3):
            for gate in (i, f, g, o):
                row = gate.start + u
                Wh[row] = 0
                b[row] = bh[row] = 0
                W[row] = -BIG if gate is o else 0
        for cid, ch in enumerate(chars):
            newline, word = ch == "\n", ch.isalnum()
            W[i.start + 0, cid] = W[f.start + 0, cid] = -BIG if newline else BIG
            W[g.start + 0, cid] = 0.5
            W[f.start + 1, cid] = BIG
            W[i.start + 1, cid] = BIG if ch in "()" else -BIG
            W[g.start + 1, cid] = BIG if ch == "(" else -BIG
            W[f.start + 2, cid], W[i.start + 2, cid] = -BIG, BIG
            W[g.start + 2, cid] = BIG if word else -BIG


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A run directory whose model has the planted units, trained on nothing; its corpus: planted_text()."""
    root = tmp_path_factory.mktemp("planted")
    corpus_path = root / "corpus.txt"
    corpus_path.write_text(planted_text(), encoding="utf-8")
    corpus = open_corpus([str(corpus_path)], val_fraction=0.5)
    config = ModelConfig(model="lstm", vocab_size=len(corpus.vocab), hidden=8, layers=1, input="onehot")
    torch.manual_seed(0)
    model = build_model(config)
    plant(model, corpus.vocab)
    run = root / "run"
    checkpoint.create_run(run, config, {"corpus": [str(corpus_path)], "val_fraction": 0.5}, corpus.vocab,
                          corpus.record)
    checkpoint.save_weights(run, model, corpus.vocab, {"step": 0, "val_loss": None})
    return run


def test_cells_finds_the_planted_units(planted, tmp_path):
    result = analyse(planted, CellsConfig(ngram=4, html=str(tmp_path / "cells.html")))
    rows = {r.name: r for r in result.features}
    for feature, unit in (("column", "layer 1 c 0"), ("bracket_depth", "layer 1 c 1"), ("in_word", "layer 1 c 2")):
        assert rows[feature].unit == unit, (feature, rows[feature])
        assert rows[feature].measure.r > 0.9999, (feature, rows[feature].measure)
    assert rows["column"].measure.probe > 0.999 and rows["bracket_depth"].measure.probe > 0.999
    assert rows["in_word"].measure.probe == 1.0
    assert rows["in_quote"].unit is None and rows["in_quote"].measure.probe is None  # no quotes in the text
    assert result.units == 16 and result.groups == [("layer 1 h", 8), ("layer 1 c", 8)]
    table = format_table(result)
    assert "layer 1 c 0" in table and "4-gram" in table
    # The n-gram comparison scores the same characters, closers grouped by their distance.
    g = result.ngram
    assert g.scored == result.chars - 1 and len(g.bits) == 4 and 1 <= g.best <= 4
    text = result.text
    assert sum(row["count"] for row in g.closers["brackets"][:-1]) == text.count(")")
    assert sum(row["count"] for row in g.closers["newlines"][:-1]) == text.count("\n") - 1
    assert g.closers["quotes"] == []
    write_html(result, tmp_path / "cells.html")
    page = (tmp_path / "cells.html").read_text(encoding="utf-8")
    assert page.count("<pre>") == 4  # column, since_stop, in_word, bracket_depth (indent and quotes constant)
    assert "layer 1 c 1" in page and "http" not in page and "<script" not in page


def test_cells_cli_json_and_html(planted, tmp_path, capsys):
    out = tmp_path / "cells.html"
    assert main(["cells", str(planted), "--json", "--ngram", "3", "--html", str(out), "--held-out", "0.4"]) == 0
    doc = json.loads(capsys.readouterr().out)
    column = next(f for f in doc["features"] if f["name"] == "column")
    assert column["unit"] == "layer 1 c 0" and column["r"] > 0.9999
    assert doc["split"] == round(doc["chars"] * 0.6) and len(doc["ngram"]["bits"]) == 3
    assert out.is_file()
    assert doc == to_json(analyse(planted, CellsConfig(ngram=3, held_out=0.4)))


def test_recording_in_streams_equals_one_pass_and_eval(planted):
    model = checkpoint.load_run(planted).model
    corpus = open_corpus([str(checkpoint.read_run(planted).train["corpus"][0])], val_fraction=0.5)
    ids = corpus.train_ids
    one = record_units(model, ids, 1)
    four = record_units(model, ids, 4, warmup=100, chunk=64)
    # Every unit but the planted bracket counter (c 1, column 9) forgets its past within the
    # warm-up; that one never does (the point of it), so a segment cannot recover its start.
    others = [k for k in range(one.units.shape[1]) if k != 9]
    np.testing.assert_allclose(four.units[:, others], one.units[:, others], rtol=0, atol=1e-5)
    np.testing.assert_allclose(four.losses[1:], one.losses[1:], rtol=0, atol=1e-5)
    assert np.isnan(one.losses[0]) and np.isfinite(one.losses[1:]).all()
    expected = evaluate_ids(model, ids, "stateful").loss
    assert one.losses[1:].mean() == pytest.approx(expected, rel=1e-6)


def test_compare_buckets_closers_by_distance():
    n = 200
    rnn, ngram = np.full(n, 1.0), np.stack([np.full(n, 3.0), np.full(n, 2.0)])
    pairs = np.array([[0, 5], [10, 40], [50, 60], [0, 199]])
    report = compare(rnn, ngram, {"brackets": pairs, "quotes": np.zeros((0, 2), dtype=int)}, "x" * n, 1000)
    assert report.best == 2 and report.bits == pytest.approx([3 / np.log(2), 2 / np.log(2)])
    counts = {row["distance"]: row["count"] for row in report.closers["brackets"]}
    assert counts == {"1-10": 2, "11-20": 0, "21-40": 1, "41-80": 0, "81-160": 0, "> 160": 1, "> 20 (all)": 2}
    assert report.closers["quotes"] == []


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("charnn: error: ")
    return err


def test_bad_input_is_one_line(planted, tmp_path, capsys):
    run = str(planted)
    binary = tmp_path / "data.bin"
    binary.write_bytes(b"ab\x00\x01\x02" * 100)
    assert "binary" in _error(capsys, ["cells", run, str(binary)])
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert "empty" in _error(capsys, ["cells", run, str(empty)])
    foreign = tmp_path / "foreign.txt"
    foreign.write_text("abc (ab) cab. Zürich\n" * 20, encoding="utf-8")
    err = _error(capsys, ["cells", run, str(foreign)])
    assert "outside the model's vocabulary" in err and "--unknown" in err
    assert main(["cells", run, str(foreign), "--unknown", "skip", "--ngram", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["chars"] == len("abc (ab) cab. c\n") * 20  # Z, ü, r, i, h dropped
    short = tmp_path / "short.txt"
    short.write_text("abc\n", encoding="utf-8")
    assert "at least 100 characters" in _error(capsys, ["cells", run, str(short)])
    assert "--html" in _error(capsys, ["cells", run, "--html", str(tmp_path / "no" / "such.html")])
    assert "--ngram" in _error(capsys, ["cells", run, "--ngram", "99"])
    assert "does not exist" in _error(capsys, ["cells", str(tmp_path / "nothing")])


def test_a_run_whose_corpus_is_gone(planted, tmp_path, capsys):
    import shutil

    run = tmp_path / "moved"
    shutil.copytree(planted, run)
    config = json.loads((run / "config.json").read_text())
    config["train"]["corpus"] = [str(tmp_path / "gone.txt")]
    (run / "config.json").write_text(json.dumps(config))
    text = tmp_path / "text.txt"
    text.write_text(planted_text(seed=3), encoding="utf-8")
    assert "pass the text to analyse as CORPUS" in _error(capsys, ["cells", str(run)])
    assert "--ngram 0" in _error(capsys, ["cells", str(run), str(text)])
    assert main(["cells", str(run), str(text), "--ngram", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ngram"] is None
