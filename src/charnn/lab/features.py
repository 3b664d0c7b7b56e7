"""Structural features of a text, computed from the text itself: what `charnn cells` looks for.

Every feature is one number per character, the state of things *after reading* that
character (as the model's units are after reading it):

    column         characters since the last newline: 0 on the newline, 1 on the first
                   character of a line (the first line counts as if a newline preceded it)
    since_stop     characters since the last full stop "." (0 on the stop itself)
    in_word        1 on a letter, a digit or "_" (str.isalnum), else 0; an apostrophe or a
                   hyphen ends a word
    in_quote       1 inside a quotation or string literal (see the syntaxes below); an
                   opening quote counts as inside, a closing one as outside
    bracket_depth  brackets ( [ { opened and not yet closed; a closer pops the innermost
                   opener whatever its kind, a closer with none open is ignored
    indent         the line's leading spaces and tabs read so far (each counts 1):
                   min(column, leading whitespace of the line)

Quotes and brackets depend on `syntax`:

- "prose": only double quotes are quotes: " opens and closes in turn, “ opens, ” closes.
  Apostrophes are left alone, because in English prose ' is mostly an apostrophe (don't,
  o'er, 'tis) and a single-quoted quotation cannot be told from it without a parser. A
  blank line closes an open quotation silently (a quotation running over paragraphs opens
  each one again without closing the last). Brackets count everywhere.
- "python": Python's strings: ' or " to the same quote or the end of the line, triple
  quotes ''' / \"\"\" to the same triple, a backslash escapes the next character (string
  prefixes such as r are not read: raw strings are scanned like others); a # outside a
  string starts a comment to the end of the line. Brackets count outside strings and
  comments only.

`text_features` also returns the matched pairs (opener, closer) of brackets and quotes: the
n-gram comparison scores the model on closers by their distance to the opener, as
Karpathy, Johnson & Fei-Fei (2015, "Visualizing and Understanding Recurrent Networks") did.
Imports only numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SYNTAXES = ("prose", "python")
# name -> (what it is, "numeric" or "binary"), in the order tables show them.
FEATURES = {
    "column": ("characters since the last newline", "numeric"),
    "since_stop": ("characters since the last full stop", "numeric"),
    "in_word": ("inside a word (letter, digit, _)", "binary"),
    "in_quote": ("inside a quotation / string literal", "binary"),
    "bracket_depth": ("brackets ( [ { open", "numeric"),
    "indent": ("indentation of the line", "numeric"),
}
OPENERS = {"(": ")", "[": "]", "{": "}"}
CLOSERS = set(OPENERS.values())


@dataclass
class Features:
    values: dict[str, np.ndarray]  # name -> (N,) float64, in FEATURES' order
    pairs: np.ndarray  # (P, 2) int64: position of the opener, of the closer; sorted by closer
    quote_pair: np.ndarray  # (P,) bool: the pair is a quotation / string, else brackets


def text_features(text: str, syntax: str = "prose") -> Features:
    """Every feature of FEATURES for each character of `text`, and the matched pairs."""
    if syntax not in SYNTAXES:
        raise ValueError(f"syntax must be one of {SYNTAXES}, got {syntax!r}")
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    n = len(points)
    pos = np.arange(n)
    column = _since(points == ord("\n"), pos)
    scan = _scan_prose(text) if syntax == "prose" else _scan_python(text)
    in_quote, depth, pairs, quote_pair = scan
    values = {
        "column": column,
        "since_stop": _since(points == ord("."), pos),
        "in_word": _is_word(points),
        "in_quote": in_quote,
        "bracket_depth": depth,
        "indent": _indent(points, column),
    }
    order = np.argsort(pairs[:, 1], kind="stable") if len(pairs) else np.arange(0)
    return Features({k: values[k].astype(np.float64) for k in FEATURES}, pairs[order], quote_pair[order])


# --- the vectorised features ----------------------------------------------------------------------
def _since(marks: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """pos - (the last marked position at or before it), or pos + 1 before the first mark."""
    last = np.maximum.accumulate(np.where(marks, pos, -1)) if len(pos) else pos
    return pos - last


def _is_word(points: np.ndarray) -> np.ndarray:
    distinct, inverse = np.unique(points, return_inverse=True)
    word = np.array([chr(c).isalnum() or c == ord("_") for c in distinct.tolist()], dtype=bool)
    return word[inverse] if len(points) else np.zeros(0, dtype=bool)


def _indent(points: np.ndarray, column: np.ndarray) -> np.ndarray:
    """min(column, the leading spaces and tabs of the character's line)."""
    n = len(points)
    pos = np.arange(n)
    line_start = pos - column + 1  # the first position of each character's line
    line_start[points == ord("\n")] = n  # a newline: column 0, indent 0 (clipped below)
    # The first position at or after each line start that is not a space or a tab (n: none).
    stops = np.append(np.flatnonzero((points != ord(" ")) & (points != ord("\t"))), n)
    lead = stops[np.searchsorted(stops, line_start)] - line_start
    return np.minimum(column, lead)


# --- quotes and brackets: a scan (each character's meaning depends on what came before) -------------
def _result(in_quote: list, depth: list, pairs: list, quote_pair: list):
    return (np.array(in_quote, dtype=bool), np.array(depth, dtype=np.int64),
            np.array(pairs, dtype=np.int64).reshape(-1, 2), np.array(quote_pair, dtype=bool))


def _scan_prose(text: str):
    in_quote, depth, pairs, quote_pair = [], [], [], []
    stack: list[tuple[int, str]] = []
    quote = -1  # position of the open quotation mark, -1 = none
    blank = True  # the line read so far holds only whitespace
    for i, ch in enumerate(text):
        if ch in OPENERS:
            stack.append((i, ch))
        elif ch in CLOSERS:
            if stack:
                o, oc = stack.pop()
                if OPENERS[oc] == ch:
                    pairs.append((o, i))
                    quote_pair.append(False)
        elif ch == '"' or ch == "\u201d":  # " toggles; ” only closes
            if quote >= 0:
                pairs.append((quote, i))
                quote_pair.append(True)
                quote = -1
            elif ch == '"':
                quote = i
        elif ch == "\u201c":
            quote = i
        elif ch == "\n":
            if blank:
                quote = -1  # a blank line: a new paragraph
            blank = True
        if ch != "\n" and not ch.isspace():
            blank = False
        in_quote.append(quote >= 0)
        depth.append(len(stack))
    return _result(in_quote, depth, pairs, quote_pair)


def _scan_python(text: str):
    n = len(text)
    in_quote = [False] * n
    depth = [0] * n
    pairs, quote_pair = [], []
    stack: list[tuple[int, str]] = []
    i = 0
    while i < n:
        ch = text[i]
        if ch == "#":  # a comment: to the end of the line, brackets and quotes in it ignored
            end = text.find("\n", i)
            end = n if end < 0 else end
            depth[i:end] = [len(stack)] * (end - i)
            i = end
            continue
        if ch == "'" or ch == '"':
            i = _string(text, i, in_quote, depth, len(stack), pairs, quote_pair)
            continue
        if ch in OPENERS:
            stack.append((i, ch))
        elif ch in CLOSERS and stack:
            o, oc = stack.pop()
            if OPENERS[oc] == ch:
                pairs.append((o, i))
                quote_pair.append(False)
        depth[i] = len(stack)
        i += 1
    return _result(in_quote, depth, pairs, quote_pair)


def _string(text: str, i: int, in_quote: list, depth: list, d: int, pairs: list, quote_pair: list) -> int:
    """Scan the string literal opening at i; mark it; return the position after it."""
    n, q = len(text), text[i]
    delim = q * 3 if text.startswith(q * 3, i) else q
    start, j = i, i + len(delim)
    while j < n:
        if text[j] == "\\":
            j += 2
        elif text.startswith(delim, j):
            pairs.append((start, j))
            quote_pair.append(True)
            break
        elif text[j] == "\n" and len(delim) == 1:
            break  # an unterminated one-line string ends with its line
        else:
            j += 1
    j = min(j, n)
    in_quote[start:j] = [True] * (j - start)
    depth[start : min(j + len(delim), n)] = [d] * (min(j + len(delim), n) - start)
    return min(j + len(delim), n) if j < n and text.startswith(delim, j) else j
