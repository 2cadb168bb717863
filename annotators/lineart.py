"""Line art: white lines on black, as the v1.1 line-art ControlNet was trained on.

- `lineart` and `lineart_coarse` are adapted from controlnet_aux 0.0.10
  `controlnet_aux/lineart/__init__.py` (`LineartDetector`, Apache-2.0), itself lllyasviel/ControlNet
  v1.1 `annotator/lineart` (the Informative Drawings generator of Chan, Durand and Isola, CVPR
  2022, MIT). The network is controlnet_aux's `Generator(3, 1, 3)` (3 residual blocks, about
  4.3 M parameters) with the weights `sk_model.pth` (realistic) or `sk_model2.pth` (coarse: what
  LineartDetector runs with `coarse=True`) of lllyasviel/Annotators. It takes RGB scaled to 0-1
  and draws dark lines on white paper through a sigmoid; the map is that drawing times 255
  (truncated), brought to the output size with INTER_LINEAR and then inverted (`postprocess`), in
  LineartDetector's order, so the maps equal its maps.
- `lineart_standard` needs no weights: the rule of the AUTOMATIC1111 ControlNet extension
  (Mikubill/sd-webui-controlnet, `lineart_standard` in scripts/preprocessor/legacy/processor.py,
  read at commit 26ab824; the rule is followed, no code is taken from it). The image, edge-padded
  to multiples of 64, is blurred with a Gaussian of sigma 6; a pixel's line strength is how much
  darker it is than its blurred surround in its least-darkened channel (clipped at 0); strengths
  are divided by the median of those above 8 (at least 16), times 127, clipped to 0-255 and
  truncated to uint8; the padding is cut off again. It runs at the annotator resolution, as the
  extension's preprocessor resolution.
- `line_drawing` is the tab's "my image is the map" for a drawing: line art drawn dark on light
  paper (a pen or pencil drawing, the usual case) is inverted to white lines on black, as the
  scribble annotator inverts a scribble (annotators/scribble.py), but kept soft; a drawing already
  light on dark is kept. `none` (annotators/passthrough.py) stays what it is on every tab.
torch and controlnet_aux are imported in `load`, never at import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from annotators.base import Annotator, Detector, LoadContext
from annotators.util import SIZE_MULTIPLE
from annotators.weights import load_state_dict, weights_file

LINEART_WEIGHTS = "sk_model.pth"
LINEART_COARSE_WEIGHTS = "sk_model2.pth"
# The generator's shape in LineartDetector: RGB in, one line channel out, 3 residual blocks.
GENERATOR_SHAPE = (3, 1, 3)

# lineart_standard (the extension's constants).
STANDARD_SIGMA = 6.0  # the Gaussian's sigma, in pixels of the annotator resolution
STANDARD_THRESHOLD = 8  # strengths above it set the median that normalises them
STANDARD_MIN_SCALE = 16  # the normaliser is at least this
STANDARD_LEVEL = 127  # a line of median strength gets this grey level

# line_drawing: a drawing whose median grey is above this is on light paper.
LIGHT_PAPER = 127


def build_generator() -> Any:
    """LineartDetector's network, randomly initialised (torch and controlnet_aux imported here)."""
    from controlnet_aux.lineart import Generator

    return Generator(*GENERATOR_SHAPE)


def _load_generator(path: Path, device: str) -> Any:
    network = build_generator()
    network.load_state_dict(load_state_dict(path))
    return network.float().to(device).eval()


class LineartAnnotator(Annotator):
    """The realistic line-art network (`sk_model.pth`)."""

    name = "lineart"
    label = "Line art (realistic)"
    weights = LINEART_WEIGHTS
    needs = (("annotators", LINEART_WEIGHTS),)
    default_detect_resolution = 512

    def load(self, context: LoadContext) -> Detector:
        path = weights_file(context, self.weights)  # a clear error before the slow imports
        import torch

        network = _load_generator(path, context.device)

        def detect(image: np.ndarray) -> np.ndarray:
            """RGB uint8 (H, W, 3) -> the network's drawing uint8 (H, W): dark lines on white."""
            with torch.inference_mode():
                pixels = torch.from_numpy(image.copy()).float().to(context.device) / 255.0
                drawing = network(pixels.permute(2, 0, 1)[None])[0, 0]
            return (drawing.cpu().numpy() * 255.0).clip(0, 255).astype(np.uint8)

        return detect

    def postprocess(self, control_map: np.ndarray) -> np.ndarray:
        """At the output size, after the resize: white lines on black (LineartDetector's order)."""
        return 255 - control_map


class LineartCoarseAnnotator(LineartAnnotator):
    """The coarse line-art network (`sk_model2.pth`): fewer, bolder lines."""

    name = "lineart_coarse"
    label = "Line art (coarse)"
    weights = LINEART_COARSE_WEIGHTS
    needs = (("annotators", LINEART_COARSE_WEIGHTS),)


def pad_to_multiple(size: int) -> int:
    """How many pixels bring `size` up to the next multiple of 64 (0 when it is one)."""
    return -size % SIZE_MULTIPLE


def lineart_standard(image: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> line strengths uint8 (H, W): AUTOMATIC1111's rule (module doc)."""
    height, width = image.shape[:2]
    padding = ((0, pad_to_multiple(height)), (0, pad_to_multiple(width)), (0, 0))
    pixels = np.pad(image, padding, mode="edge").astype(np.float32)
    surround = cv2.GaussianBlur(pixels, (0, 0), STANDARD_SIGMA)  # kernel size from sigma
    strength = np.min(surround - pixels, axis=2).clip(0, 255)  # darker than the surround
    strong = strength[strength > STANDARD_THRESHOLD]
    # The median of a float32 array is a float32: the division stays in float32, as there.
    scale = max(STANDARD_MIN_SCALE, np.median(strong)) if strong.size else STANDARD_MIN_SCALE
    lines = (strength / scale * STANDARD_LEVEL).clip(0, 255).astype(np.uint8)
    return lines[:height, :width]


class LineartStandardAnnotator(Annotator):
    name = "lineart_standard"
    label = "Line art (standard: no network)"
    default_detect_resolution = 512

    def detect(self, image: np.ndarray) -> np.ndarray:
        return lineart_standard(image)


def line_drawing(image: np.ndarray) -> np.ndarray:
    """A drawing -> its lines uint8 (H, W), white on black.

    On light paper (median grey above 127) a pixel's line is how dark its darkest channel is
    (255 - min over R, G, B): black lines on white are inverted, soft edges kept. On dark paper
    the drawing already is white on black: its brightest channel is kept.
    """
    if np.median(image.mean(axis=2)) > LIGHT_PAPER:
        return 255 - image.min(axis=2)
    return image.max(axis=2)


class LineDrawingAnnotator(Annotator):
    name = "line_drawing"
    label = "Line drawing: my own (black lines on white are inverted)"

    def detect(self, image: np.ndarray) -> np.ndarray:
        return line_drawing(image)
