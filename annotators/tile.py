"""Tile resample: the photo, blurred by down-sampling, as the tile ControlNet's map.

The rule is the AUTOMATIC1111 ControlNet extension's (Mikubill/sd-webui-controlnet, commit
56cec5b; the rule is followed, no code is taken from it). Its `tile_resample` preprocessor
(scripts/preprocessor/legacy/processor.py) takes the image at its own size and, for a rate
r >= 1.1, shrinks it with INTER_AREA to (int(H / r), int(W / r)); below 1.1 it returns the image
unchanged. The extension then brings every map to the output size (`high_quality_resize` in
scripts/controlnet.py's `detectmap_proc`): INTER_AREA where the output has fewer pixels,
INTER_CUBIC otherwise. Its slider, "Down Sampling Rate", runs from 1 to 8 in steps of 0.01,
default 1. Only the photo rule is kept: the extension also resizes maps of 3-199 colours with
INTER_NEAREST and re-thresholds two-colour maps, which suits edge and segmentation maps, not
photos.
"""

from __future__ import annotations

import cv2
import numpy as np

from annotators.base import Annotator, Param

# Rates below this leave the image as it is (the extension's threshold).
NO_RESAMPLE_BELOW = 1.1


def down_sampled_size(height: int, width: int, rate: float) -> tuple[int, int]:
    """(H, W) of the image shrunk by `rate`: each side divided and truncated, at least 1."""
    return max(1, int(height / rate)), max(1, int(width / rate))


def fit_photo(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """`image` at (height, width): INTER_AREA to fewer pixels, INTER_CUBIC otherwise."""
    if image.shape[:2] == (height, width):
        return image
    fewer = height * width < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if fewer else cv2.INTER_CUBIC
    return cv2.resize(image, (width, height), interpolation=interpolation)


class TileResampleAnnotator(Annotator):
    name = "tile_resample"
    label = "Tile resample: the photo, blurred by down-sampling"
    params = (
        Param(
            "down_sampling_rate",
            "Down sampling rate",
            1.0,
            1.0,
            8.0,
            0.01,
            info="How much the photo is shrunk before it steers (below 1.1: not at all). Higher "
            "blurs more and leaves the model more detail to invent",
        ),
    )
    # The rate is relative to the upload's own resolution, as in the extension.
    detects_at_image_size = True

    def detect(self, image: np.ndarray, down_sampling_rate: float = 1.0) -> np.ndarray:
        if down_sampling_rate < NO_RESAMPLE_BELOW:
            return image
        height, width = down_sampled_size(image.shape[0], image.shape[1], down_sampling_rate)
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)

    def fit_map(self, control_map: np.ndarray, height: int, width: int) -> np.ndarray:
        return fit_photo(control_map, height, width)
