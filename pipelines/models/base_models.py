"""Base models from settings: a Hub id, a local diffusers folder, or a single-file checkpoint.

- A Hub id (or its `MODELS_DIR/<org>/<name>` mirror) and an absolute diffusers folder go through
  `model_sources.load_model`: `from_pretrained` with safetensors only.
- A single-file original-layout checkpoint (LDM / A1111 / Civitai style), absolute or relative
  to MODELS_DIR, is loaded with `from_single_file`. Only `.safetensors` are accepted: pickle
  files (.ckpt, .pt, .pth, .bin) can run code when loaded. The file holds only weights, so the
  component configs, tokenizer and scheduler come from the default base (`config_source`), found
  like any model: MODELS_DIR first, then the Hugging Face cache or Hub. Nothing runs remote code.

Either way the result is a `StableDiffusionControlNetPipeline` with no ControlNet (they are passed
per request) and no safety checker, on the CPU, in the requested dtype.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch

from errors import ModelUnavailableError
from model_sources import hub_offline, load_model, missing_model_message, resolve_source
from settings import (
    SINGLE_FILE_SUFFIX,
    check_base_source,
    unsupported_file_message,
)

logger = logging.getLogger(__name__)

SourceKind = Literal["hub", "folder", "single_file"]
_PIPELINE_KWARGS = dict(
    controlnet=None,  # ControlNets are passed to our loop per request
    safety_checker=None,
    feature_extractor=None,
    requires_safety_checker=False,
)


def base_source_kind(source: str, models_dir: Path) -> SourceKind:
    """Which of the three kinds of base model `source` is; ValueError for a refused file."""
    check_base_source(source)
    if Path(source).suffix.lower() == SINGLE_FILE_SUFFIX:
        return "single_file"
    if (models_dir / source).is_file():  # e.g. MODELS_DIR/model (no suffix) or model.yaml
        raise ValueError(unsupported_file_message(source))
    return "folder" if Path(source).is_absolute() else "hub"


def load_base_pipeline(
    source: str, *, role_label: str, models_dir: Path, config_source: str, dtype: torch.dtype
):
    """The `StableDiffusionControlNetPipeline` for `source`, on the CPU, in `dtype`."""
    from diffusers import StableDiffusionControlNetPipeline

    kind = base_source_kind(source, models_dir)
    if kind == "folder" and not Path(source).is_dir():
        raise ModelUnavailableError(
            f"The {role_label} model folder {source} does not exist. Copy the model there in "
            "diffusers format (with .safetensors weights), or fix the path in the settings."
        )
    if kind != "single_file":
        return load_model(
            StableDiffusionControlNetPipeline.from_pretrained,
            role_label,
            source,
            models_dir,
            half_precision=dtype == torch.float16,
            dtype=dtype,
            **_PIPELINE_KWARGS,
        )

    path = models_dir / source  # an absolute `source` stays as it is
    if not path.is_file():
        raise ModelUnavailableError(
            f"The {role_label} model file {path} does not exist. Put the .safetensors checkpoint "
            f"there, or fix its path in the settings (absolute, or relative to MODELS_DIR, "
            f"{models_dir})."
        )
    config, config_is_local = resolve_source(config_source, models_dir)
    logger.info("Loading %s model from %s with the configs of %s", role_label, path, config)
    try:
        return StableDiffusionControlNetPipeline.from_single_file(
            str(path),
            config=config,
            local_files_only=config_is_local or hub_offline(),
            dtype=dtype,
            **_PIPELINE_KWARGS,
        )
    except OSError as error:
        raise ModelUnavailableError(
            f"The {role_label} model file {path} is loaded with the tokenizer, scheduler and "
            f"model configs of `{config_source}`, which could not be found. "
            + missing_model_message("base", config_source, models_dir)
        ) from error
