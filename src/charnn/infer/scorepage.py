"""What `charnn score` writes: JSON lines, one JSON document, or a self-contained HTML page.

Each is written as the windows of a Scoring arrive (infer/score.py), so none holds the text:

    JSONL   one object per character:
            {"i": 5, "utf8": 5, "utf16": 5, "char": "e", "logprob": -0.411, "bits": 0.593,
             "top": [["e", 0.663], ["a", 0.101], ...]}
            i / utf8 / utf16: the character's offset in the text in code points, UTF-8 bytes and
            UTF-16 units; logprob in nats and bits = -logprob / ln 2 are null for the first
            character (read, not scored), whose "top" is empty; "top": the most likely
            characters at that position with their probabilities, most likely first.
    JSON    {"run", "text", "positions": [those objects], then the totals: "chars" (scored),
            "total_bits", "total_nats", "loss", "bpc", "perplexity", "protocol", "read",
            "skipped", "replaced"}: the positions come first so that the document streams.
    HTML    the text coloured by surprisal, a tooltip per character (its probability and the
            top alternatives), the totals and a legend; no script, no external asset.

JSON is written as UTF-8 (RFC 8259). May import infer.score and files.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from charnn.data.vocab import Vocab
from charnn.errors import CharnnError
from charnn.files import atomic_stream
from charnn.infer.score import Scoring, Totals, Window

LN2 = math.log(2)
# Surprisal bands of the page, in bits: below the first edge, between edges, above the last.
EDGES = (0.25, 0.5, 1, 2, 3, 4, 5, 6, 8)
# From "the model was sure" (pale) to "it did not see this coming" (deep red).
COLOURS = ("#ffffff", "#fff7e0", "#ffeec2", "#ffe0a0", "#ffc982", "#ffaa6b", "#ff8a5c",
           "#f2664f", "#d94141", "#b01e36")
SHOWN = {"\n": "↵", "\t": "⇥", " ": "␣", "\r": "␍"}  # in tooltips, and ↵ in the text


def _columns(window: Window) -> zip:
    """Per position: offset, UTF-8 and UTF-16 offsets, code point, logprob (nats, 6 decimals),
    bits (4 decimals), the top ids, their probabilities (6 decimals); NaN where not scored.
    Rounded as arrays, so that the per-character work is only putting values together."""
    lp = window.logprob
    probs = np.round(np.exp(window.top_logprob.astype(np.float64)), 6)
    return zip(window.offset.tolist(), window.utf8.tolist(), window.utf16.tolist(), window.points.tolist(),
               np.round(lp, 6).tolist(), np.round(-lp / LN2, 4).tolist(), window.top_ids.tolist(), probs.tolist())


def rows(window: Window, vocab: Vocab) -> Iterator[dict]:
    """The window's positions as JSON-ready dicts (see the module docstring)."""
    chars = vocab.chars
    for i, u8, u16, point, lp, bits, ids, probs in _columns(window):
        scored = lp == lp  # not NaN
        yield {"i": i, "utf8": u8, "utf16": u16, "char": chr(point), "logprob": lp if scored else None,
               "bits": bits if scored else None,
               "top": [[chars[t], q] for t, q in zip(ids, probs)] if scored else []}


def _json(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))


class _Lines:
    """JSON lines of positions, written as rows() would serialise them, without building the dicts."""

    def __init__(self, vocab: Vocab) -> None:
        self.by_id = [_json(c) for c in vocab.chars]  # characters as JSON strings
        self.by_point = {ord(c): q for c, q in zip(vocab.chars, self.by_id)}

    def __call__(self, window: Window) -> list[str]:
        q, out = self.by_id, []
        for i, u8, u16, point, lp, bits, ids, probs in _columns(window):
            c = self.by_point.get(point) or _json(chr(point))  # a character scored as <unk> is not there
            if lp == lp:
                top = ", ".join(f"[{q[t]}, {p!r}]" for t, p in zip(ids, probs))
                out.append(f'{{"i": {i}, "utf8": {u8}, "utf16": {u16}, "char": {c}, "logprob": {lp!r}, '
                           f'"bits": {bits!r}, "top": [{top}]}}')
            else:
                out.append(f'{{"i": {i}, "utf8": {u8}, "utf16": {u16}, "char": {c}, "logprob": null, '
                           f'"bits": null, "top": []}}')
        return out


def format_summary(scoring: Scoring) -> str:
    """One line, as charnn eval prints its result (the same figures for the same text)."""
    t = scoring.totals
    r = t.result()
    dropped = f", {t.skipped:,} skipped" if t.skipped else ""
    dropped += f", {t.replaced:,} scored as <unk>" if t.replaced else ""
    return (f"{scoring.text}: {t.chars:,} characters scored{dropped}, stateful protocol: {t.bits:,.1f} bits, "
            f"loss {r.loss:.4f} nats/char, {r.bpc:.4f} bits/char, perplexity {r.perplexity:.3f}")


