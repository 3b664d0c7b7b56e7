"""--transliterate ascii (the notebook's unidecode step) and the tutorial-shakespeare preset."""

import sys

import pytest

import charnn
from charnn.checkpoint import read_run
from charnn.cli import main
from charnn.data.corpus import read_corpus, transliterate_text
from charnn.errors import CharnnError
from charnn.train.config import resolve
from charnn.train.presets import preset_settings
from test_cli import assert_user_error


def test_ascii_transliteration(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("café — naïve Ωmega\n", encoding="utf-8")
    assert read_corpus([str(p)], transliterate="ascii").text == "cafe -- naive Omega\n"
    assert read_corpus([str(p)]).text == "café — naïve Ωmega\n"  # the default keeps the text
    with pytest.raises(CharnnError, match="--transliterate must be one of none, ascii"):
        read_corpus([str(p)], transliterate="latin")


def test_missing_unidecode_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "unidecode", None)  # makes `import unidecode` fail
    with pytest.raises(CharnnError, match=r"needs the unidecode package.*charnn\[ascii\]"):
        transliterate_text("café")
    assert transliterate_text("plain ascii") == "plain ascii"  # nothing to do: no import needed


def test_tutorial_shakespeare_preset_is_the_notebooks_setup():
    model, cfg = resolve({"preset": "tutorial-shakespeare", "out": "unused"})
    assert (model.model, model.layers, model.hidden, model.embed, model.input) == ("rnn", 2, 100, 70, "embedding")
    assert (cfg.batching, cfg.batch_size, cfg.seq_len, cfg.max_steps) == ("windows", 1, 199, 2000)
    assert (cfg.lr, cfg.warmup, cfg.min_lr_ratio, cfg.grad_clip, cfg.weight_decay) == (0.002, 0, 1.0, 0.0, 0.0)
    assert cfg.transliterate == "ascii" and cfg.dtype == "float32"
    assert preset_settings("tutorial-shakespeare")["max_steps"] == 2000


def test_transliterated_run_has_printable_vocabulary_and_samples(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("Ça va? Très bien — merci.\n" * 60, encoding="utf-8")
    out = tmp_path / "run"
    charnn.train(corpus=[str(corpus)], out=str(out), preset="tutorial-shakespeare", hidden=8, embed=4,
                 seq_len=16, max_steps=4, eval_every=2, sample_chars=0, progress=False)
    vocab = read_run(out).vocab
    assert all(vocab.has(c) for c in "bxyzQ{~\n") and not vocab.has("é")  # printable ASCII, no accents
    code = main(["sample", str(out), "--prime", "b", "--temperature", "0.8", "--length", "20", "--seed", "1"])
    assert code == 0 and capsys.readouterr().out.startswith("b")
    assert main(["eval", str(out), "--text", str(corpus)]) == 0  # scored transliterated, like training
    # The transliteration is part of the run: resuming with another setting is refused.
    code = main(["train", "--resume", str(out), "--transliterate", "none"])
    assert_user_error(code, capsys.readouterr().err, "--transliterate")
