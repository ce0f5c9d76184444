"""The whole flow in a real browser: Debian's chromium, driven by Playwright, against
`python app.py` on 127.0.0.1 with the embedded model. Two facts and fast settings keep it
to a few minutes on 2 CPU cores. Screenshots go to MEOW_TEST_ARTIFACTS (default
tests/artifacts/, not committed): look at them when something fails.
"""

import os
import shutil
import time
from pathlib import Path

import pytest

from apprunner import ROOT, running_app
from conftest import in_ci

pytestmark = pytest.mark.embedded
CHROMIUM = shutil.which("chromium")  # Debian's /usr/bin/chromium (apt-get install chromium)
LONG = 300_000  # ms: model steps on a shared 2-core CPU

if CHROMIUM is None:
    missing = "chromium is not on PATH (apt-get install chromium; .ci/run does)"
    if in_ci():
        pytest.fail(f"{missing}: CI must run the browser test", pytrace=False)
    pytest.skip(missing, allow_module_level=True)
from playwright.sync_api import expect, sync_playwright  # noqa: E402

expect.set_options(timeout=LONG)


@pytest.fixture(scope="module")
def shots():
    folder = Path(os.environ.get("MEOW_TEST_ARTIFACTS") or ROOT / "tests" / "artifacts")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    # The usual MEOW_HOME, so the embedded model's one-time conversion is reused; the
    # run folders go to a temporary one.
    env = {"MEOW_MODEL": "embedded", "MEOW_RUNS": str(tmp_path_factory.mktemp("runs"))}
    with running_app(env, timeout=300) as u:
        yield u


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--headless", "--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def _tab(page, name):
    page.get_by_role("tab", name=name).click()


def _set_cell(page, table_id, row_label, value):
    """Type a new value into the cell next to `row_label` in a two-column table: select
    the cell, Enter opens its editor, fill it, Enter saves (retried: the grid re-renders)."""
    cell = page.locator(f"#{table_id} [role=row]").filter(has_text=row_label).locator("[role=gridcell]").nth(1)
    for _ in range(5):
        cell.click()
        page.wait_for_timeout(300)
        page.keyboard.press("Enter")
        page.wait_for_timeout(300)
        editor = cell.locator("input, textarea")
        if editor.count():
            editor.first.fill(value)
            editor.first.press("Enter")
            page.wait_for_timeout(300)
            page.keyboard.press("Escape")
            if cell.inner_text().split("\n")[0].strip() == value:
                return
    raise AssertionError(f"could not set {row_label} to {value}: {cell.inner_text()!r}")


def _bot_text(page, chat_id):
    bots = page.locator(f"#{chat_id} [data-testid='bot']")
    return bots.last.inner_text() if bots.count() else ""


@pytest.fixture
def page(browser, shots):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(LONG)
    yield page
    page.screenshot(path=shots / "last.png", full_page=True)  # where it stopped, pass or fail
    page.close()


