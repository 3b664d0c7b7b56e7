"""`charnn cells RUN [CORPUS]`: the cells that remember, and what the RNN knows that n-grams do not.

After Karpathy, Johnson & Fei-Fei (2015), "Visualizing and Understanding Recurrent
Networks": run a trained model over text (the run's validation split, or CORPUS), record
every hidden unit (and an LSTM's cell c) of every layer after every character (record.py),
and for each structural feature of the text (features.py: column, characters since a full
stop, inside a word, inside a quotation, bracket depth, indentation) find the single unit
that tracks it best and how well a linear probe over all units reads it (probe.py). Then
compare the model with character n-gram models of orders 1 to 20 trained on the run's
training split (ngram.py), on the same characters: overall, and on the characters that
close a bracket or a quotation, by how far back it opened, where long memory should tell.

The analysed text (its first --max-chars characters) is split in two: the first part picks
each feature's unit and fits the probes, the last --held-out measures them. The n-gram
comparison scores every character of the analysed text but the first.

`analyse(run_dir, config)` returns a CellsResult; report.py prints it, as a table or JSON,
and draws it as HTML. Imports checkpoint, data, models, the lab's modules and the base ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from charnn import checkpoint
from charnn.data.corpus import ERROR_POLICIES, read_corpus
from charnn.data.source import run_corpus
from charnn.data.vocab import UNKNOWN_POLICIES
from charnn.devices import resolve_device
from charnn.errors import CharnnError, check_all
from charnn.files import path_kind
from charnn.lab.features import FEATURES, SYNTAXES, text_features
from charnn.lab.ngram import text_losses
from charnn.lab.probe import Measure, measure
from charnn.lab.record import WARMUP, record_units
from charnn.settings import field_problems, setting

MAX_ORDER = 32
MIN_CHARS = 100  # fewer leave too few positions on either side of the split to measure anything
NGRAM_TRAIN_LIMIT = 10_000_000  # n-gram models train on at most this many characters (~3 GB at the peak)
LONG = 20  # a closer whose opener is further back than this is "long range" (the paper's 20-gram)
DISTANCES = (10, 20, 40, 80, 160)  # upper bounds of the distance buckets; the last is open
BITS = 1 / np.log(2)


@dataclass
class CellsConfig:
    """The settings of `charnn cells`; its flags map onto these one to one."""

    text: str | None = setting(None, "a text file to analyse", shown="the run's validation split", flag=False)
    max_chars: int = setting(100_000, "analyse the first N characters of the text (the recording holds "
                             "4 bytes per unit per character)", positive=True)
    syntax: str = setting("prose", "how quotes and brackets are read: prose (double quotes only: an "
                          "apostrophe is not a quote) or python (strings in ' \" and triple quotes, escapes, "
                          "# comments)", choices=SYNTAXES)
    held_out: float = setting(0.5, "the fraction of the text (its end) the units and probes are measured on; "
                              "the rest picks the units and fits the probes", gt=0, lt=1)
    streams: int = setting(16, f"parallel segments the text is read in, each warmed up on the {WARMUP:,} "
                           "characters before it", positive=True)
    ngram: int = setting(20, "compare with character n-gram models of orders 1 to N (interpolated Kneser-Ney) "
                         "trained on the run's training split", note="0 = no comparison", ge=0, le=MAX_ORDER)
    html: str = setting("", "write each feature's best unit as coloured text to this HTML file", metavar="OUT",
                        shown="")
    unknown: str = setting("error", "characters outside the vocabulary: error, skip or replace with <unk>",
                           choices=UNKNOWN_POLICIES)
    encoding: str = setting("utf-8", "encoding of CORPUS")
    errors: str = setting("strict", "bytes invalid in --encoding", choices=ERROR_POLICIES)
    device: str = setting("cpu", "torch device: cpu, cuda, cuda:N, mps, auto")

    def problems(self) -> list[str]:
        return field_problems(self)


@dataclass
class FeatureRow:
    name: str
    kind: str  # "numeric" or "binary"
    what: str
    mean: float  # over the analysed text
    unit: str | None  # "layer 2 c 117"
    measure: Measure


@dataclass
class NgramReport:
    train_chars: int  # characters the n-gram models were trained on
    scored: int  # characters scored (the analysed text less its first)
    rnn_bits: float
    bits: list[float]  # bits per character of orders 1 ... n
    best: int  # the order with the lowest loss
    closers: dict[str, list[dict]]  # kind -> one per distance bucket, then "> LONG": count, RNN and n-gram bits
    chars: list[dict]  # the characters where the RNN saves the most bits in all

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class CellsResult:
    run: str
    model: str  # "lstm 2 x 384"
    what: str  # what was analysed
    syntax: str
    chars: int
    split: int  # positions [0, split) fit, the rest are held out
    groups: list[tuple[str, int]]
    features: list[FeatureRow]
    ngram: NgramReport | None
    text: str = field(repr=False, default="")  # the analysed text, for the pictures
    activations: dict[str, np.ndarray] = field(repr=False, default_factory=dict)  # feature -> its unit's values
    values: dict[str, np.ndarray] = field(repr=False, default_factory=dict)  # feature -> its values

    @property
    def units(self) -> int:
        return sum(size for _, size in self.groups)


# --- the text ---------------------------------------------------------------------------------------
def _looks_binary(path: str, encoding: str) -> bool:
    """A NUL byte in the first 64 KB of a file, in an encoding where text has none."""
    if "\0".encode(encoding, "ignore") != b"\0" or not Path(path).is_file():
        return False
    try:
        with open(path, "rb") as f:
            return b"\0" in f.read(1 << 16)
    except OSError:
        return False  # read_corpus names the problem


def _text(files, config: CellsConfig, corpus) -> tuple[str, np.ndarray, str]:
    """The analysed text, its ids and what it is."""
    vocab = files.vocab
    if config.text is None:
        text, what = corpus.val_text[: config.max_chars], "validation split"
    else:
        if _looks_binary(config.text, config.encoding):
            raise CharnnError(f"{config.text} looks like a binary file (it holds NUL bytes); give a text file")
        how = files.train.get("transliterate", "none")
        text = read_corpus([config.text], config.encoding, config.errors, how).text[: config.max_chars]
        what = config.text
        if config.unknown == "skip":  # the features must see the text the model reads
            text = text.translate({ord(c): None for c in vocab.unknown_chars(text)})
    ids = vocab.encode(text, config.unknown, what=f"the text ({what})")
    if len(ids) < MIN_CHARS:
        raise CharnnError(f"charnn cells needs at least {MIN_CHARS} characters of text; {what} has {len(ids)}")
    return text, ids, what


# --- the analysis -------------------------------------------------------------------------------------
def analyse(run_dir: str | Path, config: CellsConfig, log: Callable[[str], None] | None = None,
            progress: Callable[[float], None] | None = None) -> CellsResult:
    """The cells that remember (see the module docstring). `log` gets a line per stage, `progress`
    the recording's fraction done."""
    check_all(config.problems())
    if config.html and path_kind(Path(config.html).parent or ".") != "dir":
        raise CharnnError(f"--html {config.html}: the directory {Path(config.html).parent} does not exist; create it")
    say = log or (lambda line: None)
    device = resolve_device(config.device)
    loaded = checkpoint.load_run(run_dir, device)
    files, model = loaded.files, loaded.model
    corpus = None
    if config.text is None or config.ngram:
        fix = ("pass the text to analyse as CORPUS" if config.text is None else
               "pass --ngram 0 (the n-gram models train on the run's training split)")
        try:
            corpus = run_corpus(files, fix, validation=config.text is None)
        except CharnnError as e:  # e.g. its file moved: say what charnn cells needs it for
            raise CharnnError(str(e) if fix in str(e) else f"{e} (charnn cells reads the run's corpus: {fix})") from None
    text, ids, what = _text(files, config, corpus)
    n = len(ids)
    split = min(n - 2, max(2, int(round(n * (1 - config.held_out)))))
    mc = files.model_config
    say(f"recording every unit of {files.model_config.model} over {n:,} characters ...")
    rec = record_units(model, ids, config.streams, progress=progress)
    feats = text_features(text, config.syntax)
    binary = {k: FEATURES[k][1] == "binary" for k in FEATURES}
    say(f"fitting probes on {split:,} characters, measuring on {n - split:,} ...")
    measures = measure(rec.units, feats.values, binary, split)
    rows, activations = [], {}
    for name, (what_it_is, kind) in FEATURES.items():
        m = measures[name]
        rows.append(FeatureRow(name, kind, what_it_is, float(feats.values[name].mean()),
                               rec.unit_name(m.unit) if m.unit is not None else None, m))
        if m.unit is not None:
            activations[name] = rec.units[:, m.unit].copy()
    report = None
    if config.ngram:
        train = np.asarray(corpus.train_ids[:NGRAM_TRAIN_LIMIT], dtype=np.int64)
        say(f"n-gram models of orders 1 to {config.ngram} on {len(train):,} training characters ...")
        ngram_nats = text_losses(train, ids, len(files.vocab), config.ngram)
        newlines = np.flatnonzero(feats.values["column"] == 0)  # a newline closes the line its predecessor ended
        pairs = {"brackets": feats.pairs[~feats.quote_pair], "quotes": feats.pairs[feats.quote_pair],
                 "newlines": np.stack([newlines[:-1], newlines[1:]], axis=1)}
        report = compare(rec.losses, ngram_nats, pairs, text, len(train))
    return CellsResult(str(run_dir), f"{mc.model} {mc.layers} x {mc.hidden}", what, config.syntax, n, split,
                       rec.groups, rows, report, text, activations, feats.values)


