"""Straight lines (M-LSD): white 1-px line segments on black, as the M-LSD models saw.

Adapted from controlnet_aux 0.0.10 `controlnet_aux/mlsd/__init__.py` (`MLSDdetector`,
Apache-2.0), itself lllyasviel/ControlNet `annotator/mlsd` (Apache-2.0) and M-LSD (NAVER Corp.,
Apache-2.0). The network is controlnet_aux's `MobileV2_MLSD_Large` with the weights
`mlsd_large_512_fp32.pth` of lllyasviel/Annotators; segments are decoded by controlnet_aux's
`pred_lines`. torch and controlnet_aux are imported in `load`, never at import.
"""

from __future__ import annotations

import cv2
import numpy as np

from annotators.base import Annotator, Detector, LoadContext, Param
from annotators.weights import load_state_dict, weights_file

MLSD_WEIGHTS = "mlsd_large_512_fp32.pth"


class MlsdAnnotator(Annotator):
    name = "mlsd"
    needs = (("annotators", MLSD_WEIGHTS),)
    label = "Straight lines (M-LSD)"
    params = (
        Param(
            "value_threshold",
            "M-LSD value threshold",
            0.1,
            0.01,
            2.0,
            0.01,
            info="Keep segments whose centre score is above it (scores are at most 1)",
        ),
        Param(
            "distance_threshold",
            "M-LSD distance threshold",
            0.1,
            0.01,
            20.0,
            0.01,
            info="Keep segments longer than it (in half-resolution pixels)",
        ),
    )
    default_detect_resolution = 512
    # The reference apps resize the line map with nearest neighbour: lines stay 0 / 255.
    map_interpolation = cv2.INTER_NEAREST

    def load(self, context: LoadContext) -> Detector:
        path = weights_file(context, MLSD_WEIGHTS)  # a clear error before the slow imports
        import torch
        from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large
        from controlnet_aux.mlsd.utils import pred_lines

        model = MobileV2_MLSD_Large()
        model.load_state_dict(load_state_dict(path), strict=True)
        model = model.float().to(context.device).eval()

        def detect(
            image: np.ndarray, value_threshold: float = 0.1, distance_threshold: float = 0.1
        ) -> np.ndarray:
            lines_map = np.zeros(image.shape[:2], dtype=np.uint8)  # (H, W)
            with torch.inference_mode():
                try:
                    lines = pred_lines(
                        image, model, list(image.shape[:2]), value_threshold, distance_threshold
                    )
                except IndexError:
                    # pred_lines indexes an empty array when no segment passes the thresholds
                    # (the reference swallows every exception here; we only expect this one).
                    return lines_map
            for x_start, y_start, x_end, y_end in lines:  # (N, 4) in image pixels
                start, end = (int(x_start), int(y_start)), (int(x_end), int(y_end))
                cv2.line(lines_map, start, end, 255, 1)
            return lines_map

        return detect
