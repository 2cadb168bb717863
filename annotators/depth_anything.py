"""Depth: Depth Anything V2 small, relative inverse depth min-max normalised to 0-255, near bright.

Depth Anything V2 predicts relative inverse depth (disparity: larger = nearer), as MiDaS does.
The Depth Anything ControlNet preprocessors make the map the same way: comfyui_controlnet_aux's
`DepthAnythingV2Detector.__call__` (`src/custom_controlnet_aux/depth_anything_v2/__init__.py`,
Apache-2.0) runs the reference `infer_image` (the image resized to 518 on its short side,
multiples of 14, ImageNet mean and std; the prediction resized back bilinearly) and returns
`uint8((depth - min) / (max - min) * 255)`, inverting only its metric models. That is
`depth_to_map` of annotators/depth.py, shared with depth_midas.

The network comes from transformers (`DepthAnythingForDepthEstimation`,
`depth-anything/Depth-Anything-V2-Small-hf`, Apache-2.0, the "depth_anything" role), prepared
by the repo's `DPTImageProcessor` (the same 518 / 14 / ImageNet settings); its prediction is
resized back to the detect-resolution image bilinearly with aligned corners, as `infer_image`.
One difference: where both sides are under 518 (a detect resolution below it), the processor
scales by the factor nearest 1, so the short side stays under 518; `infer_image` brings it up
to 518. At the default 512 the two agree.
"""

from __future__ import annotations

import numpy as np

from annotators.base import Annotator, Detector, LoadContext
from annotators.depth import DepthEstimator, depth_to_map
from annotators.weights import load_pretrained, processor_pixels

ROLE = "depth_anything"


def load_depth_anything(context: LoadContext) -> DepthEstimator:
    """The depth_anything model on `context.device`, as a function image -> inverse depth."""
    import torch
    from transformers import AutoImageProcessor, DepthAnythingForDepthEstimation

    model, processor = load_pretrained(
        context, ROLE, DepthAnythingForDepthEstimation, AutoImageProcessor
    )
    model.to(context.device).eval()

    def estimate(image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        pixel_values = processor_pixels(processor, image, context.device, model.dtype)
        with torch.inference_mode():
            depth = model(pixel_values=pixel_values).predicted_depth[:, None]  # (1, 1, h, w)
            depth = torch.nn.functional.interpolate(
                depth.float(), size=(height, width), mode="bilinear", align_corners=True
            )
        return depth[0, 0].cpu().numpy()  # (H, W) float32, larger = nearer

    return estimate


class DepthAnythingV2Annotator(Annotator):
    name = "depth_anything_v2"
    needs = ((ROLE, None),)
    label = "Depth (Depth Anything V2 small)"
    default_detect_resolution = 512  # the Depth Anything preprocessors' default

    def load(self, context: LoadContext) -> Detector:
        estimate = load_depth_anything(context)

        def detect(image: np.ndarray) -> np.ndarray:
            return depth_to_map(estimate(image))  # (H, W) uint8

        return detect
