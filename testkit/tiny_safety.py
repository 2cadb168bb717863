"""A tiny, randomly initialised Stable Diffusion safety checker for tests.

Same architecture as `CompVis/stable-diffusion-safety-checker` (a `StableDiffusionSafetyChecker`:
a CLIP vision tower, a projection, 17 concept and 3 special-care embeddings with one threshold
each), but a 32-pixel, 32-wide CLIP. Saved in the layout of the SD1.5 repo the app loads it from:
safety_checker/config.json, safety_checker/model.safetensors, and
feature_extractor/preprocessor_config.json in the repo's own (legacy, integer sizes) format.
`flat=True` saves the three files at the folder's root instead (a copied flat checker repo).

The checker flags an image when the cosine between its embedding and a concept embedding exceeds
that concept's threshold (`concept_embeds_weights`). Cosines lie in [-1, 1], so a threshold of -2
flags every image and one of 2 flags none, whatever the random weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import CLIPConfig

_IMAGE_SIZE = 32
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _tiny_clip_config() -> CLIPConfig:
    tiny = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
    }
    return CLIPConfig(
        text_config={**tiny, "vocab_size": 99, "bos_token_id": 97, "eos_token_id": 98},
        vision_config={**tiny, "image_size": _IMAGE_SIZE, "patch_size": 8},
        projection_dim=32,
    )


def build_tiny_safety_checker(
    target: Path, seed: int = 0, always_flag: bool = False, flat: bool = False
) -> Path:
    """Save a tiny checker into `target` that flags every image (`always_flag`) or none."""
    torch.manual_seed(seed)
    checker = StableDiffusionSafetyChecker(_tiny_clip_config())
    threshold = -2.0 if always_flag else 2.0
    with torch.no_grad():
        checker.concept_embeds.normal_()
        checker.special_care_embeds.normal_()
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    checker.save_pretrained(target if flat else target / "safety_checker")
    preprocessor = {
        "crop_size": _IMAGE_SIZE,
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": _CLIP_MEAN,
        "image_std": _CLIP_STD,
        "resample": 3,
        "size": _IMAGE_SIZE,
    }
    processor_dir = target if flat else target / "feature_extractor"
    processor_dir.mkdir(parents=True, exist_ok=True)
    (processor_dir / "preprocessor_config.json").write_text(
        json.dumps(preprocessor, indent=2) + "\n"
    )
    return target
