"""The capacity sweep: how long a text can each cell learn to recite, for its size?

`sweep(config)` runs the memorisation experiment (memorize.py) over a grid

    text kind x hidden size x cell x length x seed

with a fixed budget of updates (epochs), stopping a run at its first exact recall. The texts:

- "random": uniform random strings over a fixed alphabet (16 letters by default), so each
  character carries exactly log2(alphabet) bits and a recalled string of L characters is
  L * log2(alphabet) bits memorised. A seed's strings are prefixes of one another.
- "text": natural text, a slice of the corpus (the bundled tiny Shakespeare) starting at an
  offset drawn from the seed; its vocabulary is the slice's own characters.

The capacity of (kind, cell, hidden) is the longest length recalled exactly in at least half
of the seeds; for random strings, bits per parameter = capacity * log2(alphabet) / parameters.

Results are appended, one JSON line per run, to `capacity.jsonl` in the output directory,
and a rerun skips every run already there (a killed sweep resumes where it stopped; a wider
sweep runs only what is new). The summary is a markdown table (`capacity.md`) and a plot of
recall accuracy against length, one curve per cell (`capacity.png`, with the [plot] extra).

Imports memorize.py, the data layer (the corpus) and the base modules.
"""

from __future__ import annotations

import io
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from charnn.data.corpus import read_corpus
from charnn.errors import CharnnError, check_all
from charnn.files import append_jsonl, atomic_write, read_jsonl
from charnn.lab.memorize import LOSSES, MemorizeConfig, memorize
from charnn.models import CORES, INPUTS
from charnn.settings import field_problems, setting

KINDS = ("random", "text")
RANDOM_ALPHABET = "abcdefghijklmnop"  # 16 letters: 4 bits per character


@dataclass
class CapacityConfig:
    """The grid and the budget of a sweep; the `charnn capacity` flags map onto these one to one."""

    cells: list[str] = setting(["rnn", "lstm", "gru"], f"comma-separated cores ({', '.join(CORES)})",
                               choices=CORES, items="core names")
    hidden: list[int] = setting([4, 8, 16], "comma-separated hidden sizes", positive=True)
    lengths: list[int] = setting([8, 16, 32, 64, 128, 256], "comma-separated text lengths in characters",
                                 positive=True)
    kinds: list[str] = setting(list(KINDS), f"comma-separated text kinds ({', '.join(KINDS)})",
                               choices=KINDS, items="text kinds")
    seeds: int = setting(3, "seeds per setting (the text and the weights)", positive=True)
    epochs: int = setting(300, "update budget of each run (it stops at its first exact recall)", positive=True)
    layers: int = setting(1, "stacked recurrent layers", positive=True)
    input: str = setting("onehot", "input encoding", choices=INPUTS)
    loss: str = setting("ce", " or ".join(LOSSES), choices=LOSSES)
    lr: float = setting(0.01, "Adam learning rate", gt=0)
    alphabet: str = setting(RANDOM_ALPHABET, "characters of the random strings (log2 of its size = bits per character)")
    corpus: str = setting("", "text file the natural-text slices come from", note='"" = tiny Shakespeare')
    out: str = setting("runs/capacity", "directory of capacity.jsonl, capacity.md and capacity.png")
    threads: int = setting(1, "CPU threads for torch, 0 = torch's default", ge=0)  # as in MemorizeConfig

    def problems(self) -> list[str]:
        p = field_problems(self)
        if len(set(self.alphabet)) < 2:
            p.append(f"--alphabet needs at least 2 distinct characters, got {self.alphabet!r}")
        return p


# --- the texts --------------------------------------------------------------------------------
def random_text(length: int, seed: int, alphabet: str = RANDOM_ALPHABET) -> str:
    """Uniform random characters; a longer string from the same seed extends a shorter one."""
    letters = sorted(set(alphabet))
    return "".join(random.Random(seed).choices(letters, k=length))


def corpus_slice(corpus: str, length: int, seed: int) -> str:
    """`length` characters of `corpus` from an offset drawn from the seed (the same for every
    length, so a seed's slices are prefixes of one another)."""
    room = max(1, len(corpus) - 8192)  # offsets leave room for lengths up to 8192
    start = random.Random(1_000_003 + seed).randrange(room)
    text = corpus[start : start + length]
    if len(text) < length:
        raise CharnnError(f"--corpus has {len(corpus):,} characters, too few for --lengths {length}; "
                          f"use a longer corpus or shorter lengths")
    return text


def _corpus_text(config: CapacityConfig) -> tuple[str, str]:
    corpus = read_corpus([config.corpus] if config.corpus else [])
    return corpus.text, config.corpus or "tinyshakespeare"


