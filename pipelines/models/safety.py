"""The optional NSFW safety checker: the one Stable Diffusion 1.5's own pipeline uses.

Off by default; the operator turns it on in settings. `SafetyChecker.load` reads
`StableDiffusionSafetyChecker` and its CLIP image processor from one repo through `load_model`,
so MODELS_DIR, safetensors-only loading and the clear `ModelUnavailableError` apply as for every
other model. By default that repo is SD1.5's own (`stable-diffusion-v1-5/stable-diffusion-v1-5`:
safety_checker/config.json, safety_checker/model.safetensors or model.fp16.safetensors, and
feature_extractor/preprocessor_config.json); `CompVis/stable-diffusion-safety-checker` holds the
same checker but only as a pickle (pytorch_model.bin) on its main branch. `flagged` runs the
checker with its own concept thresholds and reports one bool per image; `censor` turns the
flagged images black.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import CLIPImageProcessor

from model_sources import load_model, resolve_source

SAFETY_CHECKER_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
ROLE = "safety_checker"
MODEL_SUBFOLDER = "safety_checker"
PROCESSOR_SUBFOLDER = "feature_extractor"


def subfolders(model_id: str, models_dir: Path) -> tuple[str | None, str | None]:
    """(the checker's subfolder, the processor's) in the source of `model_id`.

    Decided by the folder's contents: a local folder (MODELS_DIR mirror or absolute path) with a
    `safety_checker/` subfolder has the SD1.x pipeline layout; one without it holds the checker's
    config.json, weights and preprocessor_config.json at its root (a flat checker repo copied
    there). A Hub id (nothing local to look at) is read in the pipeline layout, the layout of
    every SD1.x repo that ships the checker.
    """
    source, is_local = resolve_source(model_id, models_dir)
    if is_local and not (Path(source) / MODEL_SUBFOLDER).is_dir():
        return None, None
    return MODEL_SUBFOLDER, PROCESSOR_SUBFOLDER


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
        model_subfolder, processor_subfolder = subfolders(model_id, models_dir)
        processor = load_model(
            CLIPImageProcessor.from_pretrained,
            ROLE,
            model_id,
            models_dir,
            **({"subfolder": processor_subfolder} if processor_subfolder else {}),
        )
        model = load_model(
            StableDiffusionSafetyChecker.from_pretrained,
            ROLE,
            model_id,
            models_dir,
            # fp16 weights (`download --precision fp16`) where the folder holds only those.
            half_precision=dtype == torch.float16,
            dtype=dtype,
            **({"subfolder": model_subfolder} if model_subfolder else {}),
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
