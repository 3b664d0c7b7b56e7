"""Documents through a run: `charnn train --documents`, exact resume, eval per document with
<end>, whole documents from `charnn sample`, the server and the Python API."""

from __future__ import annotations

import json
import re

import httpx
import pytest
import torch

import charnn
from charnn import checkpoint
from charnn.cli import main
from charnn.data.documents import DocSpec, DocumentSet, held_out
from charnn.data.source import run_documents, validation_documents
from charnn.data.vocab import END, START
from charnn.errors import CharnnError
from charnn.evaluate import evaluate_documents
from charnn.infer.sampling import generate_documents
from charnn.serve.config import ServeConfig
from charnn.serve.engine import Engine
from charnn.serve.jobs import Sampling
from charnn.serve.run import background_server
from test_server_engine import run as finish_job
from test_train import assert_identical

NAMES = ("emma olivia ava isabella sophia charlotte mia amelia harper evelyn abigail emily ella elizabeth camila "
         "luna sofia avery mila aria scarlett penelope layla chloe victoria madison eleanor grace nora riley "
         "zoey hannah hazel lily ellie violet lillian zoe stella aurora natalie emilia everly leah").split()
SETTINGS = {"documents": "lines", "model": "gru", "hidden": 32, "embed": 8, "layers": 1, "batch_size": 8,
            "seq_len": 4, "lr": 1e-2, "warmup": 0, "eval_every": 20, "log_every": 10, "sample_chars": 0,
            "dtype": "float32", "val_docs": 5}


def names_file(tmp_path, names=NAMES, name="names.txt"):
    path = tmp_path / name
    path.write_text("\n".join(names) + "\n\n", encoding="utf-8")  # one empty line: dropped and counted
    return path


@pytest.fixture(scope="module")
def docs_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    out = root / "run"
    charnn.train(corpus=[str(names_file(root))], out=str(out), max_steps=150, progress=False, **SETTINGS)
    return out


def test_the_run_records_its_documents_and_split(docs_run):
    files = checkpoint.read_run(docs_run)
    d = files.data["documents"]
    assert d["format"] == "lines" and d["count"] == len(NAMES) and d["empty"] == 1 and d["held_out"] == 5
    assert files.vocab.specials == ("<unk>", START, END)
    train, val = run_documents(files)  # for the novelty checks: the texts of each side
    expected = held_out(len(NAMES), 0.1, 5, files.train["seed"])
    assert val == [NAMES[i] for i in expected] and sorted(train + val) == sorted(NAMES)
    assert len(train) == len(NAMES) - 5


