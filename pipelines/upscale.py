"""Upscaling: the image enlarged, then repainted at a low denoising strength with the tile
ControlNet, in overlapping tiles blended together.

The way the AUTOMATIC1111 "Ultimate SD upscale" script and the tile ControlNet's own README
upscale, in pixel space:

1. The image is enlarged by `factor` with Lanczos (no upscaling network ships offline), each side
   rounded to a multiple of 64, the size every generation has.
2. The enlarged image is cut into tiles of `tile_size` (a multiple of 64; a side shorter than that
   is one tile) overlapping by at least `tile_overlap` pixels, spread evenly (`tile_boxes`).
3. Each tile is an image-to-image request of its own (`GenerationRequest.build` on the tile
   condition: its initial image and its tile ControlNet map are the tile itself), so every check,
   sampler, control mode, speed switch and the fast path act as in any generation. Tile k draws
   its noise from seed + k.
4. The repainted tiles are blended (`TileBlender`): in the overlaps each tile's weight rises
   linearly from its edge over `tile_overlap` pixels, and the weights are normalised, so a pixel
   only one tile covers is that tile's pixel exactly.

Memory is bounded by the tile, not by the result: the VAE encodes and decodes one tile at a time
(at most `tile_size` on a side, a size a single generation decodes anyway), and the blend holds
two float32 planes of the result (16 bytes per pixel: 64 MiB at 2048 x 2048). The result itself is
bounded by `Limits.max_upscale_pixels`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from annotators.util import SIZE_MULTIPLE
from errors import InvalidRequestError
from pipelines.notices import Notices
from pipelines.options import number, options_of, whole
from pipelines.request import SHARED_OPTIONS, GenerationRequest, checked_image
from pipelines.results import GenerationResult
from settings import MAX_SEED, Settings

CONDITION = "tile"  # the ControlNet every tile runs with
ANNOTATOR = "tile_resample"  # at its default rate (1): the tile itself is the map
# The tile ControlNet's README repaints at low strengths; 0.35 keeps the image and adds detail.
DEFAULT_STRENGTH = 0.35
# What an upscale takes from a generation's options: the sampling, the prompt, the model and the
# speed switches, and the tile ControlNet's strength and window. The size, the batch and the
# image-to-image inputs are the upscale's own.
TAKEN_OPTIONS = tuple(
    name
    for name in SHARED_OPTIONS
    if SHARED_OPTIONS[name].group not in ("output", "image_to_image")
) + ("denoising_strength",)
TAKEN_UNIT_OPTIONS = ("strength", "control_start", "control_end")
ProgressCallback = Callable[[int, int], None]  # (steps done, total)


@dataclass(frozen=True)
class TileBox:
    """Where a tile lies in the enlarged image, in pixels."""

    top: int
    left: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where the tiles along a side of `length` start: as few tiles of `tile` pixels as overlap by
    at least `overlap`, spread evenly (the first at 0, the last ending at `length`)."""
    if length <= tile:
        return [0]
    count = -(-(length - overlap) // (tile - overlap))  # ceil: each tile adds tile - overlap
    span = length - tile
    return [round(index * span / (count - 1)) for index in range(count)]


def tile_boxes(size: tuple[int, int], tile: int, overlap: int) -> list[TileBox]:
    """The tiles covering an image of `size` (H, W), row by row."""
    height, width = size
    tile_height, tile_width = min(tile, height), min(tile, width)
    return [
        TileBox(top, left, tile_height, tile_width)
        for top in tile_starts(height, tile_height, overlap)
        for left in tile_starts(width, tile_width, overlap)
    ]


def _ramp(length: int, start_inner: bool, end_inner: bool, overlap: int) -> np.ndarray:
    """A tile's weights along one side: 1, rising from its start over `overlap` pixels where a
    neighbour lies before it (`start_inner`), falling to its end where one lies after it."""
    weights = np.ones(length, np.float32)
    if overlap == 0:
        return weights
    rising = (np.arange(length, dtype=np.float32) + 0.5) / overlap
    if start_inner:
        weights = np.minimum(weights, rising)
    if end_inner:
        weights = np.minimum(weights, rising[::-1])
    return weights


def tile_weights(box: TileBox, size: tuple[int, int], overlap: int) -> np.ndarray:
    """The tile's blend weights (h, w), float32 in (0, 1]: 1 inside, linear ramps toward the
    edges it shares with other tiles (never toward the image's border)."""
    height, width = size
    rows = _ramp(box.height, box.top > 0, box.top + box.height < height, overlap)
    columns = _ramp(box.width, box.left > 0, box.left + box.width < width, overlap)
    return rows[:, None] * columns[None, :]


class TileBlender:
    """The result built tile by tile: weighted sums and weights, normalised at the end."""

    def __init__(self, size: tuple[int, int], overlap: int):
        self.size, self.overlap = size, overlap
        self._sums = np.zeros((*size, 3), np.float32)
        self._weights = np.zeros(size, np.float32)

    def add(self, box: TileBox, tile: np.ndarray) -> None:
        weights = tile_weights(box, self.size, self.overlap)
        rows, columns = box.slices
        self._sums[rows, columns] += np.asarray(tile, np.float32) * weights[..., None]
        self._weights[rows, columns] += weights

    def image(self) -> np.ndarray:
        """RGB uint8 (H, W, 3); every pixel must have been covered."""
        if not (self._weights > 0).all():
            raise ValueError("Some pixels are covered by no tile.")
        return np.round(self._sums / self._weights[..., None]).clip(0, 255).astype(np.uint8)


def enlarged_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """(H, W) times `factor`, each rounded to the nearest multiple of 64 (at least 64)."""

    def side(length: int) -> int:
        return max(SIZE_MULTIPLE, round(length * factor / SIZE_MULTIPLE) * SIZE_MULTIPLE)

    return side(height), side(width)


def enlarge(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 (H, W, 3) resized to `size` (H', W') with Lanczos."""
    height, width = size
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


@dataclass(frozen=True)
class UpscaleRequest:
    """An upscale, checked: the enlarged image and one image-to-image request per tile."""

    # fmt: off
    factor: float = number(
        2.0, "Upscale factor", minimum=1.5, maximum=4.0, step=0.25, group="upscale",
        info="How many times larger each side gets (rounded to multiples of 64 pixels).",
    )
    tile_size: int = whole(
        512, "Tile size (pixels)", minimum="min_resolution", maximum="max_resolution", step=64,
        group="upscale",
        info="The largest piece repainted at once; a larger result is repainted in tiles. 512 is "
        "what SD1.5 and the tile ControlNet were trained at.",
    )
    tile_overlap: int = whole(
        64, "Tile overlap (pixels)", maximum=256, step=8, group="upscale",
        info="How far neighbouring tiles overlap; they are blended across it, so no seam shows.",
    )
    # fmt: on
    source_size: tuple[int, int] = (0, 0)  # the image given, (H, W)
    image: np.ndarray | None = field(default=None, repr=False)  # enlarged, RGB uint8
    boxes: tuple[TileBox, ...] = ()
    tiles: tuple[GenerationRequest, ...] = field(default=(), repr=False)  # one per box

    @property
    def size(self) -> tuple[int, int]:
        """The result's (H, W)."""
        return self.image.shape[:2]

    @property
    def seed(self) -> int:
        return self.tiles[0].seed

    @property
    def steps_run(self) -> int:
        """The steps the whole upscale takes: every tile's."""
        return sum(tile.steps_run for tile in self.tiles)

    @classmethod
    def build(
        cls,
        settings: Settings,
        image: Any,
        prompt: Any = "",
        *,
        factor: Any = None,
        tile_size: Any = None,
        tile_overlap: Any = None,
        **given: Any,
    ) -> UpscaleRequest:
        """`given`: the generation options an upscale takes (`TAKEN_OPTIONS`: sampler, steps,
        guidance, seed, denoising strength (default 0.35), models, speed; and the tile
        ControlNet's `strength` and window)."""
        limits = settings.limits
        unknown = sorted(set(given) - set(TAKEN_OPTIONS) - set(TAKEN_UNIT_OPTIONS))
        if unknown:
            raise InvalidRequestError(
                f"An upscale does not take {', '.join(unknown)}: its size comes from the factor "
                "and its initial image is the image itself."
            )
        raw = {"factor": factor, "tile_size": tile_size, "tile_overlap": tile_overlap}
        own = {name: spec.check(raw[name], limits) for name, spec in UPSCALE_OPTIONS.items()}
        if own["tile_overlap"] * 2 > own["tile_size"]:
            raise InvalidRequestError(
                f"`tile_overlap` ({own['tile_overlap']}) must be at most half the tile size "
                f"({own['tile_size']})."
            )
        strength = given.get("denoising_strength")
        strength = DEFAULT_STRENGTH if strength is None else strength
        strength = SHARED_OPTIONS["denoising_strength"].check(strength, limits)
        if strength >= 1.0:
            raise InvalidRequestError(
                "An upscale repaints the enlarged image: give a denoising strength below 1 "
                f"(0.2-0.5 keeps it; default {DEFAULT_STRENGTH})."
            )
        source = checked_image(limits, image, "the image to upscale")
        size = enlarged_size(*source.shape[:2], own["factor"])
        _check_size(settings, size)
        seed = SHARED_OPTIONS["seed"].check(given.get("seed"), limits)
        if seed is None or seed < 0:
            seed = secrets.randbelow(MAX_SEED + 1)
        enlarged = enlarge(source, size)
        boxes = tuple(tile_boxes(size, own["tile_size"], own["tile_overlap"]))
        options = {**given, "denoising_strength": strength}
        tiles = tuple(
            _tile_request(settings, enlarged[box.slices], prompt, options, _tile_seed(seed, k))
            for k, box in enumerate(boxes)
        )
        return cls(**own, source_size=source.shape[:2], image=enlarged, boxes=boxes, tiles=tiles)

    def parameters(self, tile_parameters: Mapping[str, Any]) -> dict[str, Any]:
        """The result's PNG parameters: the first tile's, at the result's size, with the
        upscale's own."""
        height, width = self.size
        source_height, source_width = self.source_size
        return {
            **tile_parameters,
            "width": width,
            "height": height,
            "steps_run": self.steps_run,
            "upscale": {
                "factor": self.factor,
                "tile_size": self.tile_size,
                "tile_overlap": self.tile_overlap,
                "tiles": len(self.tiles),
                "source_width": source_width,
                "source_height": source_height,
            },
        }


def _check_size(settings: Settings, size: tuple[int, int]) -> None:
    limits = settings.limits
    height, width = size
    if min(size) < limits.min_resolution:
        raise InvalidRequestError(
            f"Upscaled, the image would be {width}x{height}: its short side must reach "
            f"{limits.min_resolution} pixels. Give a larger image or a larger factor."
        )
    if height * width > limits.max_upscale_pixels:
        raise InvalidRequestError(
            f"Upscaled, the image would be {width}x{height} ({height * width:,} pixels), over "
            f"this server's limit of {limits.max_upscale_pixels:,}: give a smaller image or "
            "factor."
        )


def _tile_request(
    settings: Settings, tile: np.ndarray, prompt: Any, options: Mapping[str, Any], seed: int
) -> GenerationRequest:
    """One tile as an image-to-image request: its map and initial image are the tile itself,
    at its own size."""
    tile = np.ascontiguousarray(tile)
    return GenerationRequest.build(
        settings,
        CONDITION,
        tile,
        prompt,
        annotator=ANNOTATOR,
        init_image=tile,
        **{**options, "seed": seed},
        image_resolution=min(tile.shape[:2]),
        aspect_ratio="image",
        num_images=1,
    )


def _tile_seed(seed: int, index: int) -> int:
    """Tile `index` draws from seed + index (wrapping at the seed range, as images do)."""
    return (seed + index) % (MAX_SEED + 1)


UPSCALE_OPTIONS = options_of(UpscaleRequest)


def run_upscale(
    request: UpscaleRequest,
    run_tile: Callable[[GenerationRequest, ProgressCallback | None], GenerationResult],
    on_progress: ProgressCallback | None = None,
) -> GenerationResult:
    """Each tile repainted by `run_tile(tile_request, on_progress)` (the engine's generation) and
    blended in as it comes, so only one tile's images are held at a time. Progress counts the
    steps of all tiles."""
    blender = TileBlender(request.size, request.tile_overlap)
    notices = Notices()
    done, total = 0, request.steps_run
    first = None
    for box, tile in zip(request.boxes, request.tiles, strict=True):

        def report(step: int, _steps: int, done: int = done) -> None:
            if on_progress is not None:
                on_progress(done + step, total)

        result = run_tile(tile, report)
        blender.add(box, result.images[0])
        notices.extend(notice for notice in result.notices if notice not in notices)  # once
        first = first or result
        done += tile.steps_run
    parameters = request.parameters(first.parameters[0])
    return GenerationResult(
        control_maps=[],
        images=[blender.image()],
        seeds=[request.seed],
        parameters=[{**parameters, "seed": request.seed}],
        notices=notices,
    )