# --- the runs and the results file -------------------------------------------------------------
def _key(row: dict) -> tuple:
    """What makes two runs the same run: every setting that changes the result."""
    return tuple(row.get(k) for k in ("kind", "source", "cell", "hidden", "layers", "length", "seed",
                                      "epochs", "lr", "loss", "input"))


def planned_runs(config: CapacityConfig, source: str) -> list[dict]:
    """The grid, as the settings part of each row, in the order the sweep runs them."""
    runs = []
    for kind in config.kinds:
        for hidden in config.hidden:
            for cell in config.cells:
                for length in sorted(config.lengths):
                    for seed in range(config.seeds):
                        runs.append({
                            "kind": kind, "source": config.alphabet if kind == "random" else source,
                            "cell": cell, "hidden": hidden, "layers": config.layers, "length": length,
                            "seed": seed, "epochs": config.epochs, "lr": config.lr, "loss": config.loss,
                            "input": config.input,
                        })
    return runs


def run_one(settings: dict, corpus: str) -> dict:
    """One memorisation run of the grid -> its row."""
    if settings["kind"] == "random":
        text, alphabet = random_text(settings["length"], settings["seed"], settings["source"]), settings["source"]
    else:
        text, alphabet = corpus_slice(corpus, settings["length"], settings["seed"]), ""
    result = memorize(MemorizeConfig(
        text=text, alphabet=alphabet, cell=settings["cell"], layers=settings["layers"],
        hidden=settings["hidden"], input=settings["input"], loss=settings["loss"], lr=settings["lr"],
        epochs=settings["epochs"], seed=settings["seed"], stop_when_exact=True, threads=0,
    ))
    return {
        **settings,
        "exact": result.exact,
        "char_accuracy": result.char_accuracy,
        "teacher_forced_accuracy": result.teacher_forced_accuracy,
        "first_exact_epoch": result.first_exact_epoch,
        "epochs_run": result.epochs_run,
        "final_loss": result.final_loss,
        "params": result.params,
        "vocab_size": result.vocab_size,
        "seconds": round(result.seconds, 3),
        "text": text,
        "recall": result.recall,
    }


@dataclass
class SweepResult:
    rows: list[dict]  # this sweep's grid, from the file
    ran: int  # runs done now
    skipped: int  # runs already in the file
    table: str
    jsonl: Path
    markdown: Path
    plot: Path | None  # None without matplotlib


def sweep(config: CapacityConfig, log: Callable[[str], None] | None = None) -> SweepResult:
    """Run the grid (skipping runs already in the results file) and write the summaries."""
    check_all(config.problems())
    if config.threads:
        torch.set_num_threads(config.threads)
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    corpus, source = ("", "") if "text" not in config.kinds else _corpus_text(config)
    if "text" in config.kinds:  # a corpus too short for some slice: say so before running
        for seed in range(config.seeds):
            corpus_slice(corpus, max(config.lengths), seed)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "capacity.jsonl"
    done = {_key(r) for r in read_jsonl(jsonl)}  # a line torn by a killed sweep is ignored: it reruns
    grid = planned_runs(config, source)
    todo = [s for s in grid if _key(s) not in done]
    started = time.perf_counter()
    for i, settings in enumerate(todo, 1):
        row = run_one(settings, corpus)
        append_jsonl(jsonl, row, durable=True)
        elapsed = time.perf_counter() - started
        first = row["first_exact_epoch"]
        log(f"[{i}/{len(todo)}] {row['kind']} L={row['length']} {row['cell']} h={row['hidden']} "
            f"seed {row['seed']}: {'exact after epoch ' + str(first) if row['exact'] else 'not exact'}, "
            f"char accuracy {row['char_accuracy']:.0%}, {row['seconds']:.1f} s "
            f"(elapsed {elapsed:.0f} s, eta {elapsed / i * (len(todo) - i):.0f} s)")
    by_key = {_key(r): r for r in read_jsonl(jsonl)}
    rows = [by_key[_key(s)] for s in grid if _key(s) in by_key]
    table = format_table(rows, config)
    markdown = out / "capacity.md"
    atomic_write(markdown, (table + "\n").encode())
    plot = plot_capacity(rows, out / "capacity.png")
    return SweepResult(rows, len(todo), len(grid) - len(todo), table, jsonl, markdown, plot)


# --- the summaries -----------------------------------------------------------------------------
def _groups(rows: list[dict]) -> dict[tuple, dict[int, list[dict]]]:
    """(kind, cell, hidden) -> length -> the rows of its seeds, in first-seen order."""
    groups: dict[tuple, dict[int, list[dict]]] = {}
    for r in rows:
        groups.setdefault((r["kind"], r["cell"], r["hidden"]), {}).setdefault(r["length"], []).append(r)
    return groups


