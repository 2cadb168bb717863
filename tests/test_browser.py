"""The page in a real browser: headless Debian Chromium driven by Playwright, against `app.py`.

The browser is /usr/bin/chromium (never downloaded); the server is conftest's `server` fixture on
tiny random-weight models, so generated images are noise but every step of the page runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium's own connections hit the closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ASTRONAUT = Path(__file__).resolve().parent.parent / "assets" / "astronaut.png"
TITLE = "ControlNet for Stable Diffusion 1.5"
MAX_SEED = 2**31 - 1
GENERATE_TIMEOUT_MS = 120_000  # tiny models on CPU take seconds; shared CI runners can be slow
STEPS = 5
THUMBNAIL = re.compile(r"^Thumbnail \d+ of \d+$")  # the aria-label of a gallery item


@pytest.fixture
def page():
    """A fresh page in headless Chromium; checked before `server` so a skip costs nothing."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: apt-get install chromium (or `make system-deps`)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        yield page
        browser.close()


def log_tail(server, lines: int = 60) -> str:
    return "\n".join(server.log_text().splitlines()[-lines:])


def check_canny_tab(page: Page, server, tmp_path: Path) -> Path:
    page.goto(server.url)
    expect(page).to_have_title(TITLE)
    expect(page.get_by_role("heading", level=1)).to_have_text(TITLE)
    expect(page.locator("#engine-info")).to_contain_text(re.compile(r"SDPA|xformers"))

    # Gradio renders only the selected tab's panel; Canny is the first tab.
    expect(page.get_by_role("tab", selected=True)).to_have_text("Canny")
    panel = page.get_by_role("tabpanel").filter(visible=True)
    thumbnails = panel.get_by_role("button", name=THUMBNAIL)
    errors = page.get_by_test_id("toast-body").filter(has_text="Error")

    # Open the accordion early: an edit typed into a slider right after it first mounts can be
    # undone by Gradio's initial value sync (about 1 time in 10 when typing at once).
    panel.get_by_role("button", name="Advanced options").click()

    # The file input is hidden (display: none) inside the image block; set_input_files still works.
    image = panel.get_by_test_id("image")
    image.locator("input[type=file]").set_input_files(ASTRONAUT)
    # Once uploaded, the preview is served back from the server's file route.
    uploaded = re.compile(r"/gradio_api/file=.*/astronaut\.png$")
    expect(image.locator("img")).to_have_attribute("src", uploaded)

    started = time.monotonic()
    panel.get_by_role("button", name="Preview map").click()
    expect(thumbnails.first.or_(errors.first)).to_be_visible(timeout=GENERATE_TIMEOUT_MS)
    assert not errors.count(), errors.all_inner_texts()
    expect(thumbnails).to_have_count(1)
    expect(panel.get_by_role("img", name="Control map")).to_be_visible()
    preview_s = time.monotonic() - started

    # Fewer denoising steps keep the run short on a busy CPU; the defaults are the app's business.
    steps = panel.get_by_role("spinbutton", name="Steps")
    steps.fill(str(STEPS))
    steps.press("Enter")
    expect(panel.get_by_role("slider", name="Steps")).to_have_value(str(STEPS))
    # exact: the accordion also holds "Added prompt", "Negative prompt" and "My prompt is ...".
    panel.get_by_role("textbox", name="Prompt", exact=True).fill("an astronaut on the moon")

    started = time.monotonic()
    panel.get_by_role("button", name="Run", exact=True).click()
    expect(thumbnails.nth(1).or_(errors.first)).to_be_visible(timeout=GENERATE_TIMEOUT_MS)
    assert not errors.count(), errors.all_inner_texts()
    expect(thumbnails).to_have_count(2)
    alts = [thumbnail.get_by_role("img").get_attribute("alt") for thumbnail in thumbnails.all()]
    seed = panel.get_by_role("spinbutton", name="Seed used").input_value()
    assert re.fullmatch(r"\d+", seed) and 0 <= int(seed) <= MAX_SEED, f"seed used: {seed!r}"
    assert alts == ["Control map", f"Image 1 · seed {seed}"]
    run_s = time.monotonic() - started
    print(f"preview map: {preview_s:.1f} s, run ({STEPS} steps): {run_s:.1f} s")

    # The image as the page serves it carries its settings: change some, drop it, get them back.
    source = thumbnails.nth(1).get_by_role("img").get_attribute("src")
    made_here = tmp_path / "made_here.png"
    made_here.write_bytes(page.request.get(source).body())
    prompt = panel.get_by_role("textbox", name="Prompt", exact=True)
    prompt.fill("something else")
    steps.fill("9")
    steps.press("Enter")
    expect(panel.get_by_role("slider", name="Steps")).to_have_value("9")
    panel.locator(".restore-settings input[type=file]").set_input_files(made_here)
    expect(prompt).to_have_value("an astronaut on the moon", timeout=30_000)
    expect(panel.get_by_role("slider", name="Steps")).to_have_value(str(STEPS))
    seed_box = panel.get_by_role("spinbutton", name=re.compile(r"^Seed \(-1"))
    expect(seed_box).to_have_value(seed)

    screenshot = tmp_path / "canny.png"
    page.screenshot(path=screenshot, full_page=True)
    return screenshot


@pytest.mark.browser
def test_canny_tab_previews_and_generates(page: Page, server, tmp_path: Path):
    """Upload a photo on the Canny tab, preview its map, then Run: the gallery holds the map and
    one image, the seed used is shown, and a full-page screenshot is saved for a look."""
    try:
        screenshot = check_canny_tab(page, server, tmp_path)
    except (AssertionError, PlaywrightError) as error:
        with contextlib.suppress(PlaywrightError):
            page.screenshot(path=tmp_path / "failure.png", full_page=True)
        pytest.fail(
            f"{error}\nscreenshot: {tmp_path / 'failure.png'}\n"
            f"--- server log (tail) ---\n{log_tail(server)}"
        )
    print(f"screenshot: {screenshot}")
    assert screenshot.stat().st_size > 10_000
