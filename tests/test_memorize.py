"""The memorisation lab: charnn memorize (the notebook's experiments) and charnn capacity."""

import json
import math

import pytest
import torch

from charnn.errors import CharnnError
from charnn.files import read_jsonl
from charnn.lab.capacity import (
    CapacityConfig,
    capacity_of,
    corpus_slice,
    random_text,
    sweep,
)
from charnn.lab.memorize import (
    MemorizeConfig,
    char_accuracy,
    make_vocab,
    memorize,
    recall,
    resolve,
    sequence_loss,
    sliding_windows,
)
from charnn.models import ModelConfig, build_model
from test_cli import assert_user_error, run


# --- memorize ---------------------------------------------------------------------------------
def test_sliding_windows_cover_every_target_once_per_offset():
    seq = torch.arange(10)  # <start> t1 .. t8 <end>: 9 inputs
    x, y = sliding_windows(seq, 3)
    assert x.shape == y.shape == (3, 7)
    assert x[:, 0].tolist() == [0, 1, 2]  # window k starts at input k
    torch.testing.assert_close(y, x + 1)  # targets are the inputs shifted one ahead
    assert set(y.flatten().tolist()) == set(range(1, 10))  # every target, <end> included
    x1, y1 = sliding_windows(seq, 1)
    assert x1.tolist() == [list(range(9))] and y1.tolist() == [list(range(1, 10))]


def test_mse_is_squared_error_to_the_one_hot_target():
    logits = torch.randn(2, 3, 4)
    y = torch.tensor([[0, 1, 2], [3, 3, 0]])
    expected = ((logits - torch.eye(4)[y]) ** 2).mean()
    torch.testing.assert_close(sequence_loss(logits, y, "mse"), expected)
    torch.testing.assert_close(sequence_loss(logits, y, "ce"), torch.nn.functional.cross_entropy(logits.reshape(-1, 4), y.reshape(-1)))


def test_recall_follows_the_models_argmax_and_stops_at_end():
    vocab = make_vocab("ab")
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="rnn", vocab_size=len(vocab), hidden=4, layers=1, input="onehot"))
    end = vocab.id_of("<end>")
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0.0, 1.0, -1.0, 0.0]))  # always 'b'
    assert vocab.decode(recall(model, vocab, 5)) == "bbbbb"
    with torch.no_grad():
        model.head.bias[end] = 2.0  # always <end>: nothing recalled
    assert recall(model, vocab, 5) == [] and recall(model, vocab, 5, "raw") == []


@pytest.mark.parametrize("feedback,batch,loss", [("onehot", 1, "ce"), ("onehot", 3, "ce"), ("raw", 1, "mse")])
def test_first_exact_epoch_is_when_recall_became_exact(feedback, batch, loss):
    # Stopping at the first exact recall leaves a model whose real greedy recall is exact:
    # this checks the teacher-forced shortcut used with one-hot feedback against recall().
    cfg = MemorizeConfig(text="abracadabra!", cell="gru", hidden=16, epochs=400, feedback=feedback,
                         batch_size=batch, loss=loss, stop_when_exact=True)
    r = memorize(cfg)
    assert r.exact and r.recall == "abracadabra!" and r.char_accuracy == 1.0
    assert r.first_exact_epoch == r.epochs_run == len(r.loss_curve) > 0
    again = memorize(cfg)
    assert again.loss_curve == r.loss_curve  # the seed fixes everything