def capacity_of(by_length: dict[int, list[dict]]) -> int:
    """The longest length recalled exactly in at least half of its seeds (0 = none)."""
    return max((L for L, rs in by_length.items() if 2 * sum(r["exact"] for r in rs) >= len(rs)), default=0)


def summarize(rows: list[dict]) -> list[dict]:
    """One record per (kind, cell, hidden): capacity, bits per parameter, exact counts per length."""
    out = []
    for (kind, cell, hidden), by_length in _groups(rows).items():
        cap = capacity_of(by_length)
        params = by_length[min(by_length)][0]["params"]
        record = {"kind": kind, "cell": cell, "hidden": hidden, "params": params, "capacity": cap,
                  "capacity_is_lower_bound": cap == max(by_length) and cap > 0,
                  "exact": {L: (sum(r["exact"] for r in rs), len(rs)) for L, rs in sorted(by_length.items())},
                  "bits_per_char": None, "bits_per_param": None}
        if kind == "random":  # known entropy: log2(alphabet) bits per character
            bits = math.log2(len(set(by_length[min(by_length)][0]["source"])))
            record["bits_per_char"] = bits
            record["bits_per_param"] = cap * bits / params
        out.append(record)
    return out


def format_table(rows: list[dict], config: CapacityConfig) -> str:
    """A markdown table: exact recalls (seeds) per length, capacity, bits per parameter; then
    a line saying what the numbers count."""
    summary = summarize(rows)
    if not summary:
        return "(no results)"
    lengths = sorted({L for s in summary for L in s["exact"]})
    head = ["text", "cell", "hidden", "params", *[f"L={L}" for L in lengths], "capacity (chars)", "bits / param"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        kind = f"random ({s['bits_per_char']:g} bits/char)" if s["kind"] == "random" else "natural"
        exact = [f"{s['exact'][L][0]}/{s['exact'][L][1]}" if L in s["exact"] else "" for L in lengths]
        cap = (">= " if s["capacity_is_lower_bound"] else "") + str(s["capacity"])
        bpp = f"{s['bits_per_param']:.3f}" if s["bits_per_param"] is not None else "n/a"
        lines.append("| " + " | ".join([kind, s["cell"], str(s["hidden"]), f"{s['params']:,}", *exact, cap, bpp]) + " |")
    lines.append("")
    lines.append(f"Each cell of L=... columns: seeds (of {config.seeds}) recalled exactly within "
                 f"{config.epochs} updates; {config.layers} layer(s), {config.input} input, "
                 f"{config.loss} loss, Adam lr {config.lr:g}.")
    return "\n".join(lines)


def plot_capacity(rows: list[dict], path: Path) -> Path | None:
    """Recall accuracy (mean over seeds) against length, one curve per cell, a panel per
    (text kind, hidden size). None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return None
    kinds = sorted({r["kind"] for r in rows}, key=KINDS.index)
    hiddens = sorted({r["hidden"] for r in rows})
    all_lengths = sorted({r["length"] for r in rows})
    fig, axes = plt.subplots(len(kinds), len(hiddens), figsize=(3.6 * len(hiddens), 3.0 * len(kinds)),
                             dpi=100, squeeze=False, sharex=True, sharey=True)
    groups = _groups(rows)
    for i, kind in enumerate(kinds):
        for j, hidden in enumerate(hiddens):
            ax = axes[i][j]
            for (k, cell, h), by_length in groups.items():
                if k != kind or h != hidden:
                    continue
                lengths = sorted(by_length)
                acc = [sum(r["char_accuracy"] for r in by_length[L]) / len(by_length[L]) for L in lengths]
                ax.plot(lengths, acc, marker="o", markersize=3, label=cell)
            ax.set_xscale("log", base=2)
            ax.set_xticks(all_lengths, [str(L) for L in all_lengths])
            ax.minorticks_off()
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(f"{'random strings' if kind == 'random' else 'natural text'}, hidden {hidden}", fontsize=9)
            ax.grid(alpha=0.3)
            if i == len(kinds) - 1:
                ax.set_xlabel("text length (characters)")
            if j == 0:
                ax.set_ylabel("recall accuracy")
    axes[0][0].legend(fontsize=8)
    r = rows[0]
    fig.suptitle(f"greedy recall accuracy (mean over seeds) after at most {r['epochs']} updates; "
                 f"{r['layers']} layer{'s' if r['layers'] > 1 else ''}, {r['input']} input, {r['loss']} loss, Adam lr {r['lr']:g}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    return path

