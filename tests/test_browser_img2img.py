"""Inpainting in the page: paint a mask over the input photo in headless Chromium, Run, and get an
image whose unmasked pixels are the photo's own (conftest's `server`, tiny models)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect
from test_browser import ASTRONAUT, open_tab, run_check
from test_browser import page as page  # noqa: F401 (the headless Chromium fixture)
from test_first_visit import run_and_wait, set_number, upload

pytestmark = pytest.mark.browser
SIZE = 256  # the test server's default resolution: a photo of this size is used as it is


def check_inpainting(page: Page, server, tmp_path: Path) -> None:
    photo_path = tmp_path / "astronaut-256.png"
    Image.open(ASTRONAUT).convert("RGB").resize((SIZE, SIZE)).save(photo_path)
    photo = np.asarray(Image.open(photo_path))
    page.goto(server.url)
    panel = open_tab(page, "Canny")
    upload(panel, photo_path)
    expect(panel.get_by_test_id("image").first.locator("img")).to_have_count(1)
    panel.get_by_role("button", name="Advanced options").click()
    set_number(panel, "Steps", 2)
    panel.get_by_role("button", name=re.compile("^Start from an image")).click()
    panel.get_by_role("button", name="Paint on the input photo").click()
    editor = panel.locator(".init-editor")
    brush = editor.get_by_role("button", name="Brush", exact=True)
    expect(brush).to_be_visible(timeout=20_000)
    page.wait_for_timeout(1000)  # the photo is drawn into the editor's canvas
    if "highlight" not in (brush.get_attribute("class") or ""):
        brush.click()
    frame = editor.locator(".image-container").bounding_box()
    x, y = frame["x"] + frame["width"] * 0.4, frame["y"] + frame["height"] * 0.5
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + frame["width"] * 0.2, y + 5, steps=10)
    page.mouse.up()
    page.wait_for_timeout(1500)  # the editor's change fills the hidden mask input
    thumbnails = run_and_wait(page, panel, 2)
    source = thumbnails.nth(1).get_by_role("img").get_attribute("src")
    image = np.asarray(Image.open(io.BytesIO(page.request.get(source).body())).convert("RGB"))
    assert image.shape == photo.shape, image.shape
    # The stroke runs through the middle: the corners are far outside it and its blur band.
    corner = SIZE // 4
    for rows, cols in (
        (slice(0, corner), slice(0, corner)),
        (slice(-corner, None), slice(-corner, None)),
    ):
        np.testing.assert_array_equal(image[rows, cols], photo[rows, cols])
    changed = np.abs(image.astype(int) - photo.astype(int)).max(axis=-1) > 0
    assert changed[SIZE // 2 - 8 : SIZE // 2 + 8].any(), "the painted area did not change"
    page.screenshot(path=tmp_path / "inpainted.png", full_page=True)


def test_a_painted_mask_repaints_only_its_area(page: Page, server, tmp_path: Path):
    run_check(check_inpainting, page, server, tmp_path)
