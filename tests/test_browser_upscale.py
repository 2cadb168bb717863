"""Upscaling from the page: generate on a tab, send the image to the Upscale tab with its button,
Run, and get the image twice as large (headless Chromium, conftest's `server`, tiny models)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect
from test_browser import ASTRONAUT, open_tab, run_check
from test_browser import page as page  # noqa: F401 (the headless Chromium fixture)
from test_first_visit import run_and_wait, set_number, upload

from png_info import read_parameters

pytestmark = pytest.mark.browser
SIZE = 256  # the test server's default resolution
PROMPT = "an astronaut, detailed"


def served(page: Page, thumbnail) -> np.ndarray:
    source = thumbnail.get_by_role("img").get_attribute("src")
    return np.asarray(Image.open(io.BytesIO(page.request.get(source).body())).convert("RGB"))


def check_send_to_upscale(page: Page, server, tmp_path: Path) -> None:
    photo_path = tmp_path / "astronaut-256.png"
    Image.open(ASTRONAUT).convert("RGB").resize((SIZE, SIZE)).save(photo_path)
    page.goto(server.url)
    panel = open_tab(page, "Canny")
    upload(panel, photo_path)
    panel.get_by_role("textbox", name="Prompt", exact=True).fill(PROMPT)
    panel.get_by_role("button", name="Advanced options").click()
    set_number(panel, "Steps", 2)
    thumbnails = run_and_wait(page, panel, 2)
    generated = served(page, thumbnails.nth(1))
    panel.get_by_role("button", name="Upscale the selected image").click()

    expect(page.get_by_role("tab", name="Upscale", exact=True)).to_have_attribute(
        "aria-selected", "true"
    )
    upscale = page.get_by_role("tabpanel").filter(visible=True)
    expect(upscale.get_by_role("textbox", name="Prompt", exact=True)).to_have_value(PROMPT)
    sent = upscale.get_by_test_id("image").first.locator("img")
    expect(sent).to_have_count(1)
    sent_pixels = page.request.get(sent.get_attribute("src")).body()
    np.testing.assert_array_equal(
        np.asarray(Image.open(io.BytesIO(sent_pixels)).convert("RGB")), generated
    )
    upscale.get_by_role("button", name="Advanced options").click()
    set_number(upscale, "Steps", 3)  # at the default strength 0.35: one step
    thumbnails = run_and_wait(page, upscale, 1)
    png = page.request.get(thumbnails.first.get_by_role("img").get_attribute("src")).body()
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert image.shape == (2 * SIZE, 2 * SIZE, 3), image.shape
    # What was upscaled: the generated image (the tiny models' VAE keeps too little of an image
    # to see it in the result's pixels, so its parameters say it).
    (tmp_path / "upscaled.png").write_bytes(png)
    parameters = read_parameters(tmp_path / "upscaled.png")
    assert parameters["upscale"]["source_width"] == SIZE and parameters["prompt"] == PROMPT
    page.screenshot(path=tmp_path / "upscale-tab.png", full_page=True)


def test_a_result_goes_to_the_upscale_tab_and_comes_back_larger(page: Page, server, tmp_path):  # noqa: F811
    run_check(check_send_to_upscale, page, server, tmp_path)
