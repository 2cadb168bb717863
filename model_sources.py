"""Where models come from: MODELS_DIR first, then the Hugging Face cache or Hub.

`MODELS_DIR/<org>/<name>` mirrors the Hub repo `<org>/<name>`; when it exists it is loaded and the
Hub is never asked. Only safetensors are loaded (no pickle), and never with remote code. When a
model cannot be found, the person is told which one, and the three ways to provide it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable
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


# The roles whose weights the annotators load (the control-map preview needs them too).
ANNOTATOR_ROLES = frozenset(
    {
        "annotators",
        "depth_estimator",
        "segmenter",
        "depth_zoe",
        "depth_anything",
        "segmenter_oneformer_ade20k",
        "segmenter_oneformer_coco",
        "oneformer_class_info",
    }
)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download_command(role: str) -> str:
    """The command that fetches `role`'s files into MODELS_DIR."""
    from settings import DEFAULT_MODEL_IDS, OPTIONAL_MODEL_IDS

    known = role in DEFAULT_MODEL_IDS or role in OPTIONAL_MODEL_IDS
    return f"python -m cli download {role if known else '--all'}"


def missing_model_message(role: str, model_id: str, models_dir: Path) -> str:
    where = models_dir / model_id
    return (
        f"The {role} model `{model_id}` is not available: it is not in MODELS_DIR ({where}) nor "
        "in the Hugging Face cache, and the Hub cannot be reached"
        f"{' (HF_HUB_OFFLINE is set)' if hub_offline() else ''}. To provide it: run "
        f"`{download_command(role)}` with internet access (or run the app once online: it "
        f"downloads by itself), or copy the Hub repo's files to {where}, "
        f"or set MODEL_{role.upper()} to another Hub id or local folder."
        # Only Run loads the diffusion models; Preview map needs just the annotator's weights.
        + ("" if role in ANNOTATOR_ROLES else " The control-map preview works without it.")
    )


# A component folder's config file, by the component's usual name; any other holds config.json.
_COMPONENT_CONFIGS = {
    "scheduler": "scheduler_config.json",
    "tokenizer": "tokenizer_config.json",
    "feature_extractor": "preprocessor_config.json",
}


def _missing_in_component(folder: Path, name: str, variant: str | None) -> list[str]:
    """What a loader opens in one component folder and `folder` lacks (names relative to it)."""
    prefix = f"{name}/" if name else ""
    config = _COMPONENT_CONFIGS.get(Path(name).name, "config.json")
    if not folder.is_dir():
        return [f"{prefix}{config}"]
    if not (folder / config).is_file():
        # A transformers processor folder (preprocessor_config.json alone) is complete as it is.
        if config == "config.json" and (folder / "preprocessor_config.json").is_file():
            return []
        return [f"{prefix}{config}"]
    if config != "config.json":
        return []
    weights = [path.name for path in folder.glob("*.safetensors")]
    half = [name for name in weights if name.endswith(".fp16.safetensors")]
    # fp16: a component without the variant loads its full files (`download --precision fp16`
    # fetches those where a repo has no fp16 ones); no variant: the full files themselves.
    if variant == "fp16" and weights or variant is None and len(half) < len(weights):
        return []
    try:
        diffusers_model = "_diffusers_version" in json.loads((folder / config).read_text())
    except (OSError, ValueError):
        return [f"{prefix}*.safetensors (the weights)"]
    stem = "diffusion_pytorch_model" if diffusers_model else "model"
    return [f"{prefix}{stem}{'.fp16' if variant == 'fp16' else ''}.safetensors"]


def missing_files(
    source: str | Path,
    *,
    subfolder: str | None = None,
    variant: str | None = None,
    skip: Iterable[str] = (),
) -> list[str]:
    """The files a `from_pretrained(source, subfolder=..., variant=...)` opens that the local
    folder `source` lacks: each component's config and, for a model, its safetensors weights
    (fp16 ones for the fp16 variant). A pipeline folder (model_index.json) is checked component
    by component, leaving out those in `skip` (passed to the loader as None)."""
    root = Path(source)
    folder = root / subfolder if subfolder else root
    prefix = f"{subfolder}/" if subfolder else ""
    index = folder / "model_index.json"
    if not index.is_file():
        return _missing_in_component(folder, subfolder or "", variant)
    try:
        components = json.loads(index.read_text())
    except (OSError, ValueError):
        return [f"{prefix}model_index.json (unreadable)"]
    skipped = set(skip)
    missing = []
    for name, value in components.items():
        if name.startswith("_") or name in skipped:
            continue
        if isinstance(value, list) and len(value) == 2 and None not in value:
            missing += [
                f"{prefix}{entry}" for entry in _missing_in_component(folder / name, name, variant)
            ]
    return missing


