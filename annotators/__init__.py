"""Annotator registry and the one path every control map takes.

    HWC3 -> size of the output (short side = image resolution, multiples of 64)
         -> detect (at that size, or at the detect resolution or the image's own size and
            resized to it by the annotator's `fit_map`)
         -> HWC3 -> postprocess (at the output size) -> HWC3

Adding an annotator means writing one `Annotator` subclass and listing it in `ANNOTATORS`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from annotators.base import Annotator, Detector, LoadContext, Param
from annotators.canny import CannyAnnotator
from annotators.depth import MidasDepthAnnotator
from annotators.depth_anything import DepthAnythingV2Annotator
from annotators.dwpose import DwposeAnnotator, DwposeFullAnnotator
from annotators.hed import FakeScribbleAnnotator, HedAnnotator, HedSafeAnnotator
from annotators.lineart import (
    LineartAnnotator,
    LineartCoarseAnnotator,
    LineartStandardAnnotator,
    LineDrawingAnnotator,
)
from annotators.lineart_anime import LineartAnimeAnnotator
from annotators.mlsd import MlsdAnnotator
from annotators.normal import MidasNormalAnnotator, NormalBaeAnnotator
from annotators.oneformer import OneFormerAde20kAnnotator, OneFormerCocoAnnotator
from annotators.passthrough import PassthroughAnnotator
from annotators.pidinet import PidinetAnnotator, PidinetSafeAnnotator
from annotators.pose import MediapipePoseAnnotator, OpenposeAnnotator
from annotators.scribble import ScribbleAnnotator
from annotators.seg import UpernetSegAnnotator
from annotators.shuffle import ShuffleAnnotator
from annotators.tile import TileResampleAnnotator
from annotators.util import (
    HWC3,
    RESIZE_MODES,
    crop_to_aspect,
    fill_to,
    fitted_size,
    output_size,
    resize_image,
    resize_to,
)
from annotators.zoe import ZoeDepthAnnotator
from errors import look_up

ANNOTATORS: dict[str, Annotator] = {
    annotator.name: annotator
    for annotator in (
        CannyAnnotator(),
        MlsdAnnotator(),
        HedAnnotator(),
        HedSafeAnnotator(),
        PidinetAnnotator(),
        PidinetSafeAnnotator(),
        ScribbleAnnotator(),
        FakeScribbleAnnotator(),
        OpenposeAnnotator(),
        DwposeAnnotator(),
        DwposeFullAnnotator(),
        MediapipePoseAnnotator(),
        MidasDepthAnnotator(),
        ZoeDepthAnnotator(),
        DepthAnythingV2Annotator(),
        NormalBaeAnnotator(),
        MidasNormalAnnotator(),
        UpernetSegAnnotator(),
        OneFormerAde20kAnnotator(),
        OneFormerCocoAnnotator(),
        TileResampleAnnotator(),
        LineartAnnotator(),
        LineartCoarseAnnotator(),
        LineartStandardAnnotator(),
        LineDrawingAnnotator(),
        LineartAnimeAnnotator(),
        ShuffleAnnotator(),
        PassthroughAnnotator(),
    )
}

__all__ = [
    "ANNOTATORS",
    "Annotator",
    "Detector",
    "LoadContext",
    "Param",
    "get_annotator",
    "make_control_map",
]


def get_annotator(name: str) -> Annotator:
    return look_up(ANNOTATORS, name, "annotator")


def make_control_map(
    annotator: Annotator,
    detector: Detector,
    image: np.ndarray,
    image_resolution: int,
    detect_resolution: int | None = None,
    params: dict[str, Any] | None = None,
    size: tuple[int, int] | None = None,
    resize_mode: str = "just_resize",
) -> np.ndarray:
    """The control map for `image` at the output size, RGB uint8 (H, W, 3).

    `detector` is `annotator.load(context)`; `params` must already be checked
    (`Annotator.check_params`). `size` is the output (H, W); by default the image's own aspect
    with its short side at `image_resolution`. When the image's aspect differs from `size`,
    `resize_mode` (see `RESIZE_MODES`) says how it is fitted: the photo is cropped before
    annotating, stretched, or annotated whole and centred on a border-coloured map.
    """
    image = HWC3(image)
    if size is None:
        size = output_size(image.shape[0], image.shape[1], image_resolution)
    height, width = size
    look_up(RESIZE_MODES, resize_mode, "resize mode")
    if resize_mode == "resize_and_fill":
        inner_height, inner_width = fitted_size(image.shape[0], image.shape[1], height, width)
        inner = _map_at(
            annotator, detector, image, inner_height, inner_width, detect_resolution, params
        )
        return fill_to(inner, height, width)
    if resize_mode == "crop_and_resize":
        image = crop_to_aspect(image, height, width)
    return _map_at(annotator, detector, image, height, width, detect_resolution, params)


def _map_at(annotator, detector, image, height, width, detect_resolution, params=None):
    """detect (at (height, width), at the detect resolution, or at the image's own size, and
    resized by `fit_map`) -> postprocess."""
    params = params or {}
    if annotator.detects_at_image_size:
        control_map = annotator.fit_map(HWC3(detector(image, **params)), height, width)
    elif annotator.default_detect_resolution is None or detect_resolution is None:
        control_map = detector(resize_to(image, height, width), **params)
    else:
        detected = detector(resize_image(image, detect_resolution), **params)
        control_map = annotator.fit_map(HWC3(detected), height, width)
    return HWC3(annotator.postprocess(HWC3(control_map)))
