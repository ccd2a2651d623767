"""A headless Chromium types a prompt, clicks Generate and waits for both images (screenshot kept as artifact)."""

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


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


def test_browser_generates_two_images(server):
    _require_browser()
    from playwright.sync_api import sync_playwright

    url, _ = server
    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync"]  # fmt: skip
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            box = page.get_by_label("Prompt", exact=True)
            box.fill("a blue square on the left and a yellow triangle on the right")
            page.get_by_role("button", name="Generate").click()
            images = page.locator("img[src*='/file=']")
            images.nth(1).wait_for(timeout=60_000)
            assert images.count() >= 2
            page.get_by_text("seed 0").wait_for(timeout=10_000)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "demo-generate.png"), full_page=True)
        finally:
            browser.close()
