"""Outpainting: `outpaint_left/right/top/bottom` extend the canvas (the initial image, or the first
unit's photo) by that many of its own pixels, filled by `outpaint_fill` ("edge": the edge pixels
repeated; "blur": repeated, then blurred in the new area only); the new area is the mask (with a
painted one on top), every unit's image is extended alike, the output grows with the canvas, and
the pixel limits hold."""

from __future__ import annotations

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from errors import InvalidRequestError
from pipelines.request import (
    OUTPAINT_BLUR_SIGMA,
    GenerationRequest,
    extend_canvas,
    outpaint_area,
)
from settings import DEFAULT_MODEL_IDS, Limits

PROMPT = "a cup of coffee on a table"
SIDES = {  # keyword -> (top, bottom, left, right)
    "outpaint_left": (0, 0, 64, 0),
    "outpaint_right": (0, 0, 0, 64),
    "outpaint_top": (64, 0, 0, 0),
    "outpaint_bottom": (0, 64, 0, 0),
}


@pytest.fixture(scope="module")
def small_settings(settings):
    return replace(settings, limits=replace(Limits(), min_resolution=128), previews=False)


@pytest.fixture(scope="module")
def small_engine(small_settings):
    from pipelines.engine import Engine

    return Engine(small_settings, device="cpu")


@pytest.fixture(scope="module")
def photo(coffee) -> np.ndarray:
    """128 x 192: extended by 64 on a side, no resizing is needed to reach the output."""
    return np.asarray(Image.fromarray(coffee).resize((192, 128), Image.LANCZOS))


def synthetic() -> np.ndarray:
    """A 4 x 6 RGB image of distinct values."""
    return (np.arange(4 * 6 * 3, dtype=np.uint8) * 3).reshape(4, 6, 3)


def fast(**overrides):
    return {"steps": 3, "seed": 5, "guidance_scale": 7.0, "mask_blur": 0, **overrides}


# ---- the canvas ----------------------------------------------------------------------------------
def test_edge_fill_repeats_the_edge_pixels_on_each_side():
    image = synthetic()
    extended = extend_canvas(image, (2, 3, 1, 4), "edge")
    assert extended.shape == (4 + 5, 6 + 5, 3) and extended.dtype == np.uint8
    np.testing.assert_array_equal(extended[2:6, 1:7], image)  # the image itself, unmoved
    for row in range(extended.shape[0]):
        for column in range(extended.shape[1]):
            source = image[min(max(row - 2, 0), 3), min(max(column - 1, 0), 5)]
            np.testing.assert_array_equal(extended[row, column], source)


@pytest.mark.parametrize("sides", [(2, 0, 0, 0), (0, 2, 0, 0), (0, 0, 3, 0), (0, 0, 0, 3)])
def test_blur_fill_blurs_the_repeated_edge_in_the_new_area_only(sides):
    image = synthetic()
    extended = extend_canvas(image, sides, "blur")
    top, _, left, _ = sides
    edge = np.pad(image, ((sides[0], sides[1]), (sides[2], sides[3]), (0, 0)), mode="edge")
    blurred = cv2.GaussianBlur(edge, (0, 0), OUTPAINT_BLUR_SIGMA, borderType=cv2.BORDER_REPLICATE)
    new = outpaint_area((4, 6), sides)
    assert new.sum() == extended.shape[0] * extended.shape[1] - 24
    np.testing.assert_array_equal(extended[new], blurred[new])
    np.testing.assert_array_equal(extended[top : top + 4, left : left + 6], image)
    assert not np.array_equal(blurred[new], edge[new])  # the blur changed the new pixels


@pytest.mark.parametrize("fill", ["edge", "blur"])
@pytest.mark.parametrize("side", list(SIDES))
def test_the_request_extends_the_canvas_and_masks_the_new_area(small_settings, photo, side, fill):
    sides = SIDES[side]
    top, bottom, left, right = sides
    size = (128 + top + bottom, 192 + left + right)
    request = GenerationRequest.build(
        small_settings, "canny", photo, PROMPT, image_resolution=min(size), outpaint_fill=fill,
        **{side: 64}, **fast(),
    )  # fmt: skip
    assert request.size == size and request.outpainted
    expected = extend_canvas(photo, sides, fill)
    np.testing.assert_array_equal(request.start_image, expected)
    np.testing.assert_array_equal(request.units[0].image, expected)  # the map covers it too
    np.testing.assert_array_equal(request.repainted, outpaint_area((128, 192), sides))
    assert request.mask_source is None and request.init_image_source == "control_image"


def test_a_painted_mask_is_combined_with_the_new_area(small_settings, photo):
    painted = np.zeros((128, 192), np.uint8)
    painted[30:60, 20:50] = 255
    request = GenerationRequest.build(
        small_settings, "canny", photo, PROMPT, mask=painted, outpaint_right=64,
        image_resolution=128, **fast(),
    )  # fmt: skip
    expected = outpaint_area((128, 192), (0, 0, 0, 64))
    expected[30:60, 20:50] = True
    np.testing.assert_array_equal(request.repainted, expected)
    assert request.mask_source == "uploaded"


def test_an_uploaded_initial_image_and_every_units_image_are_extended(small_settings, photo):
    other = photo[::-1].copy()
    half = np.ascontiguousarray(photo[::2, ::2])  # a unit image of half the size
    request = GenerationRequest.composed(
        small_settings,
        [{"condition": "canny", "image": photo}, {"condition": "depth", "image": half}],
        PROMPT, init_image=other, outpaint_left=64, image_resolution=128, **fast(),
    )  # fmt: skip
    np.testing.assert_array_equal(request.start_image, extend_canvas(other, (0, 0, 64, 0), "edge"))
    assert request.init_image_source == "uploaded"
    np.testing.assert_array_equal(
        request.units[1].image, extend_canvas(half, (0, 0, 32, 0), "edge")
    )


