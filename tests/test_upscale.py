"""Upscaling: the tiles, their blend, the checked request, and the engine's tiled run against
generating each tile on its own."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

import numpy as np
import pytest

from errors import InvalidRequestError
from pipelines.upscale import (
    DEFAULT_STRENGTH,
    TileBlender,
    UpscaleRequest,
    enlarge,
    enlarged_size,
    tile_boxes,
    tile_starts,
)

PROMPT = "a cup of coffee, detailed"
STEPS = 6  # at the default strength 0.35: int(6 * 0.35) = 2 steps per tile


@pytest.mark.parametrize("tile, overlap", [(128, 0), (128, 32), (512, 64), (512, 256)])
def test_tiles_cover_each_side_with_as_few_as_overlap_enough(tile, overlap):
    for length in range(64, 3000, 37):
        starts = tile_starts(length, tile, overlap)
        if length <= tile:
            assert starts == [0]
            continue
        assert starts[0] == 0 and starts[-1] + tile == length  # covered end to end
        overlaps = [tile - (after - before) for before, after in pairwise(starts)]
        assert min(overlaps) >= overlap and max(overlaps) < tile  # each tile adds pixels
        assert max(overlaps) - min(overlaps) <= 1  # spread evenly
        if len(starts) > 2:  # one tile fewer, spread evenly, would overlap too little
            assert (length - tile) / (len(starts) - 2) > tile - overlap


def test_tile_boxes_are_row_by_row_and_a_short_side_is_one_tile():
    boxes = tile_boxes((256, 1024), tile=512, overlap=64)
    assert [(box.top, box.left, box.height, box.width) for box in boxes] == [
        (0, 0, 256, 512),
        (0, 256, 256, 512),
        (0, 512, 256, 512),
    ]  # 1024 = 512 + 2 * 256: three tiles, overlapping by 256 >= 64
    grid = tile_boxes((1024, 1024), 512, 64)
    assert [(box.top, box.left) for box in grid[:4]] == [(0, 0), (0, 256), (0, 512), (256, 0)]


@pytest.mark.parametrize(
    "size, tile, overlap",
    [((256, 384), 128, 32), ((961, 700), 512, 64), ((512, 512), 512, 64), ((300, 1000), 256, 0)],
)
def test_blending_the_tiles_of_one_image_gives_it_back_exactly(size, tile, overlap):
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    blender = TileBlender(size, overlap)
    for box in tile_boxes(size, tile, overlap):
        blender.add(box, image[box.slices])
    np.testing.assert_array_equal(blender.image(), image)


def test_a_pixel_one_tile_covers_is_its_and_overlaps_ramp_between_neighbours():
    size, tile, overlap = (128, 448), 128, 32
    boxes = tile_boxes(size, tile, overlap)
    values = [40 * (k + 1) for k in range(len(boxes))]  # each tile one grey level
    blender = TileBlender(size, overlap)
    coverage = np.zeros(size, int)
    for box, value in zip(boxes, values, strict=True):
        blender.add(box, np.full((box.height, box.width, 3), value, np.uint8))
        coverage[box.slices] += 1
    blended = blender.image()[..., 0].astype(int)
    for box, value in zip(boxes, values, strict=True):
        alone = coverage[box.slices] == 1
        assert alone.any() and (blended[box.slices][alone] == value).all()
    first, second = boxes[0], boxes[1]
    row = blended[0, second.left : first.left + first.width]  # where the first two overlap
    assert row[0] >= values[0] and row[-1] <= values[1]
    assert (np.diff(row) >= 0).all()  # from the first tile's grey to the second's, no step back


def test_enlarged_size_rounds_each_side_to_a_multiple_of_64():
    assert enlarged_size(128, 192, 2.0) == (256, 384)
    assert enlarged_size(200, 300, 1.5) == (320, 448)  # 300 -> 320, 450 -> 448
    assert enlarged_size(512, 512, 4.0) == (2048, 2048)


@pytest.fixture(scope="module")
def upscale_settings(settings):
    """Tiles of 128 allowed (the tests' photo is small)."""
    return replace(settings, limits=replace(settings.limits, min_resolution=128), previews=False)


def test_the_request_cuts_the_enlarged_image_into_tile_requests(upscale_settings, photo):
    request = UpscaleRequest.build(
        upscale_settings, photo, PROMPT, factor=2, tile_size=128, tile_overlap=32, seed=7
    )
    assert request.size == (256, 384) and request.source_size == (128, 192)
    np.testing.assert_array_equal(request.image, enlarge(photo, (256, 384)))
    assert len(request.tiles) == len(request.boxes) == 3 * 4
    for index, (box, tile) in enumerate(zip(request.boxes, request.tiles, strict=True)):
        assert tile.units[0].condition.name == "tile"
        assert tile.units[0].annotator.name == "tile_resample"
        assert tile.size == (box.height, box.width) and tile.num_images == 1
        np.testing.assert_array_equal(tile.start_image, request.image[box.slices])
        assert tile.denoising_strength == DEFAULT_STRENGTH and tile.seed == 7 + index
        assert tile.prompt == PROMPT
    assert request.steps_run == 12 * int(20 * DEFAULT_STRENGTH)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"tile_size": 128, "tile_overlap": 72}, "at most half the tile size"),
        ({"denoising_strength": 1.0}, "below 1"),
        ({"factor": 5}, "`factor` must be between 1.5 and 4"),
        ({"tile_size": 100}, "`tile_size`"),
        ({"num_images": 2}, "does not take num_images"),
        ({"mask_blur": 4}, "does not take mask_blur"),
        ({"steps": 10**6}, "`steps`"),
    ],
)
def test_the_request_refuses_what_an_upscale_cannot_do(upscale_settings, photo, options, message):
    with pytest.raises(InvalidRequestError, match=message):
        UpscaleRequest.build(upscale_settings, photo, PROMPT, **options)


