"""Where models come from: MODELS_DIR first, then the Hugging Face cache or Hub.

`MODELS_DIR/<org>/<name>` mirrors the Hub repo `<org>/<name>`; when it exists it is loaded and the
Hub is never asked. Only safetensors are loaded (no pickle), and never with remote code. When a
model cannot be found, the person is told which one, and the three ways to provide it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from errors import ModelUnavailableError

logger = logging.getLogger(__name__)
Model = TypeVar("Model")


def resolve_source(model_id: str, models_dir: Path) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is a local folder)."""
    mirrored = models_dir / model_id
    if mirrored.is_dir():
        return str(mirrored), True
    if Path(model_id).is_absolute() and Path(model_id).is_dir():
        return model_id, True
    return model_id, False


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def missing_model_message(role: str, model_id: str, models_dir: Path) -> str:
    where = models_dir / model_id
    return (
        f"The {role} model `{model_id}` is not available: it is not in MODELS_DIR ({where}) nor "
        "in the Hugging Face cache, and the Hub cannot be reached"
        f"{' (HF_HUB_OFFLINE is set)' if hub_offline() else ''}. To provide it: run the app once "
        f"with internet access (it downloads by itself), or copy the Hub repo's files to {where}, "
        f"or set MODEL_{role.upper()} to another Hub id or local folder. "
        "The control-map preview works without it."
    )


def weight_variants(source: str, is_local: bool, half_precision: bool) -> list[str | None]:
    """The diffusers weight variants to try, in order: "fp16" is `*.fp16.safetensors` (half the
    download), None the full-precision files.

    A local folder holding only fp16 files (`python -m cli download --precision fp16`) loads
    them; one holding both loads the fp16 ones when the model runs in fp16 (same numbers, half the
    reading), else the full ones. From the Hub, a model run in fp16 tries the fp16 variant first
    and falls back to the full files where a repo has none; in fp32 (CPU) it takes the full ones.
    """
    if not is_local:
        return ["fp16", None] if half_precision else [None]
    files = [path.name for path in Path(source).rglob("*.safetensors")]
    has_half = any(name.endswith(".fp16.safetensors") for name in files)
    has_full = any(not name.endswith(".fp16.safetensors") for name in files)
    return ["fp16"] if has_half and (half_precision or not has_full) else [None]


def load_model(
    loader: Callable[..., Model],
    role: str,
    model_id: str,
    models_dir: Path,
    *,
    half_precision: bool | None = None,
    **kwargs,
) -> Model:
    """`loader(source, ...)` (a `from_pretrained`) with safetensors only and a clear error.

    `half_precision` (a diffusers model run in fp16, or not): pick the weight variant with
    `weight_variants`; None: no variant (loaders without them, e.g. transformers').
    """
    source, is_local = resolve_source(model_id, models_dir)
    variants = (
        [None] if half_precision is None else weight_variants(source, is_local, half_precision)
    )
    logger.info("Loading %s model %s from %s", role, model_id, source)
    try:
        for index, variant in enumerate(variants):
            try:
                return loader(
                    source,
                    use_safetensors=True,
                    local_files_only=is_local or hub_offline(),
                    **({"variant": variant} if variant else {}),
                    **kwargs,
                )
            except (OSError, ValueError) as error:
                if index == len(variants) - 1:
                    raise
                # diffusers: OSError for a model, ValueError for a pipeline without the variant.
                logger.info("No %s weights for %s (%s); trying the full ones", variant, role, error)
    except OSError as error:
        if is_local:
            raise ModelUnavailableError(
                f"The {role} model at {source} could not be loaded ({error}). Check that the "
                "folder holds the Hub repo's files in diffusers format, with .safetensors weights."
            ) from error
        raise ModelUnavailableError(missing_model_message(role, model_id, models_dir)) from error
