"""`charnn eval`: a run's best weights scored on a file or on its validation split.

The command's settings (EvalConfig) and its one library call (evaluate_run). The scoring
itself is evaluate.py's; which split of which corpus is data/'s; the run directory is
checkpoint's. Imports: errors, settings, data, checkpoint, evaluate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from charnn import checkpoint
from charnn.data.corpus import ERROR_POLICIES, read_corpus
from charnn.data.documents import DocSpec, DocumentSet, read_documents, split_text
from charnn.data.source import validation_documents, validation_ids
from charnn.data.vocab import UNKNOWN_POLICIES, Vocab
from charnn.errors import CharnnError, check_all
from charnn.evaluate import PROTOCOLS, WINDOW, EvalResult, evaluate_documents, evaluate_ids
from charnn.settings import field_problems, setting


@dataclass
class EvalConfig:
    """The settings of `charnn eval`: which text, which protocol, how the text is read."""

    text: str | None = setting(None, "score this file instead of the validation split", shown="", metavar="FILE")
    protocol: str = setting("stateful", "stateful: one pass carrying the state (a documents run: each document "
                            "in one pass from <start>, <end> scored); windows: 256-character windows from a fresh "
                            "state", choices=PROTOCOLS)
    streams: int = setting(1, "stateful protocol: score in N parallel warmed-up segments, 1 = one exact pass",
                           positive=True)
    window: int = setting(WINDOW, "windows protocol: characters per window", positive=True)
    unknown: str = setting("error", "characters outside the vocabulary: error, skip or replace with <unk>",
                           choices=UNKNOWN_POLICIES)
    # The same defaults as the training corpus's --encoding and --errors (TrainConfig).
    encoding: str = setting("utf-8", "encoding of --text")
    errors: str = setting("strict", "bytes invalid in --encoding", choices=ERROR_POLICIES)
    device: str = setting("cpu", "torch device")

    def problems(self) -> list[str]:
        return field_problems(self)


def evaluate_run(run_dir: str | Path, config: EvalConfig) -> tuple[EvalResult, str]:
    """`charnn eval`: a run's best weights scored on `config.text` or on its validation split.

    Returns the result and what was scored (the file's name, or "validation split"). The run
    directory is read once, and only its model is built (no sampling path).
    """
    check_all(config.problems())
    loaded = checkpoint.load_run(run_dir, config.device)
    files = loaded.files
    spec = DocSpec.of(files.train)
    if spec is not None:  # a documents run: its held-out documents, or the documents of --text
        _documents_protocol(config.protocol)
        if config.text is None:
            return evaluate_documents(loaded.model, validation_documents(files)), "held-out documents"
        how = files.train.get("transliterate", "none")
        texts = read_documents([config.text], config.encoding, config.errors, how, spec).texts
        docs = DocumentSet.encode(texts, files.vocab, config.unknown, what=f"the evaluation text ({config.text})")
        return evaluate_documents(loaded.model, docs), f"{config.text} ({len(docs):,} documents)"
    if config.text is not None:
        # A transliterated run scores text transliterated the same way.
        how = files.train.get("transliterate", "none")
        text = read_corpus([config.text], config.encoding, config.errors, how).text
        what = config.text
        ids = files.vocab.encode(text, config.unknown, what=f"the evaluation text ({what})")
    else:
        ids, what = validation_ids(files), "validation split"
    result = evaluate_ids(loaded.model, ids, config.protocol, streams=config.streams, window=config.window)
    return result, what


def _documents_protocol(protocol: str) -> None:
    if protocol == "windows":
        raise CharnnError("a documents run is scored document by document, each from <start> (the stateful "
                          "protocol); drop --protocol windows")


def score_text(model, vocab: Vocab, spec: DocSpec, text: str, protocol: str, unknown: str, what: str) -> EvalResult:
    """The documents of `text`, cut as a documents run's corpus was (`spec`), each scored on its own."""
    _documents_protocol(protocol)
    texts, _ = split_text(text, spec, what)
    if not texts:
        raise CharnnError(f"{what} holds no document (--documents {spec.format})")
    return evaluate_documents(model, DocumentSet.encode(texts, vocab, unknown, what=what))
