"""Segmentation: OneFormer (Swin-L, transformers), semantic task, in the palettes the seg
ControlNet saw.

ControlNet v1.1's default seg annotators are OneFormer ADE20K and COCO (`annotator/oneformer`:
detectron2 OneFormer, task "semantic", the argmax class painted with the dataset's colours; see
annotators/ade20k.py and annotators/coco_panoptic.py for where the colours come from). The same
networks come here from transformers (`OneFormerForUniversalSegmentation`,
`shi-labs/oneformer_{ade20k,coco}_swin_large`). Their `OneFormerProcessor` resizes the image as
the reference's predictor does (its short side to the model's test size, the long side capped)
and encodes the task prompt "the task is semantic" with its CLIP tokenizer;
`post_process_semantic_segmentation` combines the query classes and masks and resizes to the
detect-resolution image; each pixel is then painted `palette[class]` (the reference fills each
class region through matplotlib; here every pixel is exactly a palette colour, as seg_upernet's
are).

The image processor reads a class list when it loads (`class_info_file`, e.g.
`ade20k_panoptic.json`, from `repo_path`: the Hub *dataset* repo `shi-labs/oneformer_demo`).
That file is the "oneformer_class_info" role: `MODELS_DIR/shi-labs/oneformer_demo/...` when
there, so OneFormer loads offline; the processor is pointed at the folder that holds it.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from annotators.ade20k import ADE20K_PALETTE
from annotators.base import Annotator, Detector, LoadContext
from annotators.coco_panoptic import COCO_PANOPTIC_PALETTE
from annotators.weights import load_pretrained, weights_file
from errors import ModelUnavailableError

CLASS_INFO_ROLE = "oneformer_class_info"
ADE20K_CLASS_INFO = "ade20k_panoptic.json"
COCO_CLASS_INFO = "coco_panoptic.json"
TASK = "semantic"


def load_oneformer(context: LoadContext, role: str, class_info_file: str) -> tuple[Any, Any]:
    """(processor, model) of the OneFormer `role`, its class list read from the class-info role."""
    from transformers import OneFormerForUniversalSegmentation, OneFormerProcessor

    class_info = weights_file(context, class_info_file, role=CLASS_INFO_ROLE, repo_type="dataset")
    model, processor = load_pretrained(
        context,
        role,
        OneFormerForUniversalSegmentation,
        OneFormerProcessor,
        repo_path=str(class_info.parent),
        class_info_file=class_info.name,
    )
    return processor, model


class OneFormerSegAnnotator(Annotator):
    """One OneFormer model (`role`) and the palette its classes are painted in."""

    role: str
    class_info_file: str
    palette: np.ndarray
    # The v1.1 seg app's default, as for seg_upernet.
    default_detect_resolution = 512
    # Blending two class colours makes a colour no class has: resize the map without blending.
    map_interpolation = cv2.INTER_NEAREST

    def load(self, context: LoadContext) -> Detector:
        import torch

        processor, model = load_oneformer(context, self.role, self.class_info_file)
        model.to(context.device).eval()
        if model.config.num_labels != len(self.palette):
            raise ModelUnavailableError(
                f"The {self.role} model predicts {model.config.num_labels} classes; "
                f"{self.name} paints the {len(self.palette)} its ControlNet was trained on. "
                f"Set MODEL_{self.role.upper()} to a OneFormer trained on those classes."
            )
        palette = self.palette

        def detect(image: np.ndarray) -> np.ndarray:
            """image: RGB uint8 (H, W, 3) -> the seg map, RGB uint8 (H, W, 3)."""
            height, width = image.shape[:2]
            if not image.flags.writeable:  # torch.from_numpy warns on read-only arrays
                image = image.copy()
            inputs = processor(images=image, task_inputs=[TASK], return_tensors="pt")
            inputs = {name: value.to(context.device) for name, value in inputs.items()}
            with torch.inference_mode():
                outputs = model(**inputs)
                # Class ids (H, W): argmax over classes of sum over queries of
                # softmax(class logits) * sigmoid(mask logits), resized to the input.
                labels = processor.post_process_semantic_segmentation(
                    outputs, target_sizes=[(height, width)]
                )[0]
            return palette[labels.cpu().numpy()]  # (H, W) -> (H, W, 3)

        return detect


class OneFormerAde20kAnnotator(OneFormerSegAnnotator):
    name = "seg_oneformer_ade20k"
    label = "Segmentation (OneFormer, ADE20K)"
    role = "segmenter_oneformer_ade20k"
    class_info_file = ADE20K_CLASS_INFO
    palette = ADE20K_PALETTE
    needs = ((role, None), (CLASS_INFO_ROLE, class_info_file))


class OneFormerCocoAnnotator(OneFormerSegAnnotator):
    name = "seg_oneformer_coco"
    label = "Segmentation (OneFormer, COCO)"
    role = "segmenter_oneformer_coco"
    class_info_file = COCO_CLASS_INFO
    palette = COCO_PANOPTIC_PALETTE
    needs = ((role, None), (CLASS_INFO_ROLE, class_info_file))
