"""Soft edges (PiDiNet) and their quantised "safe" variant, beside HED on the soft-edge tab.

Adapted from controlnet_aux 0.0.10 `controlnet_aux/pidi/__init__.py` (`PidiNetDetector`,
Apache-2.0), itself lllyasviel/ControlNet v1.1 `annotator/pidinet` (PiDiNet: Su et al., ICCV 2021,
MIT). The network is controlnet_aux's `pidinet()` (the "carv4" pixel-difference convolutions,
dilation 24 with spatial attention, about 0.7 M parameters) with the weights `table5_pidinet.pth`
of lllyasviel/Annotators, a training checkpoint whose `state_dict` keys carry DataParallel's
`module.` prefix. As in PidiNetDetector, the photo's channels are reversed (BGR) and scaled to
0-1, and of the network's five sigmoid outputs the last (the fused edge map) is the map: times
255, clipped and truncated to uint8; the safe variant first quantises it with controlnet_aux's
`safe_step` (grey levels 0, 127, 255), as PidiNetDetector's `safe=True`. The two annotators share
one loaded network (annotators/shared.py). torch and controlnet_aux are imported in `load`, never
at import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from annotators.base import Annotator, Detector, LoadContext
from annotators.shared import shared
from annotators.weights import load_state_dict, weights_file

PIDINET_WEIGHTS = "table5_pidinet.pth"
DATA_PARALLEL_PREFIX = "module."


def build_pidinet() -> Any:
    """PidiNetDetector's network, randomly initialised (torch and controlnet_aux imported here)."""
    from controlnet_aux.pidi.model import pidinet

    return pidinet()


def pidinet_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The network's tensors from the checkpoint's `state_dict`, without the `module.` prefix."""
    return {key.removeprefix(DATA_PARALLEL_PREFIX): value for key, value in checkpoint.items()}


def _load_network(path: Path, device: str) -> Any:
    network = build_pidinet()
    network.load_state_dict(pidinet_state(load_state_dict(path)))  # load_state_dict unwraps it
    return network.float().to(device).eval()


def load_pidinet(context: LoadContext, safe: bool = False) -> Detector:
    """The PiDiNet detector: RGB uint8 (H, W, 3) -> soft edges uint8 (H, W); `safe` quantises."""
    path = weights_file(context, PIDINET_WEIGHTS)  # a clear error before the slow imports
    import torch
    from controlnet_aux.util import safe_step

    # One network for pidinet and pidinet_safe while either of their detectors lives.
    network = shared(("pidinet", path, context.device), lambda: _load_network(path, context.device))

    def detect(image: np.ndarray) -> np.ndarray:
        bgr = image[:, :, ::-1].copy()  # the channel order the ControlNet's maps were made with
        with torch.inference_mode():
            pixels = torch.from_numpy(bgr).float().to(context.device) / 255.0
            edge = network(pixels.permute(2, 0, 1)[None])[-1]  # (1, 1, H, W), the fused output
        edge = edge.cpu().numpy()
        if safe:
            edge = safe_step(edge)  # thirds -> 0, 0.5, 1.0: grey levels 0, 127, 255
        return (edge * 255.0).clip(0, 255).astype(np.uint8)[0, 0]

    return detect


class PidinetAnnotator(Annotator):
    name = "pidinet"
    needs = (("annotators", PIDINET_WEIGHTS),)
    label = "Soft edges (PiDiNet)"
    default_detect_resolution = 512
    safe = False

    def load(self, context: LoadContext) -> Detector:
        return load_pidinet(context, safe=self.safe)


class PidinetSafeAnnotator(PidinetAnnotator):
    name = "pidinet_safe"
    label = "Soft edges (PiDiNet, safe)"
    safe = True
