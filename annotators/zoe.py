"""Depth: ZoeDepth metric depth, normalised as ControlNet v1.1's Zoe annotator does, near bright.

ControlNet v1.1's default depth preprocessor is ZoeDepth (`annotator/zoe`, Apache-2.0 / MIT):
controlnet_aux 0.0.10's `ZoeDetector.__call__` (the same code) runs `model.infer(image / 255)`
(reflect padding, and the prediction averaged with that of the mirrored image), then, on the
metric depth d (metres, larger = farther):

    vmin, vmax = percentile(d, 2), percentile(d, 85)
    map = uint8(clip((1 - (d - vmin) / (vmax - vmin)) * 255, 0, 255))

so the nearest 2% are white, the farthest 15% black: the near-bright map the depth ControlNet
was trained on. That is what `zoe_depth_to_map` computes, in float32 as the reference does.

The network comes from transformers (`ZoeDepthForDepthEstimation`, `Intel/zoedepth-nyu-kitti`,
the "depth_zoe" role: ZoeD-M12-NK, the reference's ZoeD-M12-N with a second, KITTI, head that a
classifier picks per image). Its `ZoeDepthImageProcessor` does the reference's preparation:
reflect padding by `sqrt(side / 2) * 3`, resize to 384 x 512 keeping the aspect ratio (multiples
of 32), mean = std = 0.5; `post_process_depth_estimation` removes the padding, averages in the
mirrored prediction and resizes it back (bicubic) to the detect-resolution image.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from annotators.base import Annotator, Detector, LoadContext
from annotators.weights import load_pretrained, processor_pixels

ROLE = "depth_zoe"
# ControlNet v1.1's Zoe normalisation: the 2nd and 85th percentiles of the metric depth.
NEAR_PERCENTILE = 2
FAR_PERCENTILE = 85

# image RGB uint8 (H, W, 3) -> float32 (H, W) metric depth in metres, larger = farther.
MetricDepthEstimator = Callable[[np.ndarray], np.ndarray]


def zoe_depth_to_map(depth: np.ndarray) -> np.ndarray:
    """Metric depth (H, W) -> uint8 (H, W): 255 at or nearer than the 2nd percentile, 0 at or
    beyond the 85th, linear (truncated) between. A flat depth (no range) gives zeros instead of
    the reference's NaNs."""
    depth = np.asarray(depth, dtype=np.float32)
    vmin = np.percentile(depth, NEAR_PERCENTILE)
    vmax = np.percentile(depth, FAR_PERCENTILE)
    if not vmax > vmin:
        return np.zeros(depth.shape, np.uint8)
    relative = (depth - vmin) / (vmax - vmin)
    return ((1.0 - relative) * 255.0).clip(0, 255).astype(np.uint8)


def load_zoe_estimator(context: LoadContext) -> MetricDepthEstimator:
    """The depth_zoe model on `context.device`, as a function image -> metric depth (H, W)."""
    import torch
    from transformers import ZoeDepthForDepthEstimation, ZoeDepthImageProcessor

    model, processor = load_pretrained(
        context, ROLE, ZoeDepthForDepthEstimation, ZoeDepthImageProcessor
    )
    model.to(context.device).eval()

    def estimate(image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        pixel_values = processor_pixels(processor, image, context.device, model.dtype)
        with torch.inference_mode():
            outputs = model(pixel_values=pixel_values)
            # The reference's flip augmentation: the mirrored image's prediction, mirrored back
            # and averaged in by the post-processing.
            flipped = model(pixel_values=torch.flip(pixel_values, dims=[3]))
            depth = processor.post_process_depth_estimation(
                outputs, source_sizes=[(height, width)], outputs_flipped=flipped
            )[0]["predicted_depth"]
        return depth.float().cpu().numpy()  # (H, W) float32

    return estimate


class ZoeDepthAnnotator(Annotator):
    name = "depth_zoe"
    needs = ((ROLE, None),)
    label = "Depth (ZoeDepth, v1.1's default)"
    default_detect_resolution = 384  # the v1.1 depth app's default

    def load(self, context: LoadContext) -> Detector:
        estimate = load_zoe_estimator(context)

        def detect(image: np.ndarray) -> np.ndarray:
            return zoe_depth_to_map(estimate(image))  # (H, W) uint8

        return detect