def write_score(scoring: Scoring, out: BinaryIO | None, as_document: bool = False) -> Totals:
    """Write the scoring's positions to `out` (JSON lines, or one document with `as_document`;
    None: nothing) and to its --html page, as they come. Returns the totals."""
    page = scoring.config.html
    if page is None:
        _write_text(scoring, out, as_document, None)
        return scoring.totals
    try:
        with atomic_stream(page) as f:
            _write_text(scoring, out, as_document, _Page(f, scoring))
    except OSError as e:
        raise CharnnError(f"cannot write --html {page}: {e.strerror}; choose another path") from None
    return scoring.totals


def _write_text(scoring: Scoring, out: BinaryIO | None, as_document: bool, page: _Page | None) -> None:
    if out is not None and as_document:
        out.write(f'{{"run": {_json(scoring.run)}, "text": {_json(scoring.text)}, "positions": [\n'.encode())
    sep, lines_of = "", _Lines(scoring.vocab)
    for window in scoring:
        if out is not None:
            lines = lines_of(window)
            if as_document:
                out.write((sep + ",\n".join(lines)).encode())
                sep = ",\n"
            else:
                out.write(("\n".join(lines) + "\n").encode())
        if page is not None:
            page.add(window)
    if out is not None and as_document:
        out.write(f"\n], {_json(scoring.totals.to_dict())[1:]}\n".encode())
    if out is not None:
        out.flush()
    if page is not None:
        page.close()


# --- the HTML page ----------------------------------------------------------------------------
def _band(bits: float) -> int:
    return sum(bits >= e for e in EDGES)


def _name(c: str) -> str:
    """A character as a tooltip names it: quoted, whitespace made visible, escaped for HTML."""
    return html.escape(repr(SHOWN.get(c, c)))


_STYLE = (
    "body{font:15px/1.5 system-ui,sans-serif;margin:2em auto;max-width:60em;padding:0 1em;color:#222}"
    "main{display:flex;flex-direction:column}"
    "pre{order:2;white-space:pre-wrap;word-wrap:break-word;font:14px/1.6 ui-monospace,Menlo,Consolas,monospace;"
    "border:1px solid #ddd;padding:1em;border-radius:4px}"
    "pre span{cursor:default}pre span:hover{outline:1px solid #333}"
    ".nl{color:#bbb}.first{text-decoration:underline dotted}"
    "header{order:1}.legend span{display:inline-block;padding:0 .5em;border:1px solid #eee;font-size:13px}"
    + "".join(f".b{i}{{background:{c}}}" for i, c in enumerate(COLOURS))
)


class _Page:
    """The HTML page, written as the positions arrive; the header (with the totals) comes last
    in the file and is shown first (CSS order), so nothing waits for the end of the text."""

    def __init__(self, f: BinaryIO, scoring: Scoring) -> None:
        self.f, self.scoring = f, scoring
        self.names = [_name(c) for c in scoring.vocab.chars]
        title = html.escape(f"charnn score: {scoring.text}")
        f.write(f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
                f'<meta name="viewport" content="width=device-width,initial-scale=1">'
                f"<style>{_STYLE}</style></head>\n<body><main><pre>".encode())

    def add(self, window: Window) -> None:
        names, parts = self.names, []
        for _, _, _, point, lp, bits, ids, probs in _columns(window):
            c = chr(point)
            if lp != lp:  # NaN: the first character
                tip, cls = f"{_name(c)}: the first character, read but not scored", "first"
            else:
                alts = "&#10;".join(f"{k + 1}. {names[t]}  {q:.4f}" for k, (t, q) in enumerate(zip(ids, probs)))
                tip = (f"{_name(c)}  p = {math.exp(lp):.4f}  ({bits:.2f} bits)"
                       + (f"&#10;most likely:&#10;{alts}" if alts else ""))
                cls = f"b{_band(bits)}"
            text = '<span class="nl">↵</span>\n' if c == "\n" else html.escape(c)
            parts.append(f'<span class="{cls}" title="{tip}">{text}</span>')
        self.f.write("".join(parts).encode("utf-8", "surrogatepass"))

    def close(self) -> None:
        s = self.scoring
        t = s.totals
        r = t.result()
        legend = "".join(
            f'<span class="b{i}">{lo:g}{"–" + format(hi, "g") if hi is not None else "+"}</span>'
            for i, (lo, hi) in enumerate(zip((0, *EDGES), (*EDGES, None))))
        note = f", {t.skipped:,} skipped" if t.skipped else ""
        note += f", {t.replaced:,} scored as &lt;unk&gt;" if t.replaced else ""
        self.f.write(
            (f"</pre><header><h1>{html.escape(s.text)}</h1>"
             f"<p>run <code>{html.escape(s.run)}</code>: {t.chars:,} characters scored{note}, "
             f"<b>{r.bpc:.4f} bits/char</b> (loss {r.loss:.4f} nats/char, perplexity {r.perplexity:.3f}, "
             f"{t.bits:,.1f} bits in all; stateful protocol, as <code>charnn eval --text</code>).</p>"
             f'<p class="legend">surprisal, bits: {legend}. Hover a character for its probability '
             f"and the model's {s.config.top} most likely characters there.</p></header>"
             f"</main></body></html>\n").encode())