def test_the_result_size_is_bounded_in_the_request(upscale_settings, photo):
    small = replace(
        upscale_settings, limits=replace(upscale_settings.limits, max_upscale_pixels=200_000)
    )
    assert UpscaleRequest.build(small, photo, factor=2).size == (256, 384)  # 98,304 pixels
    with pytest.raises(InvalidRequestError, match=r"768x512 \(393,216 pixels\).*of 200,000"):
        UpscaleRequest.build(small, photo, factor=4)
    tiny = np.zeros((40, 40, 3), np.uint8)
    with pytest.raises(InvalidRequestError, match="short side must reach 128"):
        UpscaleRequest.build(upscale_settings, tiny, factor=2)


@pytest.fixture(scope="module")
def upscale_engine(upscale_settings):
    from pipelines.engine import Engine

    return Engine(upscale_settings, device="cpu")


def generate_tile(engine, tile: np.ndarray, seed: int) -> np.ndarray:
    """One tile generated on its own through the public generate: the tile condition on the
    tile, image to image from the tile itself."""
    result = engine.generate(
        "tile",
        tile,
        PROMPT,
        annotator="tile_resample",
        init_image=tile,
        denoising_strength=DEFAULT_STRENGTH,
        image_resolution=min(tile.shape[:2]),
        steps=STEPS,
        seed=seed,
    )
    return result.images[0]


def test_one_tile_is_an_image_to_image_generation_with_the_tile_controlnet(upscale_engine, photo):
    result = upscale_engine.upscale(photo, PROMPT, factor=2, tile_size=512, steps=STEPS, seed=3)
    enlarged = enlarge(photo, (256, 384))
    np.testing.assert_array_equal(result.images[0], generate_tile(upscale_engine, enlarged, 3))
    parameters = result.parameters[0]
    assert parameters["upscale"] == {
        "factor": 2.0,
        "tile_size": 512,
        "tile_overlap": 64,
        "tiles": 1,
        "source_width": 192,
        "source_height": 128,
    }
    assert (parameters["width"], parameters["height"], parameters["seed"]) == (384, 256, 3)
    assert parameters["denoising_strength"] == DEFAULT_STRENGTH


def test_tiles_are_generated_alone_and_blended(upscale_engine, photo):
    seed, options = 11, {"factor": 2, "tile_size": 128, "tile_overlap": 32, "steps": STEPS}
    progress = []
    result = upscale_engine.upscale(
        photo, PROMPT, seed=seed, on_progress=lambda *step: progress.append(step), **options
    )
    request = UpscaleRequest.build(upscale_engine.settings, photo, PROMPT, seed=seed, **options)
    image = result.images[0]
    assert image.shape == (256, 384, 3)
    steps_run = 12 * int(STEPS * DEFAULT_STRENGTH)
    assert result.parameters[0]["steps_run"] == steps_run
    assert progress == [(step, steps_run) for step in range(1, steps_run + 1)]
    coverage = np.zeros(request.size, int)
    for box in request.boxes:
        coverage[box.slices] += 1
    for index in (0, len(request.boxes) - 1):  # the first and the last tile, seed + index
        box = request.boxes[index]
        alone = generate_tile(upscale_engine, request.image[box.slices], seed + index)
        only_this = coverage[box.slices] == 1
        np.testing.assert_array_equal(image[box.slices][only_this], alone[only_this])
    # The tiles changed the enlarged image (the tile ControlNet and the denoising acted).
    assert np.abs(image.astype(int) - request.image).mean() > 1
