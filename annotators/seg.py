"""ADE20K segmentation maps: UperNet + ConvNeXt (transformers), painted in ControlNet's palette.

ControlNet's own annotator is UniFormer-S + UperNet in a vendored mmsegmentation
(`upernet_global_small.pth`); diffusers' seg examples use `openmmlab/upernet-convnext-small`
instead, which predicts the same 150 ADE20K classes, so its maps are painted with the same palette
(annotators/ade20k.py). The map is made at the detect resolution and resized to the output with
nearest neighbour, so every pixel keeps a palette colour.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from annotators.ade20k import colorize
from annotators.base import Annotator, Detector, LoadContext
from annotators.weights import load_pretrained

ROLE = "segmenter"


class UpernetSegAnnotator(Annotator):
    name = "seg_upernet"
    needs = (("segmenter", None),)
    label = "Segmentation (UperNet ConvNeXt, ADE20K)"
    # The ConvNeXt UperNets were trained on 512x512 ADE20K crops, like the reference's UniFormer.
    default_detect_resolution = 512
    # Blending two class colours makes a colour no class has: resize the map without blending.
    map_interpolation = cv2.INTER_NEAREST

    def load(self, context: LoadContext) -> Detector:
        import torch

        processor, model = _load_segmenter(context)
        model.to(context.device).eval()

        def detect(image: np.ndarray) -> np.ndarray:
            """image: RGB uint8 (H, W, 3) -> ADE20K map, RGB uint8 (H, W, 3)."""
            if not image.flags.writeable:  # torch.from_numpy warns on read-only arrays
                image = image.copy()
            # The image already has the detect resolution as its short side (multiples of 64):
            # keep its aspect ratio, as the reference's keep-ratio resize does, instead of the
            # processor's default 512x512 squash.
            inputs = processor(images=image, do_resize=False, return_tensors="pt")
            with torch.inference_mode():
                # (1, 150, H, W): UperNet already upsamples its logits to the input size.
                logits = model(pixel_values=inputs.pixel_values.to(context.device)).logits
                # Class ids (H, W), 0 = wall. The same as the processor's
                # post_process_semantic_segmentation(target_sizes=[(H, W)]), minus its
                # bilinear resize of all 150 channels to the size they already have.
                labels = logits[0].argmax(dim=0)
            return colorize(labels.cpu().numpy())

        return detect


def _load_segmenter(context: LoadContext) -> tuple[Any, Any]:
    """(image processor, UperNet model) of the segmenter role, or a ModelUnavailableError."""
    from transformers import AutoImageProcessor, UperNetForSemanticSegmentation

    model, processor = load_pretrained(
        context, ROLE, UperNetForSemanticSegmentation, AutoImageProcessor
    )
    # The auxiliary FCN head only adds a training loss; in eval it would still compute a
    # second full-size (150, H, W) logits map on every call.
    model.auxiliary_head = None
    return processor, model