def weight_variants(
    source: str, is_local: bool, half_precision: bool, subfolder: str | None = None
) -> list[str | None]:
    """The diffusers weight variants to try, in order: "fp16" is `*.fp16.safetensors` (half the
    download), None the full-precision files.

    A local folder holding only fp16 files (`python -m cli download --precision fp16`) loads
    them; one holding both loads the fp16 ones when the model runs in fp16 (same numbers, half the
    reading), else the full ones. From the Hub, a model run in fp16 tries the fp16 variant first
    and falls back to the full files where a repo has none; in fp32 (CPU) it takes the full ones.
    """
    if not is_local:
        return ["fp16", None] if half_precision else [None]
    # Only the folder the loader reads: a repo's other components may hold other precisions.
    folder = Path(source) / subfolder if subfolder else Path(source)
    files = [path.name for path in folder.rglob("*.safetensors")]
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

    A local folder is checked first (`missing_files`): an incomplete one is refused with the
    missing files named, never half loaded. Every failure becomes a ModelUnavailableError that
    says what happened (offline, not on the Hub, incomplete folder, unreadable file) and names
    the command that fixes it.
    """
    source, is_local = resolve_source(model_id, models_dir)
    subfolder = kwargs.get("subfolder")
    variants = (
        [None]
        if half_precision is None
        else weight_variants(source, is_local, half_precision, subfolder)
    )
    if is_local:
        skip = [name for name, value in kwargs.items() if value is None]
        absent = missing_files(source, subfolder=subfolder, variant=variants[0], skip=skip)
        if absent:
            raise ModelUnavailableError(
                f"The {role} model folder {source} is incomplete: it lacks "
                f"{', '.join(absent)}. Run `{download_command(role)}` to fetch the missing "
                "files, or copy them from the Hub repo."
            )
    logger.info("Loading %s model %s from %s", role, model_id, source)
    for index, variant in enumerate(variants):
        try:
            return loader(
                source,
                use_safetensors=True,
                local_files_only=is_local or hub_offline(),
                **({"variant": variant} if variant else {}),
                **kwargs,
            )
        except Exception as error:
            # diffusers: OSError for a model, ValueError for a pipeline without the variant.
            if index < len(variants) - 1 and isinstance(error, OSError | ValueError):
                logger.info("No %s weights for %s (%s); trying the full ones", variant, role, error)
                continue
            if not isinstance(error, OSError | ValueError) and not _is_read_error(error):
                raise
            raise ModelUnavailableError(
                explain_failure(error, role, model_id, models_dir, source, is_local)
            ) from error
    raise AssertionError("unreachable: every variant returns or raises")


def _is_read_error(error: BaseException) -> bool:
    """safetensors' own error (a corrupt or truncated file) is no OSError."""
    return type(error).__name__ == "SafetensorError"


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and the errors it was raised from, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain and len(chain) < 20:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


_MISSING_FILE = (
    re.compile(r"does not appear to have a file named (\S+?)[.,]?(?:\s|$)"),
    re.compile(r"/resolve/[^/\s]+/(\S+)"),
    re.compile(r"no file named (\S+?)[.,]?(?:\s|$)"),
)


def _missing_file_name(errors: list[BaseException]) -> str | None:
    for error in errors:
        for pattern in _MISSING_FILE:
            found = pattern.search(str(error))
            if found:
                return found.group(1).strip("'\"`")
    return None


def explain_failure(
    error: BaseException,
    role: str,
    model_id: str,
    models_dir: Path,
    source: str,
    is_local: bool,
) -> str:
    """What went wrong loading `role`, in words, with the command that fixes it."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    command = download_command(role)
    if is_local:
        return (
            f"The {role} model at {source} could not be loaded: a file there cannot be read "
            f"({error}). Check that the folder holds the Hub repo's files in diffusers format, "
            f"with .safetensors weights; run `{command}` to fetch them again."
        )
    errors = _chain(error)
    if any(isinstance(e, RepositoryNotFoundError | RevisionNotFoundError) for e in errors):
        return (
            f"The {role} model `{model_id}` is not on the Hub: the Hub answered that the repo "
            f"`{model_id}` does not exist (or is private or gated). Check MODEL_{role.upper()}, "
            f"or copy the model to {models_dir / model_id}; `{command}` fetches the default one."
        )
    offline = hub_offline() or any(
        isinstance(e, LocalEntryNotFoundError | OfflineModeIsEnabled)
        or type(e).__name__ in ("ConnectError", "ConnectTimeout", "NetworkError")
        for e in errors
    )
    if offline:
        return missing_model_message(role, model_id, models_dir)
    name = _missing_file_name(errors)
    if name or any(isinstance(e, EntryNotFoundError) for e in errors):
        what = f"`{name}`" if name else "a file the loader needs"
        return (
            f"The {role} model `{model_id}` cannot be loaded: the Hub repo `{model_id}` has no "
            f"{what} (only .safetensors weights are loaded). Set MODEL_{role.upper()} to a repo "
            f"or folder that has it, or run `{command}` to fetch the files the app loads."
        )
    return (
        f"The {role} model `{model_id}` could not be loaded from the Hub ({error}). Run "
        f"`{command}`, or copy the Hub repo's files to {models_dir / model_id}."
    )
