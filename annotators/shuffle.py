"""Content shuffle: the photo's pixels moved by a smooth random flow, as the shuffle ControlNet saw.

Adapted from controlnet_aux 0.0.10 `controlnet_aux/shuffle/__init__.py` (`ContentShuffleDetector`
and its `make_noise_disk`, Apache-2.0), itself lllyasviel/ControlNet v1.1 `annotator/shuffle`. At
the annotator resolution (H, W), two noise fields are drawn uniformly on a coarse grid (one cell
every 256 pixels, two more on each side), upscaled with INTER_CUBIC, cropped to (H, W) and
normalised to 0-1; scaled by W - 1 and H - 1 they are the x and y each pixel is read from
(`cv2.remap`, INTER_LINEAR). The map is brought to the output size with INTER_LINEAR, as there.

The noise comes from a generator seeded with the request's seed (the engine passes it: `seeded`),
so a seed gives the same map again, and the map equals ContentShuffleDetector's after
`np.random.seed(seed)`: the same legacy generator, the same draws in the same order.
"""

from __future__ import annotations

import cv2
import numpy as np

from annotators.base import Annotator

# The noise grid's cell size in pixels (ContentShuffleDetector's default `f`).
FLOW_CELL = 256


def noise_disk(height: int, width: int, cell: int, random: np.random.RandomState) -> np.ndarray:
    """A smooth random field (height, width) in [0, 1] (controlnet_aux's make_noise_disk, C=1)."""
    coarse = random.uniform(low=0, high=1, size=((height // cell) + 2, (width // cell) + 2, 1))
    noise = cv2.resize(coarse, (width + 2 * cell, height + 2 * cell), interpolation=cv2.INTER_CUBIC)
    noise = noise[cell : cell + height, cell : cell + width]
    noise -= np.min(noise)
    noise /= np.max(noise)
    return noise


def content_shuffle(image: np.ndarray, seed: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> the shuffled image (H, W, 3)."""
    height, width = image.shape[:2]
    random = np.random.RandomState(seed)
    x = noise_disk(height, width, FLOW_CELL, random) * float(width - 1)
    y = noise_disk(height, width, FLOW_CELL, random) * float(height - 1)
    flow = np.stack([x, y], axis=2).astype(np.float32)
    return cv2.remap(image, flow, None, cv2.INTER_LINEAR)


class ShuffleAnnotator(Annotator):
    name = "shuffle"
    label = "Content shuffle (seeded by the request's seed)"
    default_detect_resolution = 512
    seeded = True

    def detect(self, image: np.ndarray, seed: int = 0) -> np.ndarray:
        return content_shuffle(image, seed)
