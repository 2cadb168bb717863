"""Control maps: Canny, scribble, passthrough, the shared resize / HWC3 path, shared networks."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from annotators import ANNOTATORS, LoadContext, get_annotator, make_control_map
from annotators.shared import shared
from annotators.util import HWC3, load_image, output_size, resize_image
from errors import InvalidImageError, InvalidRequestError

LIMITS = {"max_bytes": 10 * 2**20, "max_pixels": 10_000_000}
CONTEXT = LoadContext(Path("/nonexistent"), {})


def map_of(name: str, image: np.ndarray, resolution: int, **params) -> np.ndarray:
    annotator = get_annotator(name)
    checked = annotator.check_params(params)
    return make_control_map(annotator, annotator.load(CONTEXT), image, resolution, params=checked)


@pytest.mark.parametrize(
    ("height", "width", "resolution", "expected"),
    [
        (512, 512, 512, (512, 512)),
        (400, 600, 512, (512, 768)),  # 768 = 600 * 512 / 400
        (600, 400, 512, (768, 512)),
        (300, 400, 512, (512, 704)),  # 682.7 rounds to 11 * 64
        (1000, 1000, 256, (256, 256)),
        (480, 640, 768, (768, 1024)),
    ],
)
def test_output_size_rounds_to_64_and_keeps_aspect(height, width, resolution, expected):
    got = output_size(height, width, resolution)
    assert got == expected
    assert got[0] % 64 == 0 and got[1] % 64 == 0
    assert min(got) == resolution
    assert abs(got[1] / got[0] - width / height) < 64 / min(got)


def test_canny_map_equals_cv2_canny_on_resized_input(coffee):
    control_map = map_of("canny", coffee, 512, low_threshold=50, high_threshold=150)

    expected = cv2.Canny(resize_image(coffee, 512), 50, 150)
    assert control_map.shape == (512, 768, 3) and control_map.dtype == np.uint8
    np.testing.assert_array_equal(control_map[:, :, 0], expected)
    np.testing.assert_array_equal(control_map[:, :, 0], control_map[:, :, 2])
    assert set(np.unique(control_map)) <= {0, 255}
    assert 0.01 < (control_map > 0).mean() < 0.5  # a real photo has edges, not everywhere


def test_canny_thresholds_change_the_map(coffee):
    few = map_of("canny", coffee, 512, low_threshold=200, high_threshold=250)
    many = map_of("canny", coffee, 512, low_threshold=20, high_threshold=40)
    assert (many > 0).sum() > 2 * (few > 0).sum()


def test_scribble_turns_dark_strokes_on_paper_into_white_on_black():
    paper = np.full((256, 320, 3), 235, np.uint8)  # off-white paper
    paper[100:104, 20:300] = (20, 30, 25)  # a dark stroke
    paper[10:200, 50:53] = (120, 200, 200)  # a red-ish stroke: darkest channel 120 < 127
    paper[150:160, 150:160] = (140, 140, 140)  # light grey smudge: not a stroke
    control_map = map_of("scribble", paper, 256)

    assert control_map.shape == (256, 320, 3)
    expected = np.zeros((256, 320), np.uint8)
    expected[100:104, 20:300] = 255
    expected[10:200, 50:53] = 255
    np.testing.assert_array_equal(control_map[:, :, 1], expected)


def test_transparent_canvas_counts_as_white_paper():
    canvas = np.zeros((512, 512, 4), np.uint8)  # fully transparent
    canvas[200:210, 100:400] = (0, 0, 0, 255)  # one opaque black stroke
    control_map = map_of("scribble", canvas, 512)
    assert control_map[205, 250].tolist() == [255, 255, 255]
    assert (control_map > 0).mean() == pytest.approx(10 * 300 / 512**2)


def test_passthrough_only_resizes(astronaut):
    control_map = map_of("none", astronaut, 256)
    np.testing.assert_array_equal(control_map, resize_image(astronaut, 256))


def test_hwc3_handles_grey_and_alpha():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert HWC3(grey).shape == (3, 4, 3)
    np.testing.assert_array_equal(HWC3(grey)[:, :, 2], grey)
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    rgba[1, 1] = (0, 0, 0, 128)
    out = HWC3(rgba)
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[0, 1].tolist() == [255, 255, 255]
    assert out[1, 1].tolist() == [127, 127, 127]


def test_params_are_checked_with_clear_messages():
    canny = ANNOTATORS["canny"]
    assert canny.check_params({}) == {"low_threshold": 100, "high_threshold": 200}
    with pytest.raises(InvalidRequestError, match="between 1 and 255"):
        canny.check_params({"low_threshold": 400})
    with pytest.raises(InvalidRequestError, match="must be a number"):
        canny.check_params({"high_threshold": "lots"})
    with pytest.raises(InvalidRequestError, match="Unknown annotator"):
        get_annotator("nope")


def test_load_image_reads_modes_and_exif(tmp_path, astronaut):
    rgba_path = tmp_path / "rgba.png"
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:32, ..., 3] = 255
    Image.fromarray(rgba).save(rgba_path)
    loaded = load_image(rgba_path, **LIMITS)
    assert loaded[0, 0].tolist() == [200, 0, 0] and loaded[63, 0].tolist() == [255, 255, 255]

    # A landscape photo stored on its side, with EXIF orientation 6 ("rotate 90 CW to view").
    rotated = Image.fromarray(astronaut[:, :300]).transpose(Image.Transpose.ROTATE_90)
    exif = rotated.getexif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    rotated.save(path, exif=exif)
    assert load_image(path, **LIMITS).shape == (512, 300, 3)


def test_load_image_refuses_non_images_and_huge_ones(tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    with pytest.raises(InvalidImageError, match="Could not read"):
        load_image(fake, **LIMITS)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InvalidImageError, match="empty"):
        load_image(empty, **LIMITS)
    big = tmp_path / "big.png"
    Image.new("L", (4000, 3000)).save(big)
    with pytest.raises(InvalidImageError, match="megapixels"):
        load_image(big, max_bytes=LIMITS["max_bytes"], max_pixels=1_000_000)


def test_flag_params_take_booleans_only():
    from annotators import Param

    flag = Param.flag("include_hands", "Hands", False)
    assert flag.check(True) is True and flag.check(0) is False
    with pytest.raises(InvalidRequestError, match="true or false"):
        flag.check("yes")


def test_load_image_handles_odd_files(tmp_path, coffee):
    # Truncated JPEG: half the bytes are missing.
    whole = tmp_path / "whole.jpg"
    Image.fromarray(coffee).save(whole, quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(InvalidImageError, match="Could not read"):
        load_image(truncated, **LIMITS)

    # 16-bit greyscale PNG: scaled to 8 bits, not clipped.
    wide = tmp_path / "wide.png"
    Image.fromarray(np.full((64, 64), 65535, np.uint16)).save(wide)
    assert load_image(wide, **LIMITS)[0, 0].tolist() == [255, 255, 255]

    # Palette PNG with a transparent colour: transparent pixels become white paper.
    palette = Image.new("P", (64, 64), 0)
    palette.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    palette.paste(1, (0, 0, 32, 64))
    path = tmp_path / "palette.png"
    palette.save(path, transparency=0)
    loaded = load_image(path, **LIMITS)
    assert loaded[0, 0].tolist() == [200, 0, 0] and loaded[0, 63].tolist() == [255, 255, 255]

    # CMYK JPEG: converted to RGB.
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(coffee).convert("CMYK").save(cmyk)
    assert load_image(cmyk, **LIMITS).shape == (400, 600, 3)

    # A 1x1 image: too small to say anything.
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1)).save(tiny)
    with pytest.raises(InvalidImageError, match="at least 8x8"):
        load_image(tiny, **LIMITS)


def test_load_image_checks_the_pixels_of_arrays_too():
    canvas = np.zeros((600, 600, 4), np.uint8)
    assert load_image(canvas, **LIMITS).shape == (600, 600, 3)
    with pytest.raises(InvalidImageError, match="megapixels"):
        load_image(canvas, max_bytes=LIMITS["max_bytes"], max_pixels=100_000)


# ---------------------------------------------------------------------------------------------
# annotators.shared: one loaded network per key, held weakly, loaded once under concurrency
# ---------------------------------------------------------------------------------------------


class FakeNetwork:
    """Weak-referenceable, like a torch module."""


def test_shared_returns_the_live_network_and_reloads_after_it_is_freed():
    loads = []

    def load():
        loads.append(FakeNetwork())
        return loads[-1]

    key = ("test-reuse", object())
    first = shared(key, load)
    assert shared(key, load) is first and len(loads) == 1  # held: the same object, no reload
    assert shared(("test-other", object()), load) is not first  # another key loads its own
    released = weakref.ref(first)
    loads.clear()
    del first
    gc.collect()
    assert released() is None  # only a weak reference was kept: the network is gone
    again = shared(key, load)
    assert len(loads) == 1 and again is loads[0]  # a fresh load, not a stale one


def test_shared_failed_load_leaves_nothing_and_the_next_call_retries():
    key = ("test-failure", object())

    def broken():
        raise RuntimeError("broken weights")

    with pytest.raises(RuntimeError, match="broken weights"):
        shared(key, broken)
    network = FakeNetwork()
    assert shared(key, lambda: network) is network


def test_shared_loads_a_key_once_when_threads_ask_together():
    threads_count = 4
    barrier = threading.Barrier(threads_count)
    loads = []

    def slow_load():
        loads.append(FakeNetwork())
        time.sleep(0.2)  # every other thread asks meanwhile
        return loads[-1]

    key = ("test-threads", object())

    def ask(_):
        barrier.wait()  # all threads ask at once
        return shared(key, slow_load)

    with ThreadPoolExecutor(threads_count) as pool:
        results = list(pool.map(ask, range(threads_count)))
    assert len(loads) == 1
    assert all(result is loads[0] for result in results)


def test_shared_loads_different_keys_in_parallel():
    # One slow load must not hold up another key's load (per-key locks).
    started = threading.Event()
    release = threading.Event()

    def blocking_load():
        started.set()
        release.wait(5)
        return FakeNetwork()

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(shared, ("test-slow", object()), blocking_load)
        assert started.wait(5)
        try:
            quick = shared(("test-quick", object()), FakeNetwork)  # would wait 5 s if serialised
            assert isinstance(quick, FakeNetwork) and not pending.done()
        finally:
            release.set()
        assert isinstance(pending.result(5), FakeNetwork)
