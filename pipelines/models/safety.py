"""The optional NSFW safety checker: the one Stable Diffusion 1.5's own pipeline uses.

Off by default; the operator turns it on in settings. `SafetyChecker.load` reads
`StableDiffusionSafetyChecker` and its CLIP image processor from one repo (the Hub's
`CompVis/stable-diffusion-safety-checker`: config.json, model.safetensors and
preprocessor_config.json) through `load_model`, so MODELS_DIR, safetensors-only loading and the
clear `ModelUnavailableError` apply as for every other model. `flagged` runs the checker with its
own concept thresholds and reports one bool per image; `censor` turns the flagged images black.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import CLIPImageProcessor

from model_sources import load_model

SAFETY_CHECKER_ID = "CompVis/stable-diffusion-safety-checker"
ROLE = "safety_checker"


class SafetyChecker:
    """A loaded checker and its image processor, on one device and dtype."""

    def __init__(
        self,
        model: StableDiffusionSafetyChecker,
        processor: CLIPImageProcessor,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.processor = processor
        self.device = torch.device(device)
        self.dtype = dtype

    @classmethod
    def load(
        cls,
        model_id: str,
        models_dir: Path,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> SafetyChecker:
        """Load the checker from `model_id` (a Hub id, mirrored in MODELS_DIR, or a folder)."""
        processor = load_model(CLIPImageProcessor.from_pretrained, ROLE, model_id, models_dir)
        model = load_model(
            StableDiffusionSafetyChecker.from_pretrained, ROLE, model_id, models_dir, dtype=dtype
        )
        return cls(model, processor, device, dtype)

    def flagged(self, images: list[np.ndarray]) -> list[bool]:
        """Whether each RGB uint8 HWC image shows an NSFW concept, by the checker's thresholds."""
        if not images:
            return []
        pixels = self.processor(
            images=list(images), input_data_format="channels_last", return_tensors="pt"
        ).pixel_values
        with torch.inference_mode():
            # The checker blackens entries of the list it is given: hand it a copy of the list.
            _, has_nsfw = self.model(
                clip_input=pixels.to(device=self.device, dtype=self.dtype), images=list(images)
            )
        return [bool(flag) for flag in has_nsfw]


def censor(images: list[np.ndarray], flags: list[bool]) -> list[np.ndarray]:
    """The images with each flagged one replaced by a black image of the same shape and dtype."""
    return [
        np.zeros_like(image) if flag else image for image, flag in zip(images, flags, strict=True)
    ]
