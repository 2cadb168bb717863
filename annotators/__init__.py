"""Annotator registry and the one path every control map takes.

    HWC3 -> size of the output (short side = image resolution, multiples of 64)
         -> detect (at that size, or at the detect resolution and resized back)
         -> HWC3 -> postprocess (at the output size) -> HWC3

Adding an annotator means writing one `Annotator` subclass and listing it in `ANNOTATORS`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from annotators.base import Annotator, Detector, LoadContext, Param
from annotators.canny import CannyAnnotator
from annotators.depth import MidasDepthAnnotator
from annotators.hed import FakeScribbleAnnotator, HedAnnotator, HedSafeAnnotator
from annotators.mlsd import MlsdAnnotator
from annotators.normal import MidasNormalAnnotator, NormalBaeAnnotator
from annotators.passthrough import PassthroughAnnotator
from annotators.pose import MediapipePoseAnnotator, OpenposeAnnotator
from annotators.scribble import ScribbleAnnotator
from annotators.seg import UpernetSegAnnotator
from annotators.util import HWC3, output_size, resize_image, resize_to
from errors import InvalidRequestError

ANNOTATORS: dict[str, Annotator] = {
    annotator.name: annotator
    for annotator in (
        CannyAnnotator(),
        MlsdAnnotator(),
        HedAnnotator(),
        HedSafeAnnotator(),
        ScribbleAnnotator(),
        FakeScribbleAnnotator(),
        OpenposeAnnotator(),
        MediapipePoseAnnotator(),
        MidasDepthAnnotator(),
        NormalBaeAnnotator(),
        MidasNormalAnnotator(),
        UpernetSegAnnotator(),
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
    try:
        return ANNOTATORS[name]
    except (KeyError, TypeError):  # TypeError: an unhashable value sent to the API
        raise InvalidRequestError(
            f"Unknown annotator {name!r}; choose one of: {', '.join(ANNOTATORS)}."
        ) from None


def make_control_map(
    annotator: Annotator,
    detector: Detector,
    image: np.ndarray,
    image_resolution: int,
    detect_resolution: int | None = None,
    params: dict[str, Any] | None = None,
) -> np.ndarray:
    """The control map for `image` at the output size, RGB uint8 (H, W, 3).

    `detector` is `annotator.load(context)`; `params` must already be checked
    (`Annotator.check_params`).
    """
    image = HWC3(image)
    height, width = output_size(image.shape[0], image.shape[1], image_resolution)
    params = params or {}
    if annotator.default_detect_resolution is None or detect_resolution is None:
        control_map = detector(resize_to(image, height, width), **params)
    else:
        detected = detector(resize_image(image, detect_resolution), **params)
        control_map = resize_to(HWC3(detected), height, width, annotator.map_interpolation)
    return HWC3(annotator.postprocess(HWC3(control_map)))