# ---- limits --------------------------------------------------------------------------------------
def test_the_pixel_limits_are_enforced(small_settings, photo):
    with pytest.raises(InvalidRequestError, match="over this server's limit of 1,048,576"):
        GenerationRequest.build(
            small_settings, "canny", photo, outpaint_right=192, image_resolution=768, **fast()
        )  # 128 x 384 at short side 768: 768 x 2304
    with pytest.raises(InvalidRequestError, match="aspect ratio is over 3:1"):
        GenerationRequest.build(small_settings, "canny", photo, outpaint_right=512, **fast())
    with pytest.raises(InvalidRequestError, match="`outpaint_top` must be between 0 and 1024"):
        GenerationRequest.build(small_settings, "canny", photo, outpaint_top=1032, **fast())
    tight = replace(small_settings, limits=replace(small_settings.limits, max_outpaint_pixels=10))
    with pytest.raises(InvalidRequestError, match="extend it less, or lower the image resolution"):
        GenerationRequest.build(tight, "canny", photo, outpaint_top=8, **fast())
    # Within the limits it is accepted.
    GenerationRequest.build(small_settings, "canny", photo, outpaint_right=64, **fast())


# ---- the images ----------------------------------------------------------------------------------
def test_the_output_grows_and_keep_unmasked_keeps_the_original(small_engine, photo):
    blur = 4
    result = small_engine.generate(
        "canny", photo, PROMPT, outpaint_right=64, outpaint_bottom=64, image_resolution=192,
        **fast(mask_blur=blur, keep_unmasked=True),
    )  # fmt: skip
    image = result.images[0]
    assert image.shape == (192, 256, 3) and result.control_map.shape == (192, 256, 3)
    reach = int(2.5 * blur + 0.5)  # the blur band around the original area's edge
    np.testing.assert_array_equal(image[: 128 - reach, : 192 - reach], photo[:-reach, :-reach])
    new = outpaint_area((128, 192), (0, 64, 0, 64))
    new[: 128 + reach, : 192 + reach] = False
    filled = extend_canvas(photo, (0, 64, 0, 64), "edge")
    assert np.abs(image[new].astype(int) - filled[new]).mean() > 5  # repainted
    parameters = result.parameters[0]
    assert (parameters["width"], parameters["height"]) == (256, 192)


def test_inpaint_and_outpaint_run_end_to_end(small_engine, photo):
    seen = []

    def record(module, args, kwargs):
        seen.append(kwargs["controlnet_cond"][:1].clone())

    request = GenerationRequest.build(
        small_engine.settings, "inpaint", photo, PROMPT, outpaint_left=64, outpaint_fill="blur",
        image_resolution=128, **fast(mask_blur=2),
    )  # fmt: skip
    hook = small_engine.controlnet("inpaint").register_forward_pre_hook(record, with_kwargs=True)
    try:
        result = small_engine.run(request)
    finally:
        hook.remove()
    assert result.images[0].shape == (128, 256, 3) and result.images[0].std() > 1
    expected = torch.from_numpy(request.start_image.astype(np.float32) / 255.0).permute(2, 0, 1)
    expected = expected[None].clone()
    expected[:, :, torch.from_numpy(request.repainted)] = -1.0
    assert seen and all(torch.equal(cond, expected) for cond in seen)
    # The -1 area covers the new canvas (the blurred mask's threshold sits on its edge).
    assert (expected[0, :, :, :60] == -1).all() and (expected[0, :, :, 70:] >= 0).all()
    assert result.parameters[0]["units"][0]["model_id"] == DEFAULT_MODEL_IDS["inpaint"]


def test_outpainting_with_another_condition_at_a_lower_strength(small_engine, photo):
    result = small_engine.compose(
        [{"condition": "canny", "image": photo}, {"condition": "depth", "strength": 0.5}],
        PROMPT, outpaint_top=64, image_resolution=192, denoising_strength=0.75, **fast(),
    )  # fmt: skip
    assert result.images[0].shape == (192, 192, 3)
    assert all(control_map.shape == (192, 192, 3) for control_map in result.control_maps)
    assert result.parameters[0]["steps_run"] == 2


# ---- PNG parameters, restore, CLI ----------------------------------------------------------------
def test_the_parameters_record_the_outpaint_values_and_restore_them(small_engine, photo):
    from png_info import png_bytes_with_parameters, read_parameters, restore_values

    result = small_engine.generate(
        "canny", photo, PROMPT, outpaint_left=64, outpaint_fill="blur", image_resolution=128,
        **fast(),
    )  # fmt: skip
    parameters = read_parameters(png_bytes_with_parameters(result.images[0], result.parameters[0]))
    assert parameters == json.loads(json.dumps(result.parameters[0]))
    assert parameters["outpaint_left"] == 64 and parameters["outpaint_right"] == 0
    assert parameters["outpaint_fill"] == "blur" and "mask_source" not in parameters
    restored = restore_values(parameters)
    assert (restored["outpaint_left"], restored["outpaint_fill"]) == (64, "blur")
    # Without outpainting nothing of it is recorded.
    plain = small_engine.generate("canny", photo, PROMPT, image_resolution=128, **fast())
    assert not any(key.startswith("outpaint") for key in plain.parameters[0])


def test_the_cli_has_the_outpaint_flags():
    from cli import build_parser

    args = build_parser().parse_args(
        ["generate", "--condition", "inpaint", "--image", "a.png", "--out", "o",
         "--outpaint-left", "64", "--outpaint-fill", "blur"]
    )  # fmt: skip
    assert (args.outpaint_left, args.outpaint_fill) == (64, "blur")
