"""The playground page in a real headless browser: Debian's chromium driven by playwright.

It loads /, types a prompt, clicks Generate, watches the text stream in, checks it is the
library's text for the same seed, saves a screenshot, and stops a long generation with the
Stop button. .ci/run installs chromium and sets CHARNN_REQUIRE_BROWSER=1, so in CI a missing
browser is a failure; elsewhere the test skips without it (CHARNN_SKIP_BROWSER=1 skips it
always). CHARNN_SCREENSHOT=PATH also saves the screenshot there (that is how docs/playground.png was made).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

import charnn
from charnn.serve.run import background_server
from conftest import slowed

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str:
    """Debian's chromium. Where it is missing the test skips, except where
    CHARNN_REQUIRE_BROWSER=1 (set by .ci/run, which installs it) makes that a failure."""
    if os.environ.get("CHARNN_SKIP_BROWSER") == "1":
        pytest.skip("CHARNN_SKIP_BROWSER=1")
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        message = "Debian's chromium is not installed: apt-get install -y chromium"
        if os.environ.get("CHARNN_REQUIRE_BROWSER") == "1":
            pytest.fail(message + " (CHARNN_REQUIRE_BROWSER=1)")
        pytest.skip(message)
    return path


@pytest.mark.slow
def test_playground_streams_text_and_stops(tiny_run, tmp_path):
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    reference = charnn.load(tiny_run)
    # CHARNN_PLAYGROUND_RUN: a better-trained (and slower) run for the docs' screenshot, at full
    # speed; the tiny run is slowed to a few hundred characters a second to stream visibly.
    run = Path(os.environ.get("CHARNN_PLAYGROUND_RUN", tiny_run))
    model = charnn.load(run) if run != tiny_run else slowed(charnn.load(run), 0.003)
    with background_server({run.name: model}) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1150, "height": 720})
            page.goto(url + "/")
            page.wait_for_function("document.querySelectorAll('#model option').length > 0")
            assert page.input_value("#model") == run.name
            prompt = "ROMEO:\n" if run == tiny_run else "ROMEO:\nI"
            page.fill("#prompt", prompt)
            page.fill("#temperature", "0.8")
            page.fill("#max_tokens", "400")
            page.fill("#seed", "7")
            page.click("#generate")
            # Streaming: text shows up while the Stop button is still live, then grows to the end.
            page.wait_for_function("document.querySelector('#output .generated').textContent.length > 20")
            early = page.text_content("#output .generated")
            assert page.is_enabled("#stop-button") and not page.is_enabled("#generate")
            page.wait_for_function("document.querySelector('#status').textContent.startsWith('done')",
                                   timeout=30_000)
            text = page.text_content("#output .generated")
            assert 20 < len(early) < len(text) == 400 and text.startswith(early)
            if run == tiny_run:
                assert text == reference.generate(prompt, 400, temperature=0.8, seed=7)
            assert page.text_content("#output .prompt") == prompt
            assert "seed 7" in page.text_content("#status")
            shot = tmp_path / "playground.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
            if os.environ.get("CHARNN_SCREENSHOT"):
                shutil.copy(shot, os.environ["CHARNN_SCREENSHOT"])

            # Stop: the browser aborts the request; the server drops the stream.
            page.fill("#max_tokens", "4000")
            page.click("#generate")
            page.wait_for_function("document.querySelector('#output .generated').textContent.length > 10")
            page.click("#stop-button")
            page.wait_for_function("document.querySelector('#status').textContent.startsWith('stopped')")
            assert page.is_enabled("#generate")
            deadline = time.monotonic() + 5
            while httpx.get(url + "/health").json()["active"] and time.monotonic() < deadline:
                time.sleep(0.05)
            health = httpx.get(url + "/health").json()
            assert health["active"] == 0 and health["generated"] < 400 + 2000
        finally:
            browser.close()
