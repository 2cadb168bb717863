"""Depth: MiDaS relative inverse depth (DPT-Hybrid), min-max normalised to 0-255, near bright.

Adapted from lllyasviel/ControlNet `annotator/midas/__init__.py` (Apache-2.0), which runs MiDaS'
own DPT-Hybrid checkpoint on the image scaled to [-1, 1] and returns `(depth - min) / max * 255`.
The same network comes here from transformers (`Intel/dpt-hybrid-midas`, the "depth_estimator"
role), preprocessed by the repo's `DPTImageProcessor` (mean = std = 0.5: the same [-1, 1]).

One difference: transformers' DPT reshapes its tokens into a square grid, so it cannot take the
reference's non-square input. The image is resized to a square whose side is its short side (the
detect resolution, 384 by default as in the reference) and the prediction is resized back, as
transformers' own `post_process_depth_estimation` does.

`load_depth_estimator` returns the raw float prediction, so the v1.0 normal annotator
(annotators/normal.py) derives its normals from the very same depth, with the very same loaded
model while both are in use.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from annotators.base import Annotator, Detector, LoadContext
from annotators.shared import shared
from annotators.weights import load_pretrained, pretrained_source

# image RGB uint8 (H, W, 3) -> float32 (H, W) relative inverse depth, larger = nearer.
DepthEstimator = Callable[[np.ndarray], np.ndarray]

# DPT-Hybrid: BiT downsamples by 16, ViT patches are 1x1 on that, the neck reaches 1/32. A square
# side that is a multiple of 32 comes back at its own size.
NET_MULTIPLE = 32


def round_to_multiple(side: int, multiple: int) -> int:
    """The multiple of `multiple` nearest to `side`, at least `multiple`."""
    return max(multiple, round(side / multiple) * multiple)


def normalise_depth(depth: np.ndarray) -> np.ndarray:
    """(H, W) -> float32 (H, W) in [0, 1]: `(depth - min) / (max - min)`, as the reference.

    A constant depth (no range to stretch) gives zeros instead of the reference's NaNs.
    """
    depth = np.asarray(depth, dtype=np.float32)
    shifted = depth - depth.min()
    top = shifted.max()
    if not np.isfinite(top) or top <= 0:
        return np.zeros_like(depth)
    return shifted / top


def depth_to_map(depth: np.ndarray) -> np.ndarray:
    """Raw inverse depth (H, W) -> uint8 (H, W), nearest 255, farthest 0 (truncated like the
    reference's `astype(np.uint8)`)."""
    return (normalise_depth(depth) * 255.0).clip(0, 255).astype(np.uint8)


def load_depth_estimator(context: LoadContext, role: str = "depth_estimator") -> DepthEstimator:
    """The `role` DPT model on `context.device`, as a function image -> raw depth (H, W).

    One estimator (model and processor) per model source and device while anything holds it:
    depth_midas and normal_midas run the same loaded model (annotators/shared.py).
    """
    source, _ = pretrained_source(context, role)
    return shared(("dpt", source, context.device), lambda: _load_estimator(context, role))


def _load_estimator(context: LoadContext, role: str) -> DepthEstimator:
    import torch
    from transformers import DPTForDepthEstimation, DPTImageProcessor

    model, processor = load_pretrained(context, role, DPTForDepthEstimation, DPTImageProcessor)
    model.to(context.device).eval()
    fixed_side = None if _accept_any_square(model) else _config_side(model)

    def estimate(image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        side = fixed_side or round_to_multiple(min(height, width), NET_MULTIPLE)
        if not image.flags.writeable:  # the processor wraps it in a tensor, which warns
            image = image.copy()
        inputs = processor(
            images=image,
            do_resize=True,
            size={"height": side, "width": side},
            keep_aspect_ratio=False,
            return_tensors="pt",
        )
        pixel_values = inputs["pixel_values"].to(context.device, model.dtype)  # (1, 3, side, side)
        with torch.inference_mode():
            depth = model(pixel_values=pixel_values).predicted_depth[:, None]  # (1, 1, side, side)
            depth = torch.nn.functional.interpolate(
                depth.float(), size=(height, width), mode="bicubic", align_corners=False
            )
        return depth[0, 0].cpu().numpy()  # (H, W) float32

    return estimate


def _config_side(model: Any) -> int:
    size = model.config.image_size
    return int(size if isinstance(size, int) else size[0])


def _accept_any_square(model: Any) -> bool:
    """Let DPT-Hybrid run at any square size; False where this transformers cannot.

    The plain ViT embeddings resize their position embeddings to the input by themselves. The
    hybrid ones refuse any size but `config.image_size` (384) unless called with
    `interpolate_pos_encoding=True`, which `DPTModel.forward` never passes; binding it here once
    makes the hybrid behave like the plain ViT (and like MiDaS, which interpolates too).
    """
    if not model.config.is_hybrid:
        return True
    embeddings = getattr(getattr(model, "dpt", None), "embeddings", None)
    if embeddings is None:
        return False
    if "interpolate_pos_encoding" not in inspect.signature(embeddings.forward).parameters:
        return False
    embeddings.forward = functools.partial(embeddings.forward, interpolate_pos_encoding=True)
    return True


class MidasDepthAnnotator(Annotator):
    name = "depth_midas"
    needs = (("depth_estimator", None),)
    label = "Depth (MiDaS, DPT-Hybrid)"
    default_detect_resolution = 384  # the reference depth app's default

    def load(self, context: LoadContext) -> Detector:
        estimate = load_depth_estimator(context)

        def detect(image: np.ndarray) -> np.ndarray:
            return depth_to_map(estimate(image))  # (H, W) uint8

        return detect
