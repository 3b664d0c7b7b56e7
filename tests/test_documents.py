"""Documents below the run: cutting a corpus into documents, the held-out split, the ids, the
documents layout and its scoring. No state may cross a document boundary: checked on the
trainer's own step against each document scored alone."""

import numpy as np
import pytest
import torch

from charnn.data.docbatches import PAD_TARGET, DocumentBatches, document_windows
from charnn.data.documents import (
    SPECIALS,
    DocSpec,
    DocumentSet,
    documents_vocab,
    held_out,
    problems,
    read_documents,
    split_text,
)
from charnn.data.vocab import END, START, UNK
from charnn.errors import CharnnError
from charnn.evaluate import evaluate_documents
from charnn.models import ModelConfig, build_model
from charnn.models.lm import IGNORE, char_loss
from charnn.train.config import resolve
from charnn.train.loop import Trainer

NAMES = ["ann", "bob", "emma", "al", "christopher", "eve", "jo", "maximilian", "ida", "sue", "x"]


def docs_of(texts, extra=""):
    vocab = documents_vocab(texts, extra)
    return vocab, DocumentSet.encode(texts, vocab)


# --- cutting a corpus into documents -----------------------------------------------------------
def test_formats_cut_documents_and_count_the_empty_ones():
    lines = DocSpec("lines")
    assert split_text("ann\r\nbob\n\n  \ncy\n", lines, "f") == (["ann", "bob", "cy"], 2)
    assert split_text("ann\nbob", lines, "f") == (["ann", "bob"], 0)  # no newline at the end
    blank = DocSpec("blank")
    poem = "\n\nroses are red\nviolets blue\n\n\n  \nsugar is sweet\n\n"
    assert split_text(poem, blank, "f") == (["roses are red\nviolets blue", "sugar is sweet"], 0)
    sep = DocSpec("sep", sep=r"\n---\n")
    assert split_text("one\n---\ntwo\nlines\n---\n\n---\nthree\n---\n", sep, "f") == (
        ["one", "two\nlines", "three"], 1)
    jsonl = DocSpec("jsonl", field="body")
    text = '{"body": "a\\nb", "n": 1}\n\n{"body": ""}\n{"body": "c"}\n'
    assert split_text(text, jsonl, "f") == (["a\nb", "c"], 1)


@pytest.mark.parametrize("line, message", [
    ("[1, 2]", r"f line 2 is a JSON list, not an object"),
    ('{"title": "x"}', r"f line 2 has no 'text' field \(its fields: 'title'\).*--doc-field"),
    ('{"text": 3}', r"f line 2: 'text' is a JSON int, not a string"),
    ("{text", r"f line 2 is not valid JSON"),
])
def test_jsonl_problems_are_one_line_naming_file_and_line(line, message):
    with pytest.raises(CharnnError, match=message):
        split_text('{"text": "ok"}\n' + line + "\n", DocSpec("jsonl"), "f")


def test_files_are_cut_one_by_one_and_an_empty_set_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text("ann\nbob")  # no newline: must not run into c.txt's first line
    (tmp_path / "c.txt").write_text("cy\n\n")
    corpus = read_documents([str(tmp_path)], "utf-8", "strict", "none", DocSpec("lines"))
    assert corpus.texts == ["ann", "bob", "cy"] and corpus.empty == 1
    (tmp_path / "e.txt").write_text("\n \n\n")
    with pytest.raises(CharnnError, match=r"--documents lines found no document in .*e.txt \(3 empty dropped\)"):
        read_documents([str(tmp_path / "e.txt")], "utf-8", "strict", "none", DocSpec("lines"))


def test_settings_that_do_not_fit_together():
    assert problems("none", "", "text", 0) == [] and problems("sep", r"\n\n", "text", 0) == []
    assert "--documents sep needs --doc-sep" in problems("sep", "", "text", 0)[0]
    assert "--doc-sep applies to --documents sep" in problems("lines", "x", "text", 0)[0]
    assert "--doc-field applies to --documents jsonl" in problems("lines", "", "body", 0)[0]
    assert "--val-docs counts documents" in problems("none", "", "text", 5)[0]
    assert "unknown escape \\q" in problems("sep", r"\q", "text", 0)[0]


# --- the held-out split ---------------------------------------------------------------------------
def _splitmix64(x: int) -> int:
    """SplitMix64's output function in Python integers, the reference for numpy's uint64 version."""
    m = 2**64 - 1
    x = (x + 0x9E3779B97F4A7C15) & m
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    return x ^ (x >> 31)


