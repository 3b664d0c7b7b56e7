"""The playground's co-writing and score views in a real headless browser (Debian's chromium).

Every number the page shows is checked against the API called directly (and the score totals
against charnn score): the co-writing choices are the model's most likely next characters with
their log-probabilities, a pick appends the character and asks again, next word / next line
keep the library's text for the same seed up to the end of the word / line, and the score view
colours each character in the band of its surprisal, with a hover box holding the API's
numbers. Skips without chromium as tests/test_server_browser.py does (CHARNN_REQUIRE_BROWSER=1
makes that a failure).
"""

from __future__ import annotations

import math
import re

import httpx
import pytest

import charnn
from charnn.infer.scorepage import COLOURS, EDGES
from charnn.serve.run import background_server
from test_server_browser import CHROMIUM_FLAGS, chromium_path

pytestmark = pytest.mark.slow

CHOICES = "#cowrite-choices"
# The choices shown are those of the text in the box (data-text says which text they follow).
CHOICES_FOLLOW_TEXT = ("document.querySelector('#cowrite-choices').dataset.text === "
                       "document.querySelector('#cowrite-text').value && "
                       "!document.querySelector('#cowrite-choices').classList.contains('stale')")
# Two voices, non-ASCII (code points, not UTF-16 units, index the text), newlines.
SCORED = "JULIET: über alles — and yet, no.\nROMEO: café au lait, naïve one?\n"


@pytest.fixture(scope="module")
def browser_and_server(tiny_run):
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with background_server({"tiny": charnn.load(tiny_run)}) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield browser, url
        finally:
            browser.close()


@pytest.fixture
def url(browser_and_server):
    return browser_and_server[1]