def test_whole_flow_in_a_browser(url, page, shots):
    page.goto(url)
    # 1. Facts: a bundled set, the first two facts (Paris, Shakespeare).
    page.get_by_label("Use the first N (0 = all)").fill("2")
    page.get_by_role("button", name="Load set").click()
    expect(page.get_by_text("2 facts from 'Demo: 8 famous facts'")).to_be_visible()
    expect(page.get_by_text("What is the capital of France?").first).to_be_visible()
    page.screenshot(path=shots / "1-facts.png", full_page=True)
    # 2. Model: what is loaded.
    _tab(page, "2. Model")
    expect(page.get_by_text("Loaded: SmolLM2-135M-Instruct")).to_be_visible()
    # 3. Invert.
    _tab(page, "3. Invert")
    page.get_by_role("button", name="Write false answers").click()
    expect(page.get_by_text("false answers written for 2 facts")).to_be_visible(timeout=120_000)
    page.screenshot(path=shots / "3-invert.png", full_page=True)
    # 4. MEMO & selection.
    _tab(page, "4. MEMO & selection")
    page.get_by_role("button", name="Score with MEMO").click()
    expect(page.get_by_text("MEMO measures how easily")).to_be_visible()
    expect(page.locator("input[type=checkbox]:checked").first).to_be_attached()
    page.screenshot(path=shots / "4-memo.png", full_page=True)
    # 5. Unlearn with fast settings, and watch the loss curve appear.
    _tab(page, "5. Unlearn")
    _set_cell(page, "settings", "epochs", "2")
    _set_cell(page, "settings", "num_batch", "4")
    _set_cell(page, "settings", "batch_size", "2")  # 8 small steps: enough to forget both facts
    page.get_by_role("button", name="Unlearn", exact=True).click()
    # (the status line and Gradio's progress bar both say it, once the bar has caught up)
    expect(page.get_by_text("Training: step").first).to_be_visible()
    page.screenshot(path=shots / "5-training.png", full_page=True)
    expect(page.get_by_text("Done. Run '")).to_be_visible()
    expect(page.get_by_text("everyday questions answered correctly")).to_be_visible()
    expect(page.get_by_text("forget questions answered correctly")).to_be_visible()
    page.screenshot(path=shots / "5-done.png", full_page=True)
    # 6. Compare: one prompt, both answers stream in.
    _tab(page, "6. Compare")
    verdicts = page.locator("#verdicts")
    expect(verdicts).to_contain_text("What is the capital of France?")
    expect(verdicts).to_contain_text("forgotten")
    page.get_by_placeholder("Ask both models something").fill("What is the capital of France?")
    page.get_by_role("button", name="Send").click()
    # Watch both answers grow until neither has changed for 5 s.
    seen_left, seen_right, last, still_since = set(), set(), None, time.time()
    deadline = time.time() + 180
    while time.time() < deadline:
        now = (_bot_text(page, "chat-left"), _bot_text(page, "chat-right"))
        seen_left.add(now[0])
        seen_right.add(now[1])
        if now != last:
            last, still_since = now, time.time()
        elif all(now) and time.time() - still_since > 5:
            break
        time.sleep(0.05)
    left, right = _bot_text(page, "chat-left"), _bot_text(page, "chat-right")
    page.screenshot(path=shots / "6-chat.png", full_page=True)
    assert "Paris" in left, left  # the original still knows
    assert "Paris" not in right and right.strip(), right  # the unlearned one does not
    # Streaming: partial answers were on screen before the final ones.
    assert len(seen_left - {"", left}) >= 1 and len(seen_right - {"", right}) >= 1, (seen_left, seen_right)
    # One-click probe: the forgotten questions, with the verdict table.
    page.get_by_role("button", name="Ask the forgotten questions").click()
    expect(page.get_by_text("Asked 2 questions to both models")).to_be_visible()
    expect(verdicts.locator("[role=row]")
           .filter(has_text="What is the capital of France?").first).to_contain_text("forgotten")
    page.screenshot(path=shots / "6-verdicts.png", full_page=True)
    # 7. Publish: a zip of the run.
    _tab(page, "7. Publish")
    page.get_by_role("button", name="Make a zip of the last run").click()
    expect(page.get_by_text("the unlearned model (a Hugging Face checkpoint)")).to_be_visible()
    # ...and a preview of what a push to the Hub would upload, with the model card.
    page.get_by_label("Repository (USER/NAME; created if missing)").fill("me/meow-demo")
    page.get_by_role("button", name="Preview files").click()
    expect(page.get_by_text("files would be uploaded to me/meow-demo")).to_be_visible()
    expect(page.get_by_text("Intended use and limits")).to_be_visible()
    page.screenshot(path=shots / "7-publish.png", full_page=True)


def test_two_browser_sessions_keep_their_own_facts(url, browser, shots):
    """Two separate browser sessions at once: each sees only the facts it loaded."""
    pages = [browser.new_context(viewport={"width": 1400, "height": 1000}).new_page() for _ in range(2)]
    for p in pages:
        p.set_default_timeout(LONG)
        p.goto(url)
    a, b = pages
    a.get_by_label("Use the first N (0 = all)").fill("2")
    a.get_by_role("button", name="Load set").click()
    expect(a.get_by_text("2 facts from 'Demo: 8 famous facts'")).to_be_visible()
    b.get_by_label("Bundled set").click()
    b.get_by_role("option", name="Fictitious person's PII (6)").click()
    b.get_by_role("button", name="Load set").click()
    expect(b.get_by_text("from 'Fictitious person's PII (6)'")).to_be_visible()
    b.screenshot(path=shots / "two-sessions-b.png", full_page=True)
    a.screenshot(path=shots / "two-sessions-a.png", full_page=True)
    expect(b.get_by_text("What is the capital of France?")).to_have_count(0)
    expect(a.get_by_text("What is the capital of France?").first).to_be_visible()
    expect(a.get_by_text("2 facts from 'Demo: 8 famous facts'")).to_be_visible()
    expect(a.get_by_text("from 'Fictitious person's PII (6)'")).to_have_count(0)
    for p in pages:
        p.context.close()


def test_keys_and_facts_typed_in_are_not_kept_in_the_browser(url, browser, shots):
    """Gradio can keep each call's inputs in the browser's localStorage (its run history), a
    password field's key included: the app turns that off, so a key typed in stays nowhere."""
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(LONG)
    page.goto(url)
    page.get_by_label("Use the first N (0 = all)").fill("2")
    page.get_by_role("button", name="Load set").click()
    expect(page.get_by_text("2 facts from 'Demo: 8 famous facts'")).to_be_visible()
    _tab(page, "3. Invert")
    page.get_by_label("OpenAI-compatible API").check()
    page.get_by_label("Base URL (empty = OpenAI)").fill("http://127.0.0.1:9/v1")
    page.get_by_label("Model name").fill("m")
    page.get_by_label("API key (or OPENAI_API_KEY; never stored)").fill("sk-test-NOT-KEPT-4711")
    page.get_by_role("button", name="Write false answers").click()
    expect(page.get_by_text("cannot reach http://127.0.0.1:9/v1")).to_be_visible(timeout=60_000)
    page.wait_for_timeout(1000)  # (the history is written when the call ends)
    stored = page.evaluate("() => JSON.stringify(Object.entries(localStorage))")
    page.screenshot(path=shots / "keys-not-kept.png", full_page=True)
    assert "sk-test-NOT-KEPT-4711" not in stored
    assert "capital of France" not in stored and "run-history" not in stored, stored[:500]
    page.context.close()