@pytest.mark.parametrize("seed", [0, 1337, 2**63 - 1])
def test_held_out_is_the_lowest_ranked_by_splitmix64(seed):
    n = 200
    base = _splitmix64(seed)
    keys = [_splitmix64((base + i) % 2**64) for i in range(n)]
    expected = sorted(sorted(range(n), key=lambda i: keys[i])[:20])
    assert held_out(n, 0.1, 0, seed).tolist() == expected


def test_held_out_count_seed_and_pinned_values():
    assert len(held_out(32032, 0.1, 0, 3)) == 3203  # int(n * fraction), as makemore's int(len * 0.1)
    assert len(held_out(32032, 0.1, 1000, 3)) == 1000  # --val-docs: exactly that many
    assert len(held_out(9, 0.1, 0, 3)) == 0
    assert held_out(50, 0.1, 0, 1).tolist() != held_out(50, 0.1, 0, 2).tolist()
    # Pinned: a run evaluated or resumed on another machine or numpy version re-derives its split.
    assert held_out(30, 0.1, 0, 1337).tolist() == PINNED
    with pytest.raises(CharnnError, match=r"--val-docs 5 holds out 5 of the corpus's 5 documents"):
        held_out(5, 0.1, 5, 0)


PINNED = [4, 12, 24]


# --- ids -----------------------------------------------------------------------------------------
def test_documents_are_start_chars_end_and_the_vocabulary_ends_with_the_specials():
    vocab, docs = docs_of(["ab", "", "ba"])
    assert vocab.specials == SPECIALS == (UNK, START, END) and vocab.chars == ("a", "b")
    s, e = vocab.id_of(START), vocab.id_of(END)
    assert docs.ids.tolist() == [s, 0, 1, e, s, e, s, 1, 0, e]
    assert docs.starts.tolist() == [0, 4, 6] and docs.lengths.tolist() == [2, 0, 2]
    assert docs.targets == 2 + 1 + 0 + 1 + 2 + 1
    skipped = DocumentSet.encode(["azb"], vocab, "skip")
    assert skipped.lengths.tolist() == [2] and skipped.ids.tolist() == [s, 0, 1, e]
    with pytest.raises(CharnnError, match=r"1 character\(s\) outside.*'z'"):
        DocumentSet.encode(["azb"], vocab)


# --- the documents layout ------------------------------------------------------------------------
def rows_of(batch):
    """Each row's (inputs, targets) at its valid positions."""
    for x, y in zip(batch.x.tolist(), batch.y.tolist()):
        keep = [i for i, t in enumerate(y) if t != PAD_TARGET]
        yield [x[i] for i in keep], [y[i] for i in keep]


def segments(batches):
    """What each row read from each reset on: the sequences of its inputs and targets."""
    out, current = [], None
    for b in batches:
        if b.reset:
            if current:
                out.extend(current)
            current = [([], []) for _ in range(b.x.shape[0])]
        for (xs, ys), (x, y) in zip(current, rows_of(b)):
            xs += x
            ys += y
    out.extend(current)
    return [s for s in out if s[0]]


def test_an_epoch_reads_every_document_once_each_row_one_document():
    vocab, docs = docs_of(NAMES)
    b = DocumentBatches(docs, batch_size=3, seq_len=4, seed=5)
    epoch = [b.next() for _ in range(b.steps_per_epoch)]
    wrapped = {tuple(docs.ids[s : s + n + 2].tolist()) for s, n in zip(docs.starts, docs.lengths)}
    seen = []
    for xs, ys in segments(epoch):
        assert xs[0] == vocab.id_of(START) and ys[-1] == vocab.id_of(END)  # one whole document...
        assert vocab.id_of(START) not in xs[1:] and vocab.id_of(END) not in ys[:-1]  # ...and only one
        assert xs[1:] == ys[:-1]
        seen.append(tuple(xs + ys[-1:]))
    assert sorted(seen) == sorted(wrapped)  # every document, once
    assert sum(int((e.y != PAD_TARGET).sum()) for e in epoch) == docs.targets
    # Windows are as wide as the longest row still reading, at most T; a group's rows are of
    # about one length, so names are mostly not padding.
    assert all(1 <= e.x.shape[1] <= 4 for e in epoch)
    assert sum((e.y != PAD_TARGET).float().mean() for e in epoch) / len(epoch) > 0.7
    # The next epoch: another order, the same number of steps.
    assert b.next().reset and b.epoch == 1
    again = [b.next() for _ in range(b.steps_per_epoch - 1)]
    assert [e.x.tolist() for e in again] != [e.x.tolist() for e in epoch[1:]]