@pytest.fixture
def page(browser_and_server):
    browser, url = browser_and_server
    page = browser.new_page(viewport={"width": 1150, "height": 720})
    errors = []
    page.on("pageerror", lambda e: errors.append(e))
    page.goto(url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    yield page
    page.close()
    assert not errors, errors


def completion(url: str, **body) -> dict:
    r = httpx.post(url + "/v1/completions", json={"model": "tiny", **body}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def next_characters(url: str, text: str, n: int = 5) -> list[tuple[str, float]]:
    """The API's n most likely characters after `text`, most likely first."""
    top = completion(url, prompt=text, max_tokens=1, logprobs=n, temperature=0)["logprobs"]["top_logprobs"][0]
    return sorted(top.items(), key=lambda kv: -kv[1])


def shown_choices(page) -> list[dict]:
    return page.eval_on_selector_all(f"{CHOICES} button", """bs => bs.map(b => ({
        char: b.dataset.char, logprob: parseFloat(b.dataset.logprob), glyph: b.querySelector('.glyph').textContent,
        prob: b.querySelector('.prob').textContent, label: b.getAttribute('aria-label')}))""")


def check_choices(page, url: str, text: str) -> list[dict]:
    """The choices on the page are the API's for `text`: same characters, order, log-probabilities,
    percentages; whitespace drawn as a visible symbol and named in the label."""
    page.wait_for_function(CHOICES_FOLLOW_TEXT)
    assert page.input_value("#cowrite-text") == text
    shown, expected = shown_choices(page), next_characters(url, text)
    assert [c["char"] for c in shown] == [c for c, _ in expected]
    assert [c["logprob"] for c in shown] == pytest.approx([lp for _, lp in expected], abs=1e-6)
    for c, (char, lp) in zip(shown, expected):
        p = 100 * math.exp(lp)
        if p >= 1:
            assert c["prob"] == f"{p:.1f}%", c
        else:  # two significant digits
            assert float(c["prob"].rstrip("%")) == pytest.approx(p, rel=0.06), c
        visible = {" ": ("␣", "space"), "\n": ("↵", "newline"), "\t": ("⇥", "tab")}.get(char, (char, char))
        assert c["glyph"] == visible[0] and c["label"].startswith(visible[1] + ", "), c
    return shown


def test_cowrite_shows_the_next_characters_and_picks_them(page, url):
    page.click("#tab-cowrite")
    assert page.get_attribute("#tab-cowrite", "aria-selected") == "true"
    assert page.is_visible("#cowrite-text") and not page.is_visible("#prompt")
    assert page.url.endswith("#cowrite")
    # The empty text: the model reads "\n", as charnn sample starts; whitespace is among the
    # likeliest characters of the tiny corpus, and is drawn visibly.
    shown = check_choices(page, url, "")
    assert len(shown) == 5 and any(c["char"].isspace() for c in shown)

    # Typing asks again (once the typing pauses).
    page.fill("#cowrite-text", "ROMEO: caf")
    check_choices(page, url, "ROMEO: caf")

    # Clicking a choice appends it and refreshes the choices.
    second = shown_choices(page)[1]["char"]
    page.click(f"{CHOICES} button:nth-child(2)")
    check_choices(page, url, "ROMEO: caf" + second)
    assert "picked" in page.text_content("#cowrite-status")

    # From the keyboard: the row is one tab stop, a digit picks, the arrows move.
    page.focus(f"{CHOICES} button:nth-child(1)")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.parentElement.id") == "cowrite-choices"
    assert page.evaluate("document.activeElement.dataset.char") == shown_choices(page)[1]["char"]
    first = shown_choices(page)[0]["char"]
    page.keyboard.press("1")
    check_choices(page, url, "ROMEO: caf" + second + first)
    # Focus stays in the row for the next pick.
    assert page.evaluate("document.activeElement.parentElement.id") == "cowrite-choices"

    # Undo goes back one step at a time.
    page.click("#cowrite-undo")
    check_choices(page, url, "ROMEO: caf" + second)
    page.click("#cowrite-undo")
    check_choices(page, url, "ROMEO: caf")
    assert page.is_disabled("#cowrite-undo")

    # Fewer choices on request.
    page.select_option("#cowrite-n", "3")
    page.wait_for_function(f"document.querySelectorAll('{CHOICES} button').length === 3 && " + CHOICES_FOLLOW_TEXT)
    assert [c["char"] for c in shown_choices(page)] == [c for c, _ in next_characters(url, "ROMEO: caf", 3)]


@pytest.mark.parametrize("kind, end", [("word", r"\s*\S+"), ("line", r"[^\n]*\n")])
def test_cowrite_next_word_and_line_are_the_library_text_cut(page, url, tiny_run, kind, end):
    """Next word / line: the model's text for the sidebar's seed and temperature (the library's
    for the same settings), kept up to the end of the word (leading whitespace, then up to the
    next whitespace) or of the line (up to and including the newline)."""
    reference = charnn.load(tiny_run)
    page.click("#tab-cowrite")
    page.fill("#seed", "7")
    page.fill("#temperature", "0.8")
    text = "ROMEO: caf"
    page.fill("#cowrite-text", text)
    page.wait_for_function(CHOICES_FOLLOW_TEXT)
    max_tokens = int(page.get_attribute(f"#cowrite-{kind}", "data-max-tokens"))
    sampled = reference.generate(text, max_tokens, temperature=0.8, seed=7)
    m = re.match(end, sampled)
    assert m, f"the tiny model wrote no end of {kind} in {max_tokens} characters: {sampled!r}"
    page.click(f"#cowrite-{kind}")
    page.wait_for_function(f"document.querySelector('#cowrite-text').value !== {text!r}")
    assert page.input_value("#cowrite-text") == text + m.group(0)
    assert "seed 7" in page.text_content("#cowrite-status")
    check_choices(page, url, text + m.group(0))
    # Ctrl+Enter in the text asks for the next word, Ctrl+Shift+Enter for the next line.
    if kind == "word":
        before = page.input_value("#cowrite-text")
        page.focus("#cowrite-text")
        page.keyboard.press("Control+Enter")
        page.wait_for_function(f"document.querySelector('#cowrite-text').value !== {before!r}")
        assert page.input_value("#cowrite-text").startswith(before)


def test_score_view_colours_the_text_with_the_api_logprobs(page, url, tiny_run):
    # The page's bands and colours are charnn score --html's.
    assert page.evaluate("EDGES") == list(EDGES) and page.evaluate("COLOURS") == list(COLOURS)
    page.focus("#tab-generate")
    page.keyboard.press("End")  # the tabs from the keyboard
    assert page.get_attribute("#tab-score", "aria-selected") == "true" and page.is_visible("#score-text")
    page.fill("#score-text", SCORED)
    page.click("#score-go")
    page.wait_for_function("document.querySelector('#score-totals').dataset.chars > 0")

    api = completion(url, prompt=SCORED, max_tokens=0, echo=True, logprobs=5)["logprobs"]
    chars = list(SCORED)  # code points, as text_offset counts
    assert api["text_offset"] == list(range(len(chars)))
    spans = page.eval_on_selector_all("#score-output > span", """ss => ss.map(s => ({
        i: +s.dataset.i, text: s.textContent, cls: s.className,
        logprob: s.dataset.logprob === undefined ? null : parseFloat(s.dataset.logprob),
        background: getComputedStyle(s).backgroundColor}))""")
    assert len(spans) == len(chars) and "".join(s["text"] for s in spans).replace("↵", "") == SCORED
    assert spans[0]["logprob"] is None and spans[0]["cls"] == "first"
    for s, c, lp in zip(spans[1:], chars[1:], api["token_logprobs"][1:]):
        assert s["logprob"] == pytest.approx(lp, abs=1e-6)
        band = sum(-lp / math.log(2) >= e for e in EDGES)
        assert s["cls"] == f"b{band}", (c, lp)
        r, g, b = (int(COLOURS[band][k: k + 2], 16) for k in (1, 3, 5))
        assert s["background"] == f"rgb({r}, {g}, {b})"

    # Totals: charnn score's for the same text.
    doc = charnn.load(tiny_run).score(SCORED, top=5)
    totals = page.eval_on_selector("#score-totals", "t => ({...t.dataset, text: t.textContent})")
    assert int(totals["chars"]) == doc["chars"] == len(chars) - 1
    assert float(totals["bits"]) == pytest.approx(doc["total_bits"], rel=1e-6)
    assert f"{doc['bpc']:.4f} bits/char" in totals["text"]

    # The hover box: the character's probability and surprisal, and the API's 5 most likely.
    for i in (1, SCORED.index("ü"), SCORED.index("\n"), SCORED.index(" "), len(chars) - 1):
        page.hover(f"#score-output > span:nth-child({i + 1})")
        page.wait_for_function(f"!document.querySelector('#score-tip').hidden && "
                               f"document.querySelector('#score-tip').dataset.i === '{i}'")
        lp = api["token_logprobs"][i]
        tip = page.eval_on_selector("#score-tip", """t => ({
            p: t.querySelector('.tip-p').textContent, logprob: parseFloat(t.querySelector('.tip-p').dataset.logprob),
            bits: t.querySelector('.tip-bits').textContent, char: t.querySelector('.tip-char').textContent,
            top: [...t.querySelectorAll('li')].map(li => [li.dataset.char, parseFloat(li.dataset.logprob), li.className])})""")
        assert tip["logprob"] == pytest.approx(lp, abs=1e-6)
        assert tip["p"] == f"p = {math.exp(lp):.4f}" and tip["bits"] == f"{-lp / math.log(2):.2f} bits"
        assert tip["char"] == {"\n": "↵", "\t": "⇥", " ": "␣"}.get(chars[i], chars[i])
        expected = sorted(api["top_logprobs"][i].items(), key=lambda kv: -kv[1])[:5]
        assert [t[0] for t in tip["top"]] == [c for c, _ in expected]
        assert [t[1] for t in tip["top"]] == pytest.approx([v for _, v in expected], abs=1e-6)
        assert [t[2] == "this" for t in tip["top"]] == [c == chars[i] for c, _ in expected]
    page.hover("#score-output > span:nth-child(1)")
    page.wait_for_function("document.querySelector('#score-tip').dataset.i === '0'")
    assert "not scored" in page.text_content("#score-tip")

    # From the keyboard: focus the text, the arrows move from character to character and the
    # box (and a live region, for screen readers) tell each one.
    page.mouse.move(0, 0)
    page.focus("#score-go")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "score-output"
    page.keyboard.press("ArrowRight")
    page.wait_for_function("document.querySelector('#score-tip').dataset.i === '1'")
    assert page.is_visible("#score-tip")
    assert f"{math.exp(api['token_logprobs'][1]):.4f}" in page.text_content("#score-live")


def test_score_view_reports_and_skips_unknown_characters(page, url):
    page.goto("about:blank")
    page.goto(url + "/#score")  # the URL opens a view
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    assert page.is_visible("#score-text")
    page.fill("#score-text", "Ωnaïve ROMEO")
    page.click("#score-go")
    page.wait_for_function("document.querySelector('#score-status').classList.contains('error')")
    assert "outside the vocabulary" in page.text_content("#score-status") and "'Ω'" in page.text_content("#score-status")
    # "skip them": the text is scored without it; the character is shown struck through.
    page.select_option("#unknown", "skip")
    page.click("#score-go")
    page.wait_for_function("document.querySelector('#score-totals').dataset.chars > 0")
    api = completion(url, prompt="Ωnaïve ROMEO", max_tokens=0, echo=True, logprobs=5, unknown="skip")
    assert page.get_attribute("#score-output > span:nth-child(1)", "class") == "skipped"
    assert page.get_attribute("#score-output > span:nth-child(2)", "class") == "first"
    shown = page.eval_on_selector_all("#score-output > span[data-logprob]", "ss => ss.map(s => +s.dataset.logprob)")
    assert shown == pytest.approx(api["logprobs"]["token_logprobs"][1:], abs=1e-6)