def test_char_accuracy_is_positional_and_counts_missing_characters():
    assert char_accuracy([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert char_accuracy([1, 2], [1, 2, 3, 4]) == 0.5  # cut short by <end>
    assert char_accuracy([2, 3, 4, 5], [1, 2, 3, 4]) == 0.0  # shifted by one: all wrong


def test_never_exact_is_none():
    r = memorize(MemorizeConfig(text="the quick brown fox", hidden=4, epochs=1, seed=3))
    assert not r.exact and r.first_exact_epoch is None and 0 <= r.char_accuracy < 1
    assert len(r.loss_curve) == 1 and r.params == sum(
        p.numel() for p in build_model(ModelConfig(model="lstm", vocab_size=r.vocab_size, hidden=4, layers=1, input="onehot")).parameters())


@pytest.mark.slow
def test_tutorial_rnn_fails_and_tutorial_lstm_recalls():
    rnn = memorize(resolve({"preset": "tutorial-rnn"}))
    assert rnn.config["cell"] == "rnn-scratch" and rnn.config["hidden"] == 35 and rnn.vocab_size == 35
    assert rnn.teacher_forced_accuracy == 1.0  # it learned every next character...
    assert not rnn.exact and rnn.char_accuracy < 0.6  # ...but cannot recite from its raw outputs
    assert rnn.recall.startswith("hello")
    lstm = memorize(resolve({"preset": "tutorial-lstm", "stop_when_exact": True}))
    assert lstm.exact and lstm.recall == "hello pytorch. how long can a rnn cell remember? show me your limit!"
    assert lstm.first_exact_epoch <= 1000


def test_memorize_cli_json(capsys):
    code, out, err = run(capsys, "memorize", "hello", "--cell", "rnn-scratch", "--hidden", 8,
                         "--epochs", 150, "--json")
    assert code == 0, err
    d = json.loads(out)
    assert {"recall", "exact", "char_accuracy", "first_exact_epoch", "params", "teacher_forced_accuracy",
            "loss_curve"} <= set(d)
    assert d["exact"] == (d["recall"] == "hello") and d["exact"] == (d["first_exact_epoch"] is not None)
    code, out, _ = run(capsys, "memorize", "hello", "--hidden", 8, "--epochs", 20)
    assert code == 0 and "memorising 5 characters" in out and "recall (greedy from <start>" in out
    assert out.count("loss") >= 10  # the loss curve


@pytest.mark.parametrize("argv,patterns", [
    (["memorize", ""], ["TEXT is empty"]),
    (["memorize"], ["TEXT is empty", "--preset"]),
    (["memorize", "hello!", "--alphabet", "helo"], ["outside --alphabet", "'!'"]),
    (["memorize", "hi", "--hidden", "0", "--layers", "-2", "--epochs", "0"],
     ["--hidden must be a positive integer, got 0", "--layers must be a positive integer, got -2", "--epochs"]),
    (["memorize", "hi", "--batch-size", "0"], ["--batch-size must be a positive integer"]),
    (["memorize", "hi", "--batch-size", "9"], ["--batch-size 9"]),
    (["memorize", "hi", "--input", "embedding", "--feedback", "raw"], ["--feedback raw", "--input onehot"]),
    (["memorize", "hi", "--lr", "-1"], ["--lr must be > 0"]),
    (["memorize", "--preset", "nope"], ["--preset must be one of", "tutorial-rnn"]),
    (["capacity", "--hidden", "4,0"], ["--hidden", "positive integers"]),
    (["capacity", "--lengths", "x"], ["--lengths", "positive integers"]),
    (["capacity", "--cells", "rnn,transformer", "--seeds", "0"], ["--cells", "'rnn,transformer'", "--seeds"]),
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, patterns):
    code, out, err = run(capsys, *argv, *(["--out", tmp_path / "c"] if argv[0] == "capacity" else []))
    assert_user_error(code, err, *patterns)
    assert not (tmp_path / "c").exists()


def test_capacity_corpus_too_short_is_reported_before_running(capsys, tmp_path):
    corpus = tmp_path / "short.txt"
    corpus.write_text("To be, or not to be: that is the question.\n" * 3)
    code, _, err = run(capsys, "capacity", "--lengths", "8,500", "--corpus", corpus, "--out", tmp_path / "c")
    assert_user_error(code, err, "--corpus has 129 characters", "--lengths 500")
    assert not (tmp_path / "c").exists()


def test_presets_set_the_notebooks_settings_and_flags_win():
    c = resolve({"preset": "tutorial-lstm-batch5", "epochs": 7})
    assert (c.cell, c.layers, c.hidden, c.loss, c.lr, c.batch_size, c.input) == ("lstm", 3, 35, "mse", 0.01, 5, "onehot")
    assert c.epochs == 7 and c.text.endswith("show me your limit!")
    assert len(make_vocab(c.text, c.alphabet)) == 35  # the notebook's 35-entry one-hot vectors
    with pytest.raises(CharnnError, match="unknown memorize setting"):
        resolve({"colour": "red"})


# --- capacity ---------------------------------------------------------------------------------
def test_texts_are_reproducible_prefixes():
    a, b = random_text(10, seed=1), random_text(30, seed=1)
    assert b.startswith(a) and set(b) <= set("abcdefghijklmnop") and random_text(30, seed=2) != b
    corpus = "".join(chr(65 + i % 26) for i in range(20_000))
    assert corpus_slice(corpus, 50, 3).startswith(corpus_slice(corpus, 20, 3))
    with pytest.raises(CharnnError, match="--corpus has"):
        corpus_slice("short", 10, 0)


def test_capacity_is_the_longest_length_exact_in_half_the_seeds():
    def rows(*exacts):
        return [{"exact": e} for e in exacts]

    assert capacity_of({8: rows(1, 1, 1), 16: rows(1, 0, 1), 32: rows(0, 0, 1)}) == 16
    assert capacity_of({8: rows(1, 0), 16: rows(0, 0)}) == 8  # half of 2 seeds counts
    assert capacity_of({8: rows(0, 0, 1)}) == 0
    assert capacity_of({8: rows(0, 0), 16: rows(1, 1)}) == 16  # not required to be monotone


def test_tiny_sweep_rows_resume_and_plot(tmp_path):
    out = tmp_path / "cap"
    config = CapacityConfig(cells=["rnn", "lstm"], hidden=[6], lengths=[4, 8], seeds=2, epochs=25, out=str(out))
    lines = []
    result = sweep(config, log=lines.append)
    rows = read_jsonl(out / "capacity.jsonl")
    assert result.ran == len(rows) == len(lines) == 2 * 2 * 2 * 2  # kinds x cells x lengths x seeds
    assert result.skipped == 0
    assert {(r["kind"], r["cell"], r["length"], r["seed"]) for r in rows} == {
        (k, c, L, s) for k in ("random", "text") for c in ("rnn", "lstm") for L in (4, 8) for s in (0, 1)}
    for r in rows:
        assert len(r["text"]) == r["length"] and r["exact"] == (r["recall"] == r["text"])
        assert r["exact"] == (r["first_exact_epoch"] is not None) and r["epochs_run"] <= 25
        if r["kind"] == "random":
            assert set(r["text"]) <= set("abcdefghijklmnop") and r["vocab_size"] == 18
    assert (out / "capacity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "capacity.md").read_text()
    assert "| random (4 bits/char) | rnn | 6 |" in table and "| natural | lstm | 6 |" in table

    # A rerun skips every finished run; a torn last line (a killed sweep) is run again.
    with open(out / "capacity.jsonl", "a") as f:
        f.write('{"kind": "random", "cell"')
    again = sweep(config, log=lines.append)
    assert again.ran == 0 and again.skipped == 16 and again.table == result.table
    wider = sweep(CapacityConfig(**{**config.__dict__, "lengths": [4, 8, 12], "kinds": ["random"]}), log=lines.append)
    assert wider.ran == 2 * 2 and wider.skipped == 2 * 2 * 2  # only length 12 is new
    assert len(read_jsonl(out / "capacity.jsonl")) == 20


def test_capacity_bits_per_parameter(tmp_path):
    from charnn.lab.capacity import summarize

    rows = [{"kind": "random", "cell": "rnn", "hidden": 4, "length": L, "seed": s, "exact": L <= 16,
             "params": 100, "source": "abcd", "char_accuracy": 1.0} for L in (8, 16, 32) for s in range(3)]
    [record] = summarize(rows)
    assert record["capacity"] == 16 and record["bits_per_param"] == pytest.approx(16 * math.log2(4) / 100)
    assert not record["capacity_is_lower_bound"]


def test_capacity_cli(capsys, tmp_path):
    code, out, err = run(capsys, "capacity", "--cells", "gru", "--hidden", 4, "--lengths", 4, "--kinds", "random",
                         "--seeds", 1, "--epochs", 5, "--out", tmp_path, "--quiet")
    assert code == 0, err
    assert "| random (4 bits/char) | gru | 4 |" in out and "1 runs now, 0 already" in out