def test_eval_scores_held_out_documents_with_the_end_token(docs_run, capsys):
    assert main(["eval", str(docs_run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    val = validation_documents(checkpoint.read_run(docs_run))
    assert out["protocol"] == "documents" and out["text"] == "held-out documents"
    assert out["chars"] == val.targets == sum(len(t) + 1 for t in val.texts)
    model = charnn.load(docs_run)
    assert out["loss"] == pytest.approx(evaluate_documents(model.model, val).loss)
    assert out["loss"] == pytest.approx(model.info["val_loss"])  # what training measured
    assert out["loss"] < 2.6  # learnt something: uniform over 20 letters and <end> is ln 21 = 3.04
    # The same documents given as a file, and through the Python API, score the same.
    assert model.evaluate("\n".join(val.texts)).loss == pytest.approx(out["loss"])
    assert main(["eval", str(docs_run), "--protocol", "windows"]) == 2
    assert "drop --protocol windows" in capsys.readouterr().err


def test_resume_of_a_documents_run_is_bit_identical(tmp_path):
    """Stopped in the middle of a group (documents longer than --seq-len 4 span windows, the
    state carried between them is saved), resumed, and equal to the straight run."""
    corpus = names_file(tmp_path)
    N, k = 30, 13
    common = {**SETTINGS, "corpus": [str(corpus)], "max_steps": N, "eval_every": 10}
    charnn.train(out=str(tmp_path / "a"), progress=False, **common)
    s = charnn.train(out=str(tmp_path / "b"), progress=False, should_stop=lambda step: step == k, **common)
    assert s.step == k
    assert checkpoint.load_checkpoint(tmp_path / "b").trainer["has_state"]
    charnn.train(resume=str(tmp_path / "b"), progress=False)
    assert_identical(tmp_path / "a", tmp_path / "b")


def test_a_changed_corpus_is_noticed(tmp_path, capsys):
    corpus = names_file(tmp_path)
    run = tmp_path / "r"
    charnn.train(corpus=[str(corpus)], out=str(run), max_steps=3, progress=False, **SETTINGS)
    names_file(tmp_path, NAMES[:-1])
    assert main(["eval", str(run)]) == 2
    assert "changed since it was trained, so its held-out documents are gone" in capsys.readouterr().err
    with pytest.raises(CharnnError, match="changed since the run started"):
        charnn.train(resume=str(run), max_steps=5, progress=False)


@pytest.mark.parametrize("argv, message", [
    (["--documents", "jsonl"], r"line 1 is a JSON str, not an object"),
    (["--documents", "sep"], r"--documents sep needs --doc-sep STRING"),
    (["--documents", "lines", "--doc-field", "title"], r"--doc-field applies to --documents jsonl"),
    (["--val-docs", "3"], r"--val-docs counts documents"),
    (["--documents", "lines", "--val-docs", "50"], rf"--val-docs 50 holds out 50 of the corpus's {len(NAMES)} documents"),
])
def test_bad_documents_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    corpus = tmp_path / "c.txt"
    corpus.write_text('"just a string"\n' if "jsonl" in argv else "\n".join(NAMES) + "\n")
    assert main(["train", str(corpus), "--out", str(tmp_path / "r"), "--max-steps", "1", "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("charnn: error: ")
    assert re.search(message, err), err


def test_an_empty_document_set_and_a_prepared_corpus_are_refused(tmp_path, capsys):
    empty = tmp_path / "e.txt"
    empty.write_text("\n\n  \n")
    assert main(["train", str(empty), "--documents", "lines", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "found no document" in capsys.readouterr().err
    assert main(["prepare", str(names_file(tmp_path)), "--out", str(tmp_path / "p"), "--quiet"]) == 0
    assert main(["train", str(tmp_path / "p"), "--documents", "lines", "--out", str(tmp_path / "r2"),
                 "--quiet"]) == 2
    assert "--documents reads text files, not the prepared corpus" in capsys.readouterr().err


def test_jsonl_corpus_trains_on_its_field(tmp_path):
    corpus = tmp_path / "t.jsonl"
    corpus.write_text("".join(json.dumps({"title": n, "id": i}) + "\n" for i, n in enumerate(NAMES)))
    run = tmp_path / "r"
    charnn.train(corpus=[str(corpus)], out=str(run), max_steps=2, progress=False,
                 **{**SETTINGS, "documents": "jsonl", "doc_field": "title"})
    train, val = run_documents(checkpoint.read_run(run))
    assert sorted(train + val) == sorted(NAMES)


# --- sampling ------------------------------------------------------------------------------------
class Recorder:
    """A stepper that records what it was primed with, and forwards to the real one."""

    def __init__(self, stepper):
        self.stepper, self.device, self.primes = stepper, stepper.device, []

    def __call__(self, ids, state=None):
        self.primes.append(ids.tolist())
        return self.stepper(ids, state)

    def step(self, ids, state):
        return self.stepper.step(ids, state)


def test_every_document_starts_at_start_and_ends_at_end_or_the_cap(docs_run):
    model = charnn.load(docs_run)
    model.stepper = Recorder(model.stepper)
    start = model.vocab.id_of(START)
    for length in (40, 3):
        docs = model.sample_documents(20, "", length, temperature=1.0, seed=7)
        assert model.stepper.primes[-1] == [[start]]  # the one prime of the batch: <start>
        assert [d.index for d in docs] == list(range(20)) and [d.seed for d in docs] == list(range(7, 27))
        for d in docs:
            assert d.ended == (d.finish == "end") and (d.ended or len(d.text) == length)
            assert START not in d.text and END not in d.text
            # Drawn in a batch, each is the document its seed draws alone (which stops at <end>).
            assert model.generate("", length, temperature=1.0, seed=d.seed) == d.text
        if length == 40:
            assert sum(d.ended for d in docs) >= 18  # names end
        else:
            assert sum(not d.ended for d in docs) >= 10  # most names are longer than 3
    primed = model.sample_documents(5, "em", 40, temperature=0.8, seed=1)
    assert model.stepper.primes[-1] == [[start, *model.vocab.encode("em").tolist()]]
    assert all(d.text.startswith("em") for d in primed)


def test_a_document_stops_at_the_end_token_which_is_not_text():
    """A stepper that says 'a' three times, then <end>: every document is "aaa", ended (also with a
    cap of 3: a document as long as the cap still ends); with a cap of 2 it is "aa", not ended."""
    V, A, END_ID = 4, 0, 3

    class Counting:
        device = torch.device("cpu")

        def logits(self, count):  # (B, V): 'a' before the third character, then <end>
            out = torch.full((len(count), V), -10.0)
            out[count < 3, A] = 10.0
            out[count >= 3, END_ID] = 10.0
            return out

        def __call__(self, ids, state=None):
            count = torch.zeros(ids.shape[0])
            return self.logits(count)[:, None].expand(-1, ids.shape[1], -1), count[None, :, None]

        def step(self, ids, state):
            count = state[0, :, 0] + 1
            return self.logits(count), count[None, :, None]

    for length, expected in ((10, ([A] * 3, True)), (3, ([A] * 3, True)), (2, ([A] * 2, False))):
        got = list(generate_documents(Counting(), [2], 4, length, 1.0, seed=0, banned=[2], end=END_ID))
        assert sorted(i for i, _, _ in got) == [0, 1, 2, 3]
        assert all((ids, ended) == expected for _, ids, ended in got)
    texts = ["a", "b", "", ""]
    engine = Engine(Counting(), texts, banned=[2], end=END_ID).start()
    try:
        job = engine.submit([[2]], 3, Sampling(max_tokens=10, temperature=1.0, top_k=0, top_p=1.0, stop=()), 0)
        assert finish_job(job) == (["aaa"] * 3, ["stop"] * 3)
        job = engine.submit([[2]], 1, Sampling(max_tokens=2, temperature=1.0, top_k=0, top_p=1.0, stop=()), 0)
        assert finish_job(job) == (["aa"], ["length"])
    finally:
        engine.close()


def test_charnn_sample_writes_one_document_per_line_or_jsonl(docs_run, capsys):
    assert main(["sample", str(docs_run), "--num-samples", "20", "--seed", "3", "--length", "40"]) == 0
    lines = capsys.readouterr().out.splitlines()
    docs = charnn.load(docs_run).sample_documents(20, "", 40, seed=3)
    assert lines == [d.line() for d in docs]
    assert main(["sample", str(docs_run), "--num-samples", "4", "--seed", "3", "--length", "2",
                 "--prime", "e", "--format", "jsonl"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2, 3] and all(r["text"].startswith("e") for r in rows)
    assert all(set(r) == {"index", "seed", "text", "ended", "finish", "chars"} for r in rows)
    cut = [r for r in rows if not r["ended"]]
    assert all(len(r["text"]) == 3 and r["finish"] == "length" for r in cut)  # the prime + 2
    if cut:
        assert f"{len(cut)} cut at --length 2" in captured.err


def test_a_document_with_line_breaks_is_one_escaped_line():
    from charnn.infer.model import Document

    d = Document(0, 0, "two\nlines \\ and\r", True, "end")
    assert d.line() == "two\\nlines \\\\ and\\r"


def test_the_server_completes_one_document_per_choice(docs_run):
    model = charnn.load(docs_run)
    with background_server({"names": model}, ServeConfig(port=0)) as url:
        card = httpx.get(f"{url}/v1/models/names").json()
        assert card["charnn"]["documents"] == "lines"
        r = httpx.post(f"{url}/v1/completions", json={"model": "names", "prompt": "em", "max_tokens": 40,
                                                      "n": 4, "seed": 11, "temperature": 1.0}, timeout=30)
        assert r.status_code == 200, r.text
        choices = sorted(r.json()["choices"], key=lambda c: c["index"])
    docs = model.sample_documents(4, "em", 40, temperature=1.0, seed=11)
    for c, d in zip(choices, docs):
        assert "em" + c["text"] == d.text
        assert c["finish_reason"] == ("stop" if d.ended else "length")
    assert any(c["finish_reason"] == "stop" for c in choices)


def test_documents_of_a_file_follow_the_run_format(docs_run, tmp_path, capsys):
    text = tmp_path / "more.txt"
    text.write_text("anna\nbella\n\ncora\n")
    assert main(["eval", str(docs_run), "--text", str(text), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    model = charnn.load(docs_run)
    docs = DocumentSet.encode(["anna", "bella", "cora"], model.vocab)
    assert out["chars"] == 4 + 5 + 4 + 3 and out["loss"] == pytest.approx(evaluate_documents(model.model, docs).loss)
    assert DocSpec.of(checkpoint.read_run(docs_run).train).format == "lines"


@pytest.mark.slow
def test_two_processes_train_documents_as_one_process(tmp_path):
    """torchrun, 2 ranks of a global batch of 8 documents vs one process: each rank reads its rows
    of every group, its loss is its characters' sum over the global count / 2, and DDP's mean of
    the two is the global batch's mean per character: the same run to float rounding."""
    from test_distributed import drive

    corpus = names_file(tmp_path)
    common = {**SETTINGS, "corpus": [str(corpus)], "max_steps": 20, "eval_every": 10, "log_every": 5}
    charnn.train(out=str(tmp_path / "one"), progress=False, **common)
    _, ranks = drive(tmp_path / "report", tmp_path / "two", settings={**common, "out": str(tmp_path / "two")})
    assert all("summary" in r for r in ranks), ranks
    m1, m2 = checkpoint.read_metrics(tmp_path / "one"), checkpoint.read_metrics(tmp_path / "two")
    assert [r["step"] for r in m1] == [r["step"] for r in m2] == [5, 10, 15, 20]
    for a, b in zip(m1, m2):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-4)
        if "val_loss" in a:
            assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-4)


def test_sample_novelty_on_documents_counts_train_held_out_and_new(docs_run, capsys):
    from charnn.data.source import run_documents

    train, held_out = run_documents(checkpoint.read_run(docs_run))
    assert main(["sample", str(docs_run), "--num-samples", "30", "--seed", "5", "--length", "40",
                 "--novelty", "--format", "jsonl"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    expect = ["train" if r["text"] in set(train) else "held_out" if r["text"] in set(held_out) else "new"
              for r in rows]
    assert [r["novelty"] for r in rows] == expect
    counts = {k: expect.count(k) for k in ("train", "held_out", "new")}
    assert (f"novelty: of 30 documents, {counts['train']} are in the training set, {counts['held_out']} in the "
            f"held-out set, {counts['new']} are new") in captured.err
