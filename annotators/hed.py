"""Soft edges (HED), their quantised "safe" variant, and fake scribbles made from them.

Adapted from controlnet_aux 0.0.10 `controlnet_aux/hed/__init__.py` (`HEDdetector`, Apache-2.0),
itself lllyasviel/ControlNet v1.1 `annotator/hed` (Apache-2.0). The network is controlnet_aux's
`ControlNetHED_Apache2` (RGB in, 0-255, no normalisation) with the weights `ControlNetHED.pth` of
lllyasviel/Annotators: its five side outputs are resized to the image, averaged and squashed by a
sigmoid. The three annotators share one loaded network (annotators/shared.py). Fake scribbles
follow the reference fake-scribble app, reusing controlnet_aux's `nms` and `safe_step`.
torch and controlnet_aux are imported in `load`, never at import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from annotators.base import Annotator, Detector, LoadContext
from annotators.shared import shared
from annotators.weights import load_state_dict, weights_file

HED_WEIGHTS = "ControlNetHED.pth"
# Fake scribble post-processing (reference): keep ridges of the sigma-3-blurred map above 127,
# then thicken them with another sigma-3 blur, keeping any pixel above 4.
NMS_THRESHOLD = 127
NMS_SIGMA = 3.0
THICKEN_SIGMA = 3.0
THICKEN_THRESHOLD = 4


def load_hed(context: LoadContext, safe: bool = False) -> Detector:
    """The HED detector: RGB uint8 (H, W, 3) -> soft edges uint8 (H, W); `safe` quantises."""
    path = weights_file(context, HED_WEIGHTS)  # a clear error before the slow imports
    import torch
    from controlnet_aux.util import safe_step

    # One network for hed, hed_safe and fake_scribble while any of their detectors lives.
    network = shared(("hed", path, context.device), lambda: _load_network(path, context.device))

    def detect(image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        with torch.inference_mode():
            pixels = torch.from_numpy(image.copy()).float().to(context.device)  # (H, W, 3) 0-255
            sides = network(pixels.permute(2, 0, 1)[None])  # 5 x (1, 1, H / 2**i, W / 2**i)
        # Side outputs brought to (H, W) and averaged in float32, the sigmoid in float64 (ref.).
        sides = [
            cv2.resize(side[0, 0].cpu().numpy(), (width, height), interpolation=cv2.INTER_LINEAR)
            for side in sides
        ]
        edge = 1 / (1 + np.exp(-np.mean(np.stack(sides, axis=2), axis=2).astype(np.float64)))
        if safe:
            edge = safe_step(edge)  # thirds -> 0, 0.5, 1.0: grey levels 0, 127, 255
        return (edge * 255.0).clip(0, 255).astype(np.uint8)

    return detect


def _load_network(path: Path, device: str) -> Any:
    from controlnet_aux.hed import ControlNetHED_Apache2

    network = ControlNetHED_Apache2()
    network.load_state_dict(load_state_dict(path))
    return network.float().to(device).eval()


def fake_scribble_from_edges(edges: np.ndarray) -> np.ndarray:
    """HED soft edges uint8 -> fake scribble uint8 of the same shape, only 0 and 255."""
    from controlnet_aux.util import nms  # imports torch (controlnet_aux's package __init__)

    scribble = nms(edges, NMS_THRESHOLD, NMS_SIGMA)  # thin ridges, 0 / 255
    scribble = cv2.GaussianBlur(scribble, (0, 0), THICKEN_SIGMA)
    scribble[scribble > THICKEN_THRESHOLD] = 255
    scribble[scribble < 255] = 0
    return scribble


class HedAnnotator(Annotator):
    name = "hed"
    needs = (("annotators", HED_WEIGHTS),)
    label = "Soft edges (HED)"
    default_detect_resolution = 512
    safe = False

    def load(self, context: LoadContext) -> Detector:
        return load_hed(context, safe=self.safe)


class HedSafeAnnotator(HedAnnotator):
    name = "hed_safe"
    label = "Soft edges (HED, safe)"
    safe = True


class FakeScribbleAnnotator(HedAnnotator):
    """HED, brought to the output size, then thinned and thickened there (as the reference)."""

    name = "fake_scribble"
    label = "Fake scribble (from HED)"

    def postprocess(self, control_map: np.ndarray) -> np.ndarray:
        return fake_scribble_from_edges(control_map[:, :, 0])  # the map is grey