def test_documents_layout_resumes_exactly_and_ranks_split_each_group():
    _, docs = docs_of(NAMES * 3)
    a = DocumentBatches(docs, 4, 3, seed=1)
    for _ in range(23):
        a.next()
    b = DocumentBatches(docs, 4, 3, seed=1)
    b.load_state_dict(a.state_dict())
    for _ in range(30):
        p, q = a.next(), b.next()
        assert torch.equal(p.x, q.x) and torch.equal(p.y, q.y) and p.reset == q.reset and p.scale == q.scale
    whole = DocumentBatches(docs, 4, 3, seed=1)
    parts = [DocumentBatches(docs, 2, 3, seed=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(whole.steps_per_epoch + 5):
        w, ps = whole.next(), [p.next() for p in parts]
        assert torch.equal(torch.cat([p.y for p in ps]), w.y) and all(p.reset == w.reset for p in ps)
        # scale: the global window's targets over the world size, so DDP's mean of the ranks'
        # sum / scale is the mean per character of the global batch.
        assert ps[0].scale == ps[1].scale == w.scale / 2 == int((w.y != PAD_TARGET).sum()) / 2


def test_the_loss_leaves_padding_out():
    assert PAD_TARGET == IGNORE
    logits = torch.randn(2, 3, 5)
    y = torch.tensor([[1, 2, IGNORE], [IGNORE, IGNORE, 4]])
    per = char_loss(logits, y, "none")
    assert per[0, 2] == 0 and per[1, 0] == 0
    assert char_loss(logits, y) == pytest.approx(float(per.sum()) / 3)


# --- no state crosses a document boundary --------------------------------------------------------
def alone(model, docs, i):
    """Logits (n + 1, V) of document i read on its own from the zero state."""
    s, n = int(docs.starts[i]), int(docs.lengths[i])
    return model(torch.from_numpy(docs.ids[s : s + n + 1].astype(np.int64))[None])[0][0]


@pytest.mark.parametrize("model", ["lstm", "gru", "minlstm"])
def test_no_state_crosses_a_document_boundary_in_the_trainer(tmp_path, model):
    """The trainer's own steps, weights held still: every row's logits are exactly those of its
    document read alone from <start>. Carrying a state from one group of documents into the
    next (a reset ignored), or reading two documents in one row, changes them."""
    corpus = tmp_path / "names.txt"
    corpus.write_text("\n".join(NAMES * 2) + "\n")
    model_config, cfg = resolve({"corpus": [str(corpus)], "out": str(tmp_path / "r"), "documents": "lines",
                                 "model": model, "hidden": 16, "embed": 8, "layers": 2, "batch_size": 3,
                                 "seq_len": 4, "val_fraction": 0.0, "dtype": "float32", "max_steps": 1})
    trainer = Trainer(model_config, cfg, progress=False)
    trainer.optimizer.step = lambda *a, **k: None  # the weights stay: each logit can be recomputed
    docs, net, seen = trainer.batches.docs, trainer.model, []
    real = trainer.ddp

    def spy(x, state):
        logits, new = real(x, state)
        seen.append(logits.detach())
        return logits, new

    trainer.ddp = spy
    order, checked = None, 0
    for _ in range(trainer.batches.steps_per_epoch):
        cursor = trainer.batches.cursor
        order, groups, ends = trainer.batches._plan()
        k = int(np.searchsorted(ends, cursor, side="right"))
        g = int(groups[k])
        window = cursor - int(ends[k] - trainer.batches.group_steps[g])
        members = order[g * 3 : (g + 1) * 3]
        trainer.train_step()
        logits = seen[-1]
        for row, i in enumerate(members):
            whole = alone(net, docs, int(i))
            part = whole[window * 4 : window * 4 + logits.shape[1]]
            torch.testing.assert_close(logits[row, : len(part)], part, rtol=1e-5, atol=1e-5)
            checked += len(part)
    assert checked == docs.targets


def test_scoring_documents_is_scoring_each_alone():
    torch.manual_seed(0)
    vocab, docs = docs_of(NAMES)
    model = build_model(ModelConfig(model="gru", vocab_size=len(vocab), hidden=12, embed=6, layers=1))
    expected = 0.0
    for i in range(len(docs)):
        s, n = int(docs.starts[i]), int(docs.lengths[i])
        target = torch.from_numpy(docs.ids[s + 1 : s + n + 2].astype(np.int64))
        expected += float(char_loss(alone(model, docs, i), target, "sum").detach())
    for batch_size, seq_len in [(64, 1024), (3, 2), (1, 5)]:
        result = evaluate_documents(model, docs, batch_size, seq_len)
        assert result.chars == docs.targets == sum(map(len, NAMES)) + len(NAMES)
        assert result.loss == pytest.approx(expected / docs.targets, rel=1e-5)
        assert result.protocol == "documents"
    assert sum(int((b.y != -1).sum()) for b in document_windows(docs, 3, 2)) == docs.targets

