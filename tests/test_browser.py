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

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Page, expect, sync_playwright

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


def open_tab(page: Page, name: str) -> Locator:
    """Select the tab `name` (from the "More tabs" menu where a narrow screen hides it); its
    panel."""
    expect(page.get_by_role("tab", selected=True)).to_be_visible()  # the page has rendered
    tab = page.get_by_role("tab", name=name, exact=True)
    if tab.count() and tab.is_visible():
        tab.click()
    else:
        page.get_by_role("button", name="More tabs").click()
        page.get_by_role("button", name=name, exact=True).click()
    expect(page.get_by_role("tab", name=name, exact=True)).to_have_attribute(
        "aria-selected", "true"
    )
    return page.get_by_role("tabpanel").filter(visible=True)


def log_tail(server, lines: int = 60) -> str:
    return "\n".join(server.log_text().splitlines()[-lines:])


def check_canny_tab(page: Page, server, tmp_path: Path) -> Path:
    page.goto(server.url)
    expect(page).to_have_title(TITLE)
    expect(page.get_by_role("heading", level=1)).to_have_text(TITLE)
    page.get_by_role("button", name="System").click()  # the developer's details, collapsed
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


def run_check(check, page: Page, server, tmp_path: Path):
    """`check(page, server, tmp_path)`; on failure, a screenshot and the server log's tail in the
    message."""
    try:
        return check(page, server, tmp_path)
    except (AssertionError, PlaywrightError) as error:
        with contextlib.suppress(PlaywrightError):
            page.screenshot(path=tmp_path / "failure.png", full_page=True)
        pytest.fail(
            f"{error}\nscreenshot: {tmp_path / 'failure.png'}\n"
            f"--- server log (tail) ---\n{log_tail(server)}"
        )


@pytest.mark.browser
def test_canny_tab_previews_and_generates(page: Page, server, tmp_path: Path):
    """Upload a photo on the Canny tab, preview its map, then Run: the gallery holds the map and
    one image, the seed used is shown, and a full-page screenshot is saved for a look."""
    screenshot = run_check(check_canny_tab, page, server, tmp_path)
    print(f"screenshot: {screenshot}")
    assert screenshot.stat().st_size > 10_000


# ---- the Compose tab's drop zone -----------------------------------------------------------------
def compose_unit(condition: str, annotator: str, strength: float, **extra) -> dict:
    unit = {"condition": condition, "annotator": annotator, "strength": strength}
    unit |= {"control_start": 0.0, "control_end": 1.0, "detect_resolution": None, "params": {}}
    return unit | extra


def settings_png(path: Path, units: list[dict], **shared) -> Path:
    """A PNG as this app writes it (png_info's chunks), for a restore without a run."""
    from png_info import save_png

    parameters = {"app": "controlnet-demo", "seed": 77, "steps": 7, "units": units} | shared
    return save_png(np.zeros((8, 8, 3), np.uint8), path, parameters)


def drop_on_compose(page: Page, server, png: Path):
    """Open the Compose tab with every accordion open, drop `png` on its restore zone; the panel,
    once the restore's message is shown."""
    page.goto(server.url)
    panel = open_tab(page, "Compose")
    settings = panel.get_by_role("button", name="Annotator settings")
    expect(settings).to_have_count(3)
    for index in range(3):
        settings.nth(index).click()
    panel.get_by_role("button", name="Advanced options").click()
    # What the restore must change: a unit switched on, another prompt.
    panel.get_by_role("checkbox", name="Unit 3 on").check()
    panel.get_by_role("textbox", name="Prompt", exact=True).fill("something else")
    panel.locator(".restore-settings input[type=file]").set_input_files(png)
    done = page.get_by_test_id("toast-body").filter(has_text=re.compile("Restored|Error"))
    expect(done.first).to_be_visible(timeout=30_000)
    assert not done.filter(has_text="Error").count(), done.all_inner_texts()
    expect(done.first).to_contain_text("Drop the images again.")
    return panel


def check_restored_composition(page: Page, server, tmp_path: Path) -> None:
    pose = compose_unit(
        "openpose",
        "mediapipe_pose",
        0.7,
        detect_resolution=256,
        params={"include_hands": True, "include_face": False},
    )
    canny = compose_unit(
        "canny", "canny", 0.45, params={"low_threshold": 42, "high_threshold": 210}
    )
    png = settings_png(tmp_path / "composition.png", [pose, canny], prompt="a robot chef")
    panel = drop_on_compose(page, server, png)

    expect(panel.get_by_role("textbox", name="Prompt", exact=True)).to_have_value("a robot chef")
    expect(panel.get_by_role("spinbutton", name="Steps")).to_have_value("7")
    conditions = panel.get_by_role("combobox", name="Condition")
    expect(conditions.nth(0)).to_have_value("Pose")
    expect(conditions.nth(1)).to_have_value("Canny")
    expect(panel.get_by_role("checkbox", name="Unit 3 on")).not_to_be_checked()
    strengths = panel.get_by_role("spinbutton", name="number input for Strength", exact=True)
    expect(strengths.nth(0)).to_have_value("0.7")
    expect(strengths.nth(1)).to_have_value("0.45")
    annotators = panel.get_by_role("combobox", name="Annotator", exact=True)
    expect(annotators.nth(0)).to_have_value("Pose (MediaPipe, no download)")
    expect(annotators.nth(1)).to_have_value("Canny edges")
    # Unit 2's thresholds come first (unit 3 keeps Canny's defaults); only unit 1 has a resolution.
    expect(panel.get_by_role("spinbutton", name="Canny low threshold").first).to_have_value("42")
    expect(panel.get_by_role("spinbutton", name="Canny high threshold").first).to_have_value("210")
    expect(panel.get_by_role("checkbox", name="Hands")).to_be_checked()
    resolution = panel.get_by_role("spinbutton", name="Annotator resolution")
    expect(resolution).to_have_count(1)
    expect(resolution).to_have_value("256")
    # A handler firing on the restored condition or annotator would reset the resolution to
    # MediaPipe's 512 a moment later: look again.
    page.wait_for_timeout(1500)
    expect(resolution).to_have_value("256")
    expect(annotators.nth(0)).to_have_value("Pose (MediaPipe, no download)")


