"""Anime line art: white lines on black, as the v1.1 anime line-art ControlNet was trained on.

Adapted from controlnet_aux 0.0.10 `controlnet_aux/lineart_anime/__init__.py`
(`LineartAnimeDetector`, Apache-2.0), itself lllyasviel/ControlNet v1.1 `annotator/lineart_anime`
(the Anime2Sketch generator of Xiang et al. 2021, MIT). The network is controlnet_aux's
`UnetGenerator(3, 1, 8, 64)`: a pix2pix U-Net with 8 down-samplings, instance norm without
affine parameters or running statistics, no dropout (about 54 M parameters), with the weights
`netG.pth` of lllyasviel/Annotators (keys with DataParallel's `module.` prefix are read too, as
LineartAnimeDetector strips it). Its 8 down-samplings need sides that are multiples of 256: as in
LineartAnimeDetector, the photo at the annotator resolution is resized (bicubic, not padded) up
to the next multiples of 256, scaled to -1..1, and the network's tanh drawing (dark lines on
white) is mapped back to 0-255, resized (bicubic) to the photo's size, clipped and truncated to
uint8; the map is brought to the output size with INTER_LINEAR and then inverted
(`postprocess`), in LineartAnimeDetector's order, so the maps equal its maps. The tab's
`line_drawing` and `none` are the line-art tab's (annotators/lineart.py,
annotators/passthrough.py). torch and controlnet_aux are imported in `load`, never at import.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from annotators.base import Annotator, Detector, LoadContext
from annotators.weights import load_state_dict, weights_file

LINEART_ANIME_WEIGHTS = "netG.pth"
# The generator's shape in LineartAnimeDetector: RGB in, one line channel out, 8 down-samplings.
GENERATOR_SHAPE = (3, 1, 8)
GENERATOR_WIDTH = 64  # its filters in the outermost layer (ngf), as netG.pth has them
# The first convolution's weight: (width, 3, 4, 4). The width is read from it, so a narrower
# generator of the same shape loads too (the tests' files; netG.pth itself is ~218 MB).
FIRST_CONV = "model.model.0.weight"
DATA_PARALLEL_PREFIX = "module."
SIDE_MULTIPLE = 2 ** GENERATOR_SHAPE[2]  # 256: each down-sampling halves the sides


def build_anime_generator(width: int = GENERATOR_WIDTH) -> Any:
    """LineartAnimeDetector's network, randomly initialised (torch and controlnet_aux imported
    here)."""
    import functools

    import torch
    from controlnet_aux.lineart_anime import UnetGenerator

    norm_layer = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    return UnetGenerator(*GENERATOR_SHAPE, width, norm_layer=norm_layer, use_dropout=False)


def generator_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The network's tensors, without DataParallel's `module.` prefix where the file has it."""
    return {key.replace(DATA_PARALLEL_PREFIX, ""): value for key, value in checkpoint.items()}


def _load_generator(path: Path, device: str) -> Any:
    state = generator_state(load_state_dict(path))
    network = build_anime_generator(width=state[FIRST_CONV].shape[0])
    network.load_state_dict(state)
    return network.float().to(device).eval()


def side_up(size: int) -> int:
    """`size` brought up to the next multiple of 256 (itself when it is one)."""
    return SIDE_MULTIPLE * math.ceil(size / SIDE_MULTIPLE)


class LineartAnimeAnnotator(Annotator):
    """The anime line-art network (`netG.pth`)."""

    name = "lineart_anime"
    label = "Anime line art"
    needs = (("annotators", LINEART_ANIME_WEIGHTS),)
    default_detect_resolution = 512

    def load(self, context: LoadContext) -> Detector:
        path = weights_file(context, LINEART_ANIME_WEIGHTS)  # a clear error before slow imports
        import torch

        network = _load_generator(path, context.device)

        def detect(image: np.ndarray) -> np.ndarray:
            """RGB uint8 (H, W, 3) -> the network's drawing uint8 (H, W): dark lines on white."""
            height, width = image.shape[:2]
            fed = cv2.resize(
                image, (side_up(width), side_up(height)), interpolation=cv2.INTER_CUBIC
            )
            with torch.inference_mode():
                pixels = torch.from_numpy(fed).float().to(context.device) / 127.5 - 1.0  # -1..1
                drawing = network(pixels.permute(2, 0, 1)[None])[0, 0] * 127.5 + 127.5
            drawing = cv2.resize(
                drawing.cpu().numpy(), (width, height), interpolation=cv2.INTER_CUBIC
            )
            return drawing.clip(0, 255).astype(np.uint8)

        return detect

    def postprocess(self, control_map: np.ndarray) -> np.ndarray:
        """At the output size, after the resize: white lines on black (LineartAnimeDetector's)."""
        return 255 - control_map
