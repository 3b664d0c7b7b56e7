"""Fine-tuning (`charnn train NEW_TEXT --init-from RUN`): the vocabulary policies, the weight
surgery of --vocab extend for every core, the parent record, exact resume without the parent,
and every user error as one line."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import charnn
from charnn import checkpoint
from charnn.cli import main
from charnn.data.source import open_corpus
from charnn.data.vocab import END, START, UNK, Vocab, fine_tune_vocab, positions_in
from charnn.errors import CharnnError
from charnn.models import ModelConfig, build_model
from charnn.models.resize import remap_vocab
from charnn.train.config import FINETUNE_LR, FINETUNE_WARMUP, LR, WARMUP, resolve
from charnn.train.finetune import fine_tune_corpus, open_parent
from charnn.train.loop import Trainer
from conftest import TINY_MODEL, TINY_TEXT, TINY_TRAIN
from test_train import assert_identical

# New text: mostly the parent's characters, and some it never saw (digits, braces, 'z', '¿').
NEW_TEXT = ("ROMEO: ¿café? {no} 42 zebras, JULIET: 7 naïve über-ones.\n") * 30
NEW_CHARS = sorted(set(NEW_TEXT) - set(TINY_TEXT))
OLD_TEXT = "JULIET: no, and yet — café au lait?\nROMEO: über alles.\n"  # parent characters only


def tiny(**kw) -> dict:
    """Tiny training settings; a fine-tuned run's model settings are its parent's."""
    return {**TINY_TRAIN, "dtype": "float32", **kw}


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    root = tmp_path_factory.mktemp("texts")
    (root / "old.txt").write_text(TINY_TEXT, encoding="utf-8")
    (root / "new.txt").write_text(NEW_TEXT, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def parents(texts, tmp_path_factory):
    """Trained tiny parent runs, one per setting, made when first asked for."""
    made = {}

    def parent(**model) -> str:
        key = json.dumps(model, sort_keys=True)
        if key not in made:
            out = tmp_path_factory.mktemp("parent") / "run"
            charnn.train(corpus=[str(texts / "old.txt")], out=str(out), max_steps=12, progress=False,
                         **tiny(**{**TINY_MODEL, **model}))
            made[key] = out
        return str(made[key])

    return parent


def digests(run) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.iterdir())}


def start_weights(run) -> dict[str, torch.Tensor]:
    """The weights a fine-tuned run starts from: its first resume point, written before step 1."""
    return checkpoint.load_checkpoint(run).model


def log_probs(model, vocab: Vocab, text: str) -> torch.Tensor:
    ids = torch.as_tensor(vocab.encode(text))[None]
    with torch.no_grad():
        logits, _ = model.eval()(ids)
    return torch.log_softmax(logits[0].double(), -1)  # (T, V)


# --- the vocabulary ----------------------------------------------------------------------------
def test_fine_tune_vocab_keep_and_extend():
    parent = Vocab(("a", "c", "e"))
    assert fine_tune_vocab(parent, ["b", "c", "z"], "keep") is parent
    new = fine_tune_vocab(parent, ["b", "c", "z"], "extend")
    assert new.chars == ("a", "b", "c", "e", "z") and new.specials == (UNK,)
    assert positions_in(parent, new) == [0, 2, 3, 5]  # a, c, e, then <unk> after the 5 characters
    assert fine_tune_vocab(parent, ["a"], "extend") == parent  # nothing new: the same vocabulary
    docs = fine_tune_vocab(parent, ["b"], "extend", needed_specials=(UNK, START, END))
    assert docs.specials == (UNK, START, END) and positions_in(parent, docs)[-1] == docs.id_of(UNK)
    with pytest.raises(CharnnError, match=r"no document tokens <start>, <end>.*--vocab extend"):
        fine_tune_vocab(parent, ["b"], "keep", needed_specials=(UNK, START, END))


# --- the weight surgery, every core and input -------------------------------------------------
CORES = [
    {"model": "rnn"}, {"model": "lstm"}, {"model": "gru"},
    {"model": "rnn-scratch"}, {"model": "lstm-scratch"}, {"model": "gru-scratch"},
    {"model": "mingru"}, {"model": "minlstm"}, {"model": "mingru", "block": "plain"},
    {"model": "lstm", "input": "onehot"}, {"model": "gru-scratch", "input": "onehot"},
    {"model": "minlstm", "input": "onehot"}, {"model": "mingru", "block": "plain", "input": "onehot"},
]


def core_id(c: dict) -> str:
    return "-".join(str(v) for v in c.values())


@pytest.mark.parametrize("core", CORES, ids=core_id)
def test_remap_moves_every_token_slice_and_keeps_the_old_predictions(core):
    old = Vocab.from_text(TINY_TEXT)
    new = fine_tune_vocab(old, Vocab.from_text(NEW_TEXT).chars, "extend")
    assert len(new) == len(old) + len(NEW_CHARS)
    config = ModelConfig(hidden=12, embed=6, layers=2, vocab_size=len(old), **core)
    torch.manual_seed(0)
    parent = build_model(config)
    # Trained heads have spread-out biases; random ones are near 0. Spread them so the test means it.
    with torch.no_grad():
        parent.head.bias.copy_(torch.linspace(-3, 3, len(old)))
    child = build_model(ModelConfig(**{**config.to_dict(), "vocab_size": len(new)}))
    positions = positions_in(old, new)
    state = remap_vocab(parent.state_dict(), positions, child)
    child.load_state_dict(state)
    for name, axis in child.token_axes().items():  # old slices intact at their new positions
        moved = state[name].index_select(axis, torch.as_tensor(positions))
        assert torch.equal(moved, parent.state_dict()[name]), name
    for name, t in parent.state_dict().items():
        if name not in child.token_axes():
            assert torch.equal(state[name], t), name

    before, after = log_probs(parent, old, OLD_TEXT), log_probs(child, new, OLD_TEXT)[:, positions]
    # Over the parent's tokens the distribution is the parent's; the new tokens take almost nothing.
    assert torch.allclose(torch.log_softmax(after, -1), before, atol=1e-6)
    assert (before - after).abs().max() < 1e-3
    new_mass = 1 - after.exp().sum(-1)
    assert new_mass.max() < 1e-3


def test_remap_of_a_one_hot_residual_min_rnn_whose_input_was_the_stream():
    """vocab size == hidden: the parent has no input map (the identity); the child gets one."""
    old = Vocab(tuple("abcdefg"))  # 7 characters + <unk> = 8 = hidden
    new = fine_tune_vocab(old, ["x", "y"], "extend")
    config = ModelConfig(model="mingru", hidden=8, layers=1, input="onehot", vocab_size=len(old))
    torch.manual_seed(0)
    parent = build_model(config)
    assert parent.core.input_weight is None
    child = build_model(ModelConfig(**{**config.to_dict(), "vocab_size": len(new)}))
    positions = positions_in(old, new)
    child.load_state_dict(remap_vocab(parent.state_dict(), positions, child))
    before, after = log_probs(parent, old, "abcgfed"), log_probs(child, new, "abcgfed")[:, positions]
    assert torch.allclose(torch.log_softmax(after, -1), before, atol=1e-6)
    # The other way, the child's vocabulary as large as --hidden, has no place for the input map.
    big = build_model(ModelConfig(**{**config.to_dict(), "vocab_size": 6}))
    with pytest.raises(CharnnError, match="--vocab keep"):
        remap_vocab(big.state_dict(), list(range(6)), parent)


# --- end to end: the run --------------------------------------------------------------------------
@pytest.mark.parametrize("core", [{"model": m} for m in ("rnn", "lstm", "gru", "mingru", "minlstm")]
                         + [{"model": "gru", "input": "onehot"}], ids=core_id)
def test_fine_tuned_run_starts_with_the_parents_predictions(parents, texts, tmp_path, core):
    parent_dir = parents(**core)
    before = digests(type(tmp_path)(parent_dir))
    out = tmp_path / "ft"
    s = charnn.train(corpus=[str(texts / "new.txt")], init_from=parent_dir, out=str(out), max_steps=10,
                     progress=False, should_stop=lambda step: step == 0, **tiny())
    assert s.step == 0 and s.stop_reason == "interrupted"
    parent = charnn.load(parent_dir)
    files = checkpoint.read_run(out)
    assert files.vocab.chars == tuple(sorted(set(TINY_TEXT) | set(NEW_TEXT)))
    assert files.model_config.to_dict() == {**parent.config.to_dict(), "vocab_size": len(files.vocab)}
    child = build_model(files.model_config)
    child.load_state_dict(start_weights(out))
    positions = positions_in(parent.vocab, files.vocab)
    old, new = log_probs(parent.model, parent.vocab, OLD_TEXT), log_probs(child, files.vocab, OLD_TEXT)[:, positions]
    assert torch.allclose(torch.log_softmax(new, -1), old, atol=1e-6)
    # The new tokens take n_new e^b / Z: under 1 % even here, where the barely trained parents'
    # distributions are nearly flat (on a trained run far less: models/resize.py's measurement).
    assert (old - new).abs().max() < 1e-2
    assert digests(type(tmp_path)(parent_dir)) == before  # the parent is only read


def test_parent_record_defaults_and_the_parent_untouched(parents, texts, tmp_path):
    parent_dir = type(tmp_path)(parents())
    before = digests(parent_dir)
    out = tmp_path / "ft"
    seen = []

    def look(step: int) -> bool:  # before each step: the first resume point is there before step 1
        seen.append(checkpoint.load_checkpoint(out).trainer["step"] if step == 0 else step)
        return False

    s = charnn.train(corpus=[str(texts / "new.txt")], init_from=str(parent_dir), out=str(out), max_steps=6,
                     progress=False, should_stop=look, **tiny())
    assert s.step == 6 and seen[0] == 0
    config = json.loads((out / "config.json").read_text())
    info = charnn.load(parent_dir).info
    assert config["parent"] == {"path": str(parent_dir.resolve()),
                                "sha256": hashlib.sha256((parent_dir / "model.safetensors").read_bytes()).hexdigest(),
                                "step": info["step"]}
    assert (config["train"]["lr"], config["train"]["warmup"]) == (FINETUNE_LR, FINETUNE_WARMUP)
    assert FINETUNE_LR < LR
    assert digests(parent_dir) == before
    # The defaults of a run from scratch are untouched, and a flag given wins over both.
    _, cfg = resolve({"corpus": [str(texts / "new.txt")], "out": str(tmp_path / "x")})
    assert (cfg.lr, cfg.warmup) == (LR, WARMUP)
    _, cfg = resolve({"corpus": [str(texts / "new.txt")], "out": str(tmp_path / "y"), "init_from": str(parent_dir),
                      "lr": 3e-3, "warmup": 0, "dropout": 0.2})
    assert (cfg.lr, cfg.warmup) == (3e-3, 0)


def test_keep_reads_the_text_in_the_parents_vocabulary(parents, texts, tmp_path):
    parent_dir = parents()
    vocab = charnn.load(parent_dir).vocab
    settings = {"corpus": [str(texts / "new.txt")], "init_from": parent_dir, "vocab": "keep", **tiny()}
    with pytest.raises(CharnnError) as e:
        Trainer(*resolve({**settings, "out": str(tmp_path / "e")}), progress=False)
    assert f"{len(NEW_CHARS)} character(s) outside" in str(e.value) and "'¿'" in str(e.value)
    assert "--unknown skip" in str(e.value) and "--vocab extend" in str(e.value)
    assert not (tmp_path / "e").exists()
    known = "".join(c for c in NEW_TEXT if c not in NEW_CHARS)
    for unknown in ("skip", "replace"):
        _, cfg = resolve({**settings, "unknown": unknown, "out": str(tmp_path / unknown)})
        corpus = fine_tune_corpus(open_corpus(cfg.corpus), open_parent(cfg, None), cfg)
        assert corpus.vocab == vocab
        ids = np.concatenate([corpus.train_ids, corpus.val_ids])
        if unknown == "skip":
            assert vocab.decode(ids) == known
        else:
            assert len(ids) == len(NEW_TEXT) and vocab.decode(ids) == known
            assert np.count_nonzero(ids == vocab.id_of(UNK)) == len(NEW_TEXT) - len(known)
        s = charnn.train(out=str(tmp_path / unknown), unknown=unknown, max_steps=5, progress=False, **settings)
        assert s.step == 5 and checkpoint.read_run(tmp_path / unknown).vocab == vocab
        assert main(["eval", str(tmp_path / unknown), "--json"]) == 0  # its validation split, read the same way


# --- exact resume, without the parent ---------------------------------------------------------
def test_resume_is_bit_identical_and_never_needs_the_parent(parents, texts, tmp_path):
    parent_dir = tmp_path / "parent"
    shutil.copytree(parents(), parent_dir)
    settings = {"corpus": [str(texts / "new.txt")], "init_from": str(parent_dir), "max_steps": 25, **tiny()}
    charnn.train(out=str(tmp_path / "a"), progress=False, **settings)
    s = charnn.train(out=str(tmp_path / "b"), progress=False, should_stop=lambda step: step == 9, **settings)
    assert s.step == 9
    shutil.rmtree(parent_dir)
    s = charnn.train(resume=str(tmp_path / "b"), progress=False)
    assert s.step == 25
    assert_identical(tmp_path / "a", tmp_path / "b")


def test_killed_before_its_first_resume_point_restarts_from_an_unchanged_parent(parents, texts, tmp_path):
    parent_dir = tmp_path / "parent"
    shutil.copytree(parents(), parent_dir)
    settings = {"corpus": [str(texts / "new.txt")], "init_from": str(parent_dir), "max_steps": 15, **tiny()}
    charnn.train(out=str(tmp_path / "a"), progress=False, **settings)
    Trainer(*resolve({**settings, "out": str(tmp_path / "b")}), progress=False)  # made the run, then "died"
    assert not checkpoint.has_checkpoint(tmp_path / "b")
    s = charnn.train(resume=str(tmp_path / "b"), progress=False)
    assert s.step == 15
    assert_identical(tmp_path / "a", tmp_path / "b")

    Trainer(*resolve({**settings, "out": str(tmp_path / "c")}), progress=False)
    charnn.train(corpus=[str(texts / "old.txt")], out=str(tmp_path / "other"), max_steps=3, progress=False,
                 **tiny(**TINY_MODEL))
    shutil.copy(tmp_path / "other" / "model.safetensors", parent_dir / "model.safetensors")
    with pytest.raises(CharnnError, match=r"before its first resume point and its parent .* has changed"):
        charnn.train(resume=str(tmp_path / "c"), progress=False)


# --- the command line: eval, sample, and one line for every mistake --------------------------------
TINY_FLAGS = ["--hidden", "16", "--embed", "8", "--layers", "1", "--batch-size", "4", "--seq-len", "16",
              "--eval-every", "5", "--sample-chars", "0", "--dtype", "float32", "--quiet"]


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert err.startswith("charnn: error: ") and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err


def test_cli_fine_tunes_then_eval_and_sample_work(capsys, parents, texts, tmp_path):
    out = tmp_path / "ft"
    code, text, err = cli(capsys, "train", texts / "new.txt", "--init-from", parents(), "--out", out,
                          "--max-steps", 10, "--eval-every", 5, "--batch-size", 4, "--seq-len", 16, "--quiet",
                          "--sample-chars", 0)
    assert code == 0, err
    assert "10 steps (steps)" in text
    code, text, err = cli(capsys, "eval", out, "--json")
    assert code == 0 and json.loads(text)["chars"] > 0, err
    code, text, err = cli(capsys, "sample", out, "--prime", "¿{42", "--length", 30, "--seed", 1)
    assert code == 0 and text.startswith("¿{42") and len(text) == 4 + 30 + 1, err


def test_cli_errors_are_one_line(capsys, parents, texts, tmp_path):
    parent = parents()
    new = texts / "new.txt"
    code, _, err = cli(capsys, "train", new, "--init-from", tmp_path / "nothing", "--out", tmp_path / "o")
    assert_one_line(code, err, "--init-from", "does not exist")
    damaged = tmp_path / "damaged"
    shutil.copytree(parent, damaged)
    data = bytearray((damaged / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (damaged / "model.safetensors").write_bytes(bytes(data))
    code, _, err = cli(capsys, "train", new, "--init-from", damaged, "--out", tmp_path / "o", *TINY_FLAGS)
    assert_one_line(code, err, "--init-from", "checksum")
    code, _, err = cli(capsys, "train", new, "--init-from", parent, "--out", tmp_path / "o", "--hidden", "32")
    assert_one_line(code, err, "--hidden 32 conflicts", "hidden 16", "drop the flag")
    code, _, err = cli(capsys, "train", new, "--init-from", parent, "--vocab", "keep", "--out", tmp_path / "o",
                       "--max-steps", 3, "--quiet")
    assert_one_line(code, err, "outside the model's vocabulary", "'¿'", "--unknown skip", "--vocab extend")
    code, _, err = cli(capsys, "train", new, "--vocab", "keep", "--out", tmp_path / "o")
    assert_one_line(code, err, "--vocab keep only applies with --init-from")
    code, _, err = cli(capsys, "train", new, "--init-from", parent, "--unknown", "skip", "--out", tmp_path / "o")
    assert_one_line(code, err, "--unknown skip applies to --vocab keep")
    code, _, err = cli(capsys, "train", new, "--init-from", parent, "--preset", "quick", "--out", tmp_path / "o")
    assert_one_line(code, err, "--preset and --init-from")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_fine_tuning_under_torchrun_matches_one_process(parents, texts, tmp_path):
    """Every rank loads the parent and moves its weights; the collective first resume point,
    written by rank 0 alone, and the steps after it are those of one process."""
    from test_distributed import drive

    parent, run, one = parents(), tmp_path / "ddp", tmp_path / "one"
    flags = [str(texts / "new.txt"), "--init-from", parent, "--max-steps", "20", "--batch-size", "4",
             "--seq-len", "16", "--eval-every", "10", "--sample-chars", "0", "--dtype", "float32", "--quiet"]
    _, ranks = drive(tmp_path / "report", run, argv=["train", *flags, "--out", str(run)])
    assert [r["exit"] for r in ranks] == [0, 0] and ranks[1]["writes"] == []
    charnn.train(corpus=[str(texts / "new.txt")], init_from=parent, out=str(one), max_steps=20, progress=False,
                 **tiny())
    assert json.loads((run / "config.json").read_text())["parent"] == json.loads((one / "config.json").read_text())["parent"]
    w1, w2 = checkpoint.load_checkpoint(one).model, checkpoint.load_checkpoint(run).model
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=1e-5)


def test_fine_tune_a_text_run_on_documents(parents, texts, tmp_path, capsys):
    """A text parent fine-tuned on documents: extend adds <start>/<end> (and the new characters)
    with the old rows intact; keep refuses, naming the missing document tokens."""
    from charnn.cli import main

    names = tmp_path / "names.txt"
    names.write_text("\n".join(["romeo", "juliet", "tybalt", "zeb", "mercutio", "nurse"] * 20) + "\n",
                     encoding="utf-8")
    parent = parents()
    out = tmp_path / "docs"
    charnn.train(corpus=[str(names)], out=str(out), init_from=parent, documents="lines", max_steps=3,
                 progress=False, **{k: v for k, v in tiny().items() if k not in ("lr", "warmup")})
    files = checkpoint.read_run(out)
    assert files.vocab.has("<start>") and files.vocab.has("<end>") and files.vocab.has("z")
    assert json.loads((out / "config.json").read_text())["parent"]["path"] == str(Path(parent).resolve())
    assert main(["sample", str(out), "--num-samples", "3", "--seed", "0", "--length", "12"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert main(["train", str(names), "--init-from", parent, "--documents", "lines", "--vocab", "keep",
                 "--unknown", "skip", "--out", str(tmp_path / "keep"), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "<start>" in err and "--vocab extend" in err
