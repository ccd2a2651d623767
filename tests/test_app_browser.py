"""A headless Chromium (Debian's, through Playwright) uses the demo as an artist would: generate and
compare, reuse a gallery item's settings, get an error for an oversize request, run a 1-round search and
apply its heads. Screenshots go to test-artifacts/."""

import os
import shutil
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


def test_a_one_round_search_and_its_heads_applied(page):
    page.get_by_role("tab", name="Head search").click()
    page.locator("#search-seeds input").wait_for()
    page.locator("#search-seeds input").fill("1")
    page.locator("#search-k input").fill("1")
    page.locator("#search-rounds input").fill("1")
    page.locator("#search-steps input").fill("2")
    page.locator("#search-prompts textarea").fill("a red circle")
    page.get_by_role("button", name="Search").click()
    page.get_by_text("Round 1").wait_for(timeout=120_000)
    found = page.locator("#found-heads textarea")
    page.wait_for_function("el => el.value.length > 0", arg=found.element_handle(), timeout=30_000)
    heads = found.input_value()
    _shot(page, "demo-search.png")
    page.get_by_role("button", name="Use these heads in the Generate tab").click()
    page.get_by_role("tab", name="Generate").click()
    box = page.locator("#heads textarea")
    page.wait_for_function("([el, v]) => el.value === v", arg=[box.element_handle(), heads], timeout=10_000)
    assert "=0.5" in heads