def check_restored_single_condition(page: Page, server, tmp_path: Path) -> None:
    canny = compose_unit("canny", "canny", 0.8, params={"low_threshold": 77, "high_threshold": 200})
    png = settings_png(tmp_path / "canny.png", [canny], prompt="a house by a lake")
    panel = drop_on_compose(page, server, png)

    expect(panel.get_by_role("textbox", name="Prompt", exact=True)).to_have_value(
        "a house by a lake"
    )
    expect(panel.get_by_role("combobox", name="Condition").first).to_have_value("Canny")
    expect(
        panel.get_by_role("spinbutton", name="number input for Strength", exact=True).first
    ).to_have_value("0.8")
    expect(panel.get_by_role("spinbutton", name="Canny low threshold").first).to_have_value("77")
    expect(panel.get_by_role("checkbox", name="Unit 1 on")).to_be_checked()
    expect(panel.get_by_role("checkbox", name="Unit 2 on")).not_to_be_checked()
    expect(panel.get_by_role("checkbox", name="Unit 3 on")).not_to_be_checked()
    # Unit 2 is only switched off: still depth, with MiDaS's resolution; unit 1 (Canny) has none.
    expect(panel.get_by_role("combobox", name="Condition").nth(1)).to_have_value("Depth")
    expect(panel.get_by_role("spinbutton", name="Annotator resolution")).to_have_value("384")

    # A PNG from elsewhere: a message that says what to drop.
    page.goto(server.url)
    panel = open_tab(page, "Compose")
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    panel.locator(".restore-settings input[type=file]").set_input_files(plain)
    error = page.get_by_test_id("toast-body").filter(has_text="carries no settings from this app")
    expect(error).to_be_visible(timeout=30_000)


@pytest.mark.browser
@pytest.mark.parametrize(
    "check", [check_restored_composition, check_restored_single_condition], ids=["two", "one"]
)
def test_compose_restores_settings_from_a_png(page: Page, server, tmp_path: Path, check):
    """Drop a PNG with two units (or one, from a condition's tab) on the Compose tab: the page
    shows its prompt, conditions, annotators, strengths and thresholds, the other units off."""
    run_check(check, page, server, tmp_path)


def check_restored_annotator_on_a_tab(page: Page, server, tmp_path: Path) -> None:
    """A Normal-tab PNG made with the MiDaS normals at resolution 256: the tab (on NormalBAE)
    shows that annotator, its own threshold and the PNG's resolution, not MiDaS' default 384."""
    midas = compose_unit(
        "normal", "normal_midas", 1.0, detect_resolution=256, params={"bg_threshold": 0.2}
    )
    png = settings_png(tmp_path / "normal.png", [midas], prompt="a statue")
    page.goto(server.url)
    panel = open_tab(page, "Normal map")
    panel.get_by_role("button", name="Advanced options").click()
    bae = panel.get_by_role("radio", name="Normals (NormalBAE, v1.1 model)")
    midas = panel.get_by_role("radio", name="Normals from MiDaS depth (v1.0 model)")
    expect(bae).to_be_checked()
    panel.locator(".restore-settings input[type=file]").set_input_files(png)
    done = page.get_by_test_id("toast-body").filter(has_text=re.compile("Restored|Error"))
    expect(done.first).to_be_visible(timeout=30_000)
    expect(midas).to_be_checked()
    threshold = panel.get_by_role("spinbutton", name="Normal background threshold")
    expect(threshold).to_have_value("0.2")
    resolution = panel.get_by_role("spinbutton", name="Annotator resolution")
    expect(resolution).to_have_value("256")
    page.wait_for_timeout(1500)  # a handler firing on the restored annotator would reset it
    expect(resolution).to_have_value("256")
    # The person's own choice still brings the annotator's reference resolution.
    bae.check()
    expect(resolution).to_have_value("512")
    expect(threshold).to_be_hidden()


@pytest.mark.browser
def test_a_tab_restores_another_annotator_with_its_settings(page: Page, server, tmp_path: Path):
    run_check(check_restored_annotator_on_a_tab, page, server, tmp_path)
