"""The README's pictures of the playground's Co-write and Score views, from a served run.

    python docs/screenshots.py runs/tinyshakespeare            # writes docs/cowrite.png, docs/score-view.png
    python docs/screenshots.py RUN --text passage.txt --out /tmp/shots

Serves RUN on 127.0.0.1 (a free port, as the tests do) and drives Debian's chromium
(/usr/bin/chromium) with playwright. Co-write: the prompt, then the model's next line and next
word (sampled with --seed at temperature 0.8), then the top choice picked twice from the
keyboard, and the choices that follow. Score: the text (by default a passage of the run's
validation split) scored, with the hover box of its most surprising character in the first
lines. Needs the [test] extra (playwright) and `apt-get install chromium`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import charnn
from charnn.checkpoint import load_run
from charnn.data.source import validation_text
from charnn.serve.run import background_server

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"
CHOICES_FOLLOW_TEXT = ("document.querySelector('#cowrite-choices').dataset.text === "
                       "document.querySelector('#cowrite-text').value")


def passage(run: Path, chars: int = 640) -> str:
    """About `chars` characters of the run's validation split, from a paragraph's start to a line's end."""
    text = validation_text(load_run(run, "cpu").files)
    start = text.find("\n\n") + 2
    piece = text[start: start + chars]
    return piece[: piece.rfind("\n") + 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--text", type=Path, help="the text of the score view (default: a passage of the validation split)")
    ap.add_argument("--prompt", default=PROMPT, help="the co-writing view's starting text")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args()
    text = args.text.read_text(encoding="utf-8") if args.text else passage(args.run)

    from playwright.sync_api import sync_playwright

    with background_server({args.run.name: charnn.load(args.run)}) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1150, "height": 760})
            page.goto(url + "/#cowrite")
            page.wait_for_function("document.querySelectorAll('#model option').length > 0")
            page.fill("#seed", str(args.seed))
            page.fill("#cowrite-text", args.prompt)
            page.wait_for_function(CHOICES_FOLLOW_TEXT)
            for kind in ("line", "word"):
                before = page.input_value("#cowrite-text")
                page.click(f"#cowrite-{kind}")
                page.wait_for_function(f"document.querySelector('#cowrite-text').value !== {before!r}")
                page.wait_for_function(CHOICES_FOLLOW_TEXT)
            page.focus("#cowrite-choices button")
            for _ in range(2):
                before = page.input_value("#cowrite-text")
                page.keyboard.press("1")
                page.wait_for_function(f"document.querySelector('#cowrite-text').value !== {before!r} && "
                                       + CHOICES_FOLLOW_TEXT)
            page.screenshot(path=str(args.out / "cowrite.png"))

            page.click("#tab-score")
            page.fill("#score-text", text)
            page.click("#score-go")
            page.eval_on_selector("#score-text", "t => { t.scrollTop = 0; }")
            page.wait_for_function("document.querySelector('#score-totals').dataset.chars > 0")
            # The most surprising character of the first lines, so that its box fits in the picture.
            first_lines = len("".join(text.splitlines(keepends=True)[:6]))
            worst = page.eval_on_selector_all(
                "#score-output > span[data-logprob]",
                f"ss => ss.filter(s => +s.dataset.i < {first_lines})"
                ".reduce((a, s) => (+s.dataset.logprob < +a.dataset.logprob ? s : a)).dataset.i")
            page.hover(f"#score-output > span:nth-child({int(worst) + 1})")
            page.screenshot(path=str(args.out / "score-view.png"))
        finally:
            browser.close()
    print(f"wrote {args.out / 'cowrite.png'} and {args.out / 'score-view.png'}")


if __name__ == "__main__":
    main()
