"""`charnn cells`' result shown: a table for people, a JSON object for scripts, an HTML page.

The page draws, for each feature, a stretch of the held-out text coloured by the activation
of the feature's best unit, Karpathy-style: red for positive, blue for negative, white near
zero (scaled by the largest |activation| in the stretch); each character's tooltip gives the
unit's value and the feature's. The stretch is the STRIP characters of the held-out text,
starting at a line, where the feature varies most. The page is one self-contained file.
`cells()` is the command's one library call. Imports the lab's cells.py, files, progress, errors.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from charnn.errors import CharnnError
from charnn.files import atomic_write, reason
from charnn.lab.cells import LONG, CellsConfig, CellsResult, analyse
from charnn.progress import Progress

STRIP = 1500  # characters drawn per feature
CLOSERS = {"brackets": "characters that close a bracket", "quotes": "characters that close a quotation or string",
           "newlines": "newlines"}
OPENERS = {"brackets": "the opener", "quotes": "the opening quote", "newlines": "the newline before"}


def cells(run_dir: str | Path, config: CellsConfig, *, progress: bool = True) -> CellsResult:
    """`charnn cells`: the analysis (cells.analyse), with its progress on stderr, and the HTML page."""
    bar = Progress(enabled=progress)
    result = analyse(run_dir, config, log=bar.message,
                     progress=lambda f: bar.update(f, "recording", "", force=f >= 1.0))
    bar.close()
    if config.html:
        write_html(result, config.html)
        bar.message(f"wrote {config.html}")
    return result


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _probe(row) -> str:
    m = row.measure
    if m.unit is None:
        return "(constant where units are chosen)"
    if m.probe is None:
        return "(constant in the held-out part)"
    if row.kind == "binary":
        return f"accuracy {m.probe:.3f} (majority {m.baseline:.3f})"
    return f"R² {m.probe:.3f}"


def format_table(r: CellsResult) -> str:
    groups = ", ".join(name for name, _ in r.groups)
    lines = [
        f"{r.run}: {r.model}, {r.units:,} units ({groups})",
        f"text: {r.what}, {r.chars:,} characters, syntax {r.syntax}; units chosen and probes fitted on the "
        f"first {r.split:,}, measured on the last {r.chars - r.split:,}",
        "",
        f"{'feature':<14} {'what':<38} {'mean':>7}  {'best unit':<15} {'r held-out':>10}  probe (held-out)",
    ]
    for row in r.features:
        m = row.measure
        lines.append(f"{row.name:<14} {row.what:<38} {row.mean:>7.2f}  {row.unit or '-':<15} "
                     f"{_num(m.r, '+.3f'):>10}  {_probe(row)}")
    if r.ngram is not None:
        lines += [""] + format_ngram(r.ngram)
    return "\n".join(lines)


def format_ngram(g) -> list[str]:
    lines = [
        f"n-gram comparison: interpolated Kneser-Ney character models trained on {g.train_chars:,} characters "
        f"of the run's training split, scored on the same {g.scored:,} characters as the RNN",
        f"{'model':<8} {'bits/char':>9} {'vs RNN':>8}",
        f"{'RNN':<8} {g.rnn_bits:>9.3f}",
    ]
    for k, b in enumerate(g.bits, 1):
        mark = "  <- best" if k == g.best else ""
        lines.append(f"{f'{k}-gram':<8} {b:>9.3f} {b - g.rnn_bits:>+8.3f}{mark}")
    name = f"{g.best}-gram"
    for kind, rows in g.closers.items():
        if not rows:
            lines += ["", f"{CLOSERS[kind]}: none in the text"]
            continue
        lines += ["", f"{CLOSERS[kind]}, by distance to {OPENERS[kind]} (bits/char):",
                  f"{'distance':<12} {'count':>7} {'RNN':>7} {name:>8} {'RNN saves':>10}"]
        for c in rows:
            saves = (c["ngram_bits"] - c["rnn_bits"]) if c["count"] else None
            lines.append(f"{c['distance']:<12} {c['count']:>7,} {_num(c['rnn_bits'], '.3f'):>7} "
                         f"{_num(c['ngram_bits'], '.3f'):>8} {_num(saves, '+.3f'):>10}")
    if not g.chars:
        return lines + ["", f"no character where the RNN saves bits over the {name}"]
    lines += ["", f"characters where the RNN saves the most bits over the {name} (in all):",
              f"{'char':<6} {'count':>7} {'RNN':>7} {name:>8} {'saved':>9}"]
    for c in g.chars:
        lines.append(f"{_shown(c['char']):<6} {c['count']:>7,} {c['rnn_bits']:>7.3f} {c['ngram_bits']:>8.3f} "
                     f"{c['saved_bits']:>9,.0f}")
    return lines


def _shown(ch: str) -> str:
    return repr(ch) if not ch.isprintable() or ch == " " else ch


def to_json(r: CellsResult) -> dict:
    return {
        "run": r.run, "model": r.model, "text": r.what, "chars": r.chars, "split": r.split, "syntax": r.syntax,
        "units": r.units, "groups": [list(g) for g in r.groups],
        "features": [{"name": f.name, "kind": f.kind, "what": f.what, "mean": f.mean,
                      **f.measure.to_dict(), "unit": f.unit, "column": f.measure.unit} for f in r.features],
        "ngram": r.ngram.to_dict() if r.ngram is not None else None,
        "long_range": LONG,
    }


# --- the page ---------------------------------------------------------------------------------------
def _window(r: CellsResult, name: str) -> tuple[int, int]:
    """STRIP characters of the held-out text, from a line start, where the feature varies most."""
    values, text = r.values[name], r.text
    lo, n = r.split, r.chars
    best, best_std = lo, -1.0
    for start in range(lo, max(lo + 1, n - STRIP // 2), STRIP // 3):
        nl = text.find("\n", start, min(n, start + 200))
        a = nl + 1 if nl >= 0 else start
        std = float(values[a : a + STRIP].std()) if a < n else -1.0
        if std > best_std:
            best, best_std = a, std
    return best, min(n, best + STRIP)


def _colour(v: float) -> str:
    """v in [-1, 1] -> red (positive) or blue (negative) over white."""
    fade = int(round(255 * (1 - min(1.0, abs(v)) * 0.85)))
    return f"#ff{fade:02x}{fade:02x}" if v >= 0 else f"#{fade:02x}{fade:02x}ff"


def _strip(r: CellsResult, row) -> str:
    a, b = _window(r, row.name)
    acts = r.activations[row.name][a:b]
    scale = float(np.abs(acts).max()) or 1.0
    values = r.values[row.name][a:b]
    spans = []
    for ch, act, val in zip(r.text[a:b], acts.tolist(), values.tolist()):
        tip = f"unit {act:+.3f}, {row.name} {val:g}"
        shown = "\u21b5\n" if ch == "\n" else html.escape(ch)
        spans.append(f'<span style="background:{_colour(act / scale)}" title="{tip}">{shown}</span>')
    m = row.measure
    head = (f"{html.escape(row.name)} <small>({html.escape(row.what)})</small>: {html.escape(row.unit)}, "
            f"r = {_num(m.r, '+.3f')} on held-out text; characters {a:,}-{b:,}, |activation| up to {scale:.3g}")
    return f"<h2>{head}</h2>\n<pre>{''.join(spans)}</pre>"


def write_html(r: CellsResult, path: str | Path) -> None:
    strips = [_strip(r, row) for row in r.features if row.unit is not None]
    title = f"charnn cells: {html.escape(r.run)}"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; color: #222; }}
pre {{ font-family: ui-monospace, monospace; font-size: 13px; line-height: 1.45; white-space: pre-wrap;
       border: 1px solid #ddd; padding: .6em; }}
pre span {{ border-radius: 2px; }}
h2 {{ font-size: 1.05em; margin-top: 1.8em; }}
</style></head><body>
<h1>{title}</h1>
<p>{html.escape(r.model)}, {r.units:,} units. Text: {html.escape(r.what)}, {r.chars:,} characters
(syntax {r.syntax}). For each feature, the unit with the largest |correlation| on the first
{r.split:,} characters, drawn on held-out text: <span style="background:{_colour(1)}">red</span>
positive, <span style="background:{_colour(-1)}">blue</span> negative, white near 0. Hover a
character for the values.</p>
{chr(10).join(strips) if strips else "<p>No feature varies in this text.</p>"}
</body></html>
"""
    try:
        atomic_write(Path(path), page.encode("utf-8"))
    except OSError as e:
        raise CharnnError(f"cannot write --html {path}: {reason(e)}") from None


def dumps(r: CellsResult) -> str:
    return json.dumps(to_json(r), ensure_ascii=False)
