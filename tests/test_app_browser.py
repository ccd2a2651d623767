"""A headless Chromium (Debian's, through Playwright) uses the demo as an artist would: generate and
compare, reuse a gallery item's settings, get an error for an oversize request, follow a search's progress while
it runs and apply its heads, stop a search, compare structured and plain images with their noun phrases, and
make novel views of a picked toy object with the turntable playing. Screenshots go to test-artifacts/."""

import os
import re
import shutil
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _require_browser():
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "playwright is not installed"
    else:
        missing = None if CHROMIUM else "Debian's chromium is not installed"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"browser test needs a browser in CI: {missing}")
        pytest.skip(missing)


@pytest.fixture(scope="module")
def browser():
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server[0])
    page.get_by_role("button", name="Generate").wait_for()
    yield page
    page.close()


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_generate_compare_and_reuse_a_gallery_item(page):
    page.locator("#prompt textarea").fill("a blue square on the left and a yellow triangle on the right")
    page.locator("#heads textarea").fill("L0H1=0.5")
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("seed 0 · heads L0H1=0.5").wait_for(timeout=60_000)
    assert page.locator("img").count() >= 3  # slider pair + difference
    page.locator("#prompt textarea").fill("a red circle")
    page.locator("#seed input").fill("5")
    gallery = page.locator("#gallery button img, #gallery img").first
    gallery.click()
    page.get_by_role("button", name="Reuse these settings (click an image first)").click()
    prompt = page.locator("#prompt textarea")
    page.wait_for_function(
        "el => el.value.startsWith('a blue square')", arg=prompt.element_handle(), timeout=10_000
    )
    assert page.locator("#seed input").input_value() == "0"
    assert page.locator("#heads textarea").input_value() == "L0H1=0.5"
    _shot(page, "demo-generate.png")


def test_an_oversize_request_is_refused_with_the_allowed_range(page):
    page.locator("#width input").fill("128")
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("Width: 128 is not allowed; use a multiple of 4 from 4 to 64").first.wait_for(
        timeout=20_000
    )
    _shot(page, "demo-oversize-error.png")


def test_stop_shows_the_generation_as_stopped_not_as_an_error(page, server):
    """Each step made slow (1 s) so that Stop lands mid-run; before, Stop showed a red "Error"."""
    demo, pipe = server[1], server[1].pipe

    def slow(*args, callback_on_step_end, **kwargs):
        def step(*step_args):
            time.sleep(1.0)
            return callback_on_step_end(*step_args)

        return pipe(*args, callback_on_step_end=step, **kwargs)

    demo.pipe = slow
    try:
        page.locator("#heads textarea").fill("L0H1")
        page.get_by_role("button", name="Generate").click()
        page.wait_for_timeout(1500)
        page.get_by_role("button", name="Stop", exact=True).click()
        note = page.locator("#note")
        page.wait_for_function(
            "el => el.innerText.includes('Stopped')", arg=note.element_handle(), timeout=30_000
        )
        assert "nothing made" in note.inner_text()
        assert not page.get_by_text("Error", exact=True).is_visible()
        _shot(page, "demo-generate-stopped.png")
    finally:
        demo.pipe = pipe


def _search_inputs(page, prompts: str, seeds: int, k: int = 1, rounds: int = 1) -> None:
    page.get_by_role("tab", name="Head search").click()
    page.locator("#search-seeds input").wait_for()
    page.locator("#search-seeds input").fill(str(seeds))
    page.locator("#search-k input").fill(str(k))
    page.locator("#search-rounds input").fill(str(rounds))
    page.locator("#search-steps input").fill("2")
    page.locator("#search-prompts textarea").fill(prompts)


def _status(page, pattern: str, timeout: float) -> str:
    """The search's progress box once its text matches `pattern` (a JavaScript regular expression)."""
    box = page.locator("#search-status textarea")
    page.wait_for_function(
        "([el, p]) => new RegExp(p).test(el.value)", arg=[box.element_handle(), pattern], timeout=timeout
    )
    return box.input_value()