# --- the n-gram comparison ----------------------------------------------------------------------------
def _bits(losses: np.ndarray) -> float | None:
    return float(losses.mean() * BITS) if len(losses) else None


def _by_distance(rnn: np.ndarray, ng: np.ndarray, pairs: np.ndarray) -> list[dict]:
    """Mean bits of the closers of `pairs` (opener, closer), by the distance between them."""
    close, dist = pairs[:, 1], pairs[:, 1] - pairs[:, 0]
    ok = close >= 1  # the first character is not scored
    close, dist = close[ok], dist[ok]
    rows, lo = [], 1
    for hi in (*DISTANCES, None):
        sel = (dist >= lo) & (dist <= hi) if hi is not None else dist >= lo
        rows.append((f"{lo}-{hi}" if hi is not None else f"> {lo - 1}", sel))
        lo = (hi or 0) + 1
    rows.append((f"> {LONG} (all)", dist > LONG))
    return [{"distance": label, "count": int(sel.sum()), "rnn_bits": _bits(rnn[close[sel]]),
             "ngram_bits": _bits(ng[close[sel]])} for label, sel in rows]


def compare(rnn: np.ndarray, ngram: np.ndarray, pairs: dict[str, np.ndarray], text: str,
            train_chars: int) -> NgramReport:
    """The RNN's losses (N,) and the n-gram models' (orders, N), in nats, on every character but
    the first; and against the best order, on the closers of each kind of `pairs` (name ->
    (P, 2) positions of opener and closer) by their distance."""
    scored = np.arange(1, len(rnn))
    bits = [float(ngram[k, scored].mean() * BITS) for k in range(len(ngram))]
    best = int(np.argmin(bits)) + 1
    ng = ngram[best - 1]
    closers = {name: _by_distance(rnn, ng, p) if len(p) else [] for name, p in pairs.items()}
    # Where the RNN saves the most bits over the best n-gram, summed over each character.
    chars = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")[scored]
    saved = (ng[scored] - rnn[scored]) * BITS
    distinct, inverse = np.unique(chars, return_inverse=True)
    total = np.bincount(inverse, weights=saved)
    top = []
    for i in np.argsort(-total)[:10]:
        sel = inverse == i
        if total[i] <= 0:
            break
        top.append({"char": chr(distinct[i]), "count": int(sel.sum()), "rnn_bits": _bits(rnn[scored][sel]),
                    "ngram_bits": _bits(ng[scored][sel]), "saved_bits": float(total[i])})
    return NgramReport(train_chars, len(scored), float(rnn[scored].mean() * BITS), bits, best, closers, top)
