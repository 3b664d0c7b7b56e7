"""lab/features.py on hand-made strings: every feature, both syntaxes, and the matched pairs."""

import numpy as np
import pytest

from charnn.lab.features import FEATURES, text_features


def values(text, name, syntax="prose"):
    return text_features(text, syntax).values[name].astype(int).tolist()


def test_column_counts_characters_since_the_newline():
    assert values("ab\ncd\n\ne", "column") == [1, 2, 0, 1, 2, 0, 0, 1]


def test_since_stop_restarts_at_every_full_stop():
    assert values("ab. c.d", "since_stop") == [1, 2, 0, 1, 2, 0, 1]


def test_in_word_letters_digits_underscore_and_unicode():
    assert values("a_1 é-b'c", "in_word") == [1, 1, 1, 0, 1, 0, 1, 0, 1]


def test_indent_is_the_leading_whitespace_read_so_far():
    text = "x\n    if a:\n\tb\n  \n"
    expected = [0, 0, 1, 2, 3, 4, 4, 4, 4, 4, 4, 0, 1, 1, 0, 1, 2, 0]
    assert values(text, "indent") == expected
    assert len(text) == len(expected)


def test_prose_quotes_double_only_and_apostrophes_ignored():
    text = 'He said "don\'t go" and \u201cno\u201d.'
    q = values(text, "in_quote")
    assert "".join("1" if v else "0" for v in q) == (
        "00000000" + "1" * 9 + "0" * 6 + "111" + "00")
    f = text_features(text, "prose")
    assert f.pairs.tolist() == [[8, 17], [23, 26]]
    assert f.quote_pair.tolist() == [True, True]


def test_prose_blank_line_closes_an_open_quote():
    text = '"a\n\nb"c'
    assert values(text, "in_quote") == [1, 1, 1, 0, 0, 1, 1]  # the last " opens again
    assert text_features(text, "prose").pairs.tolist() == []


def test_brackets_depth_and_pairs_by_closer():
    text = "f(a[1], {b})) x]"
    assert values(text, "bracket_depth") == [0, 1, 1, 2, 2, 1, 1, 1, 2, 2, 1, 0, 0, 0, 0, 0]
    f = text_features(text, "prose")
    assert f.pairs.tolist() == [[3, 5], [8, 10], [1, 11]]
    assert not f.quote_pair.any()


def test_mismatched_closer_pops_but_makes_no_pair():
    f = text_features("(]", "prose")
    assert f.values["bracket_depth"].tolist() == [1, 0]
    assert f.pairs.tolist() == []


def test_python_strings_comments_and_escapes():
    text = "x = 'it\\'s (' + \"a#b\"  # don't (\ny = (1)"
    f = text_features(text, "python")
    q = "".join("1" if v else "0" for v in f.values["in_quote"])
    #         x = 'it\'s (' + "a#b"  # don't (\ny = (1)
    assert q == "0000" + "1" * 8 + "0" * 4 + "1111" + "0" * 20
    # Brackets inside the string and the comment are not counted; the last line's are.
    assert f.values["bracket_depth"].tolist()[: text.index("\n") + 1] == [0] * (text.index("\n") + 1)
    assert f.values["bracket_depth"].tolist()[-3:] == [1, 1, 0]
    assert f.pairs.tolist() == [[4, 12], [16, 20], [37, 39]]
    assert f.quote_pair.tolist() == [True, True, False]


def test_python_triple_quotes_span_lines_and_unterminated_strings_end_with_the_line():
    text = '"""a\n\'b"""c\n"d\ne'
    f = text_features(text, "python")
    q = "".join("1" if v else "0" for v in f.values["in_quote"])
    assert q == "1111111" + "000" + "00" + "11" + "00"
    assert f.pairs.tolist() == [[0, 7]]  # the closer is the first character of the closing triple


def test_prose_and_python_read_single_quotes_differently():
    text = "'a' b"
    assert values(text, "in_quote", "prose") == [0, 0, 0, 0, 0]
    assert values(text, "in_quote", "python") == [1, 1, 0, 0, 0]


@pytest.mark.parametrize("syntax", ["prose", "python"])
def test_every_feature_has_one_value_per_character(syntax):
    text = "Ünïcode (text) \"with\" 'quotes'\n\tand # more.\n" * 3
    f = text_features(text, syntax)
    assert list(f.values) == list(FEATURES)
    for v in f.values.values():
        assert v.shape == (len(text),) and v.dtype == np.float64
    assert text_features("", syntax).values["column"].shape == (0,)


@pytest.mark.parametrize("module", ["textwrap", "json.decoder", "string"])
def test_python_strings_agree_with_the_tokenize_module(module):
    """in_quote of real Python source equals the span of tokenize's STRING tokens, less each
    token's prefix (r, b, f) and closing delimiter (an opening quote is inside, a closing one outside)."""
    import importlib
    import inspect
    import io
    import tokenize

    text = inspect.getsource(importlib.import_module(module))
    starts = np.cumsum([0] + [len(line) for line in text.splitlines(keepends=True)])
    expected = np.zeros(len(text), dtype=bool)
    opened = []  # Python 3.12+ splits an f-string into FSTRING_START ... FSTRING_END
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        a = starts[tok.start[0] - 1] + tok.start[1]
        b = starts[tok.end[0] - 1] + tok.end[1]
        kind = tokenize.tok_name[tok.type]
        if kind == "FSTRING_START":
            opened.append((a, tok.string))
            continue
        if kind == "FSTRING_END":
            a, prefix = opened.pop()
            token = prefix + tok.string
        elif kind == "STRING":
            token = tok.string
        else:
            continue
        body = token.lstrip("rbfuRBFU")
        closing = 3 if body[:3] in ('"""', "'''") else 1
        expected[a + len(token) - len(body) : b - closing] = True
    assert expected.sum() > 1000
    got = text_features(text, "python").values["in_quote"].astype(bool)
    assert (got != expected).sum() == 0