def test_a_search_shows_its_progress_while_it_runs_and_its_heads_apply(page):
    _search_inputs(page, "a red circle\na blue square", seeds=1)
    page.get_by_role("button", name="Search", exact=True).click()
    running = _status(page, r"images made .* step \d of 2", timeout=60_000)
    _shot(page, "demo-search-progress.png")  # mid-run: the progress box and the bar over the head map
    assert re.search(r"(Unguided images|Head map|Greedy rounds).*: \d+ of \d+ images made", running), running
    done = _status(page, "^(Done|Failed|Stopped)", timeout=180_000)
    assert done.startswith("Done in"), done
    page.get_by_text("Round 1: added").wait_for(timeout=10_000)
    found = page.locator("#found-heads textarea")
    page.wait_for_function("el => el.value.length > 0", arg=found.element_handle(), timeout=30_000)
    heads = found.input_value()
    _shot(page, "demo-search.png")
    page.get_by_role("button", name="Use these heads in the Generate tab").click()
    page.get_by_role("tab", name="Generate").click()
    box = page.locator("#heads textarea")
    page.wait_for_function("([el, v]) => el.value === v", arg=[box.element_handle(), heads], timeout=10_000)
    assert "=0.5" in heads


def test_stop_ends_a_search_as_stopped_not_as_an_error(page):
    _search_inputs(page, "a red circle\na blue square\na green triangle", seeds=4, k=2, rounds=3)
    page.get_by_role("button", name="Search", exact=True).click()
    _status(page, "images made", timeout=60_000)
    page.get_by_role("button", name="Stop search").click()
    stopped = _status(page, "^(Done|Failed|Stopped)", timeout=60_000)
    assert stopped.startswith("Stopped after"), stopped
    assert not page.get_by_text("Error", exact=True).is_visible()
    _shot(page, "demo-search-stopped.png")


def test_structured_prompts_compare_plain_and_structured_and_show_the_phrases(page):
    page.get_by_role("tab", name="Structured prompts").click()
    page.locator("#structured-prompt textarea").fill(
        "a red triangle on the left and a blue square on the right"
    )
    page.locator("#structured-steps input").fill("2")
    page.get_by_role("button", name="Compare").click()
    page.get_by_text("Noun phrases found").wait_for(timeout=180_000)  # the toy SD1.5 loads on first use
    phrases = page.locator("#structured-phrases").inner_text()
    assert "a red triangle" in phrases and "a blue square" in phrases
    for image in ("#structured-image img", "#plain-image img"):
        page.locator(image).wait_for(timeout=30_000)
    assert "+0.052 [+0.025, +0.080]" in page.locator("#structured-note").inner_text()
    _shot(page, "demo-structured.png")


def test_novel_views_of_a_picked_toy_object_with_the_turntable_playing(page):
    page.get_by_role("tab", name="Novel views").click()
    page.locator("#toy-object input").click()
    page.get_by_role("option", name="object-1: 2 cubes + cylinder + cone").click()
    page.wait_for_function("() => document.querySelectorAll('#input-views img').length >= 6", timeout=30_000)
    page.locator("#views-mode").get_by_text("orbit", exact=True).click()
    page.locator("#views-frames input").fill("4")
    page.locator("#views-steps input").fill("2")
    page.get_by_role("button", name="Make views").click()
    turntable = page.locator("#turntable img")
    turntable.wait_for(timeout=180_000)
    assert ".gif" in (turntable.get_attribute("src") or "")
    page.wait_for_function(
        "() => document.querySelectorAll('#views-gallery img').length >= 4", timeout=30_000
    )
    frames = {turntable.screenshot() for _ in range(6) if not page.wait_for_timeout(150)}
    assert len(frames) > 1  # the turntable plays: what is shown changes by itself
    _shot(page, "demo-novel-views.png")
