"""Finding annotator weights: MODELS_DIR first, then the Hugging Face cache or Hub.

Two kinds of sources, both resolved like the diffusion models (model_sources.py):
- a single file from a repo, e.g. `ControlNetHED.pth` from `lllyasviel/Annotators`
  (`MODELS_DIR/lllyasviel/Annotators/ControlNetHED.pth` when present);
- a whole transformers repo, e.g. `Intel/dpt-hybrid-midas` (`MODELS_DIR/Intel/dpt-hybrid-midas/`).
Pickled `.pth` / `.bin` files are read with `torch.load(weights_only=True)`: tensors only, no
code runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from annotators.base import LoadContext
from errors import ModelUnavailableError
from model_sources import download_command, hub_offline, missing_model_message, resolve_source


def weights_file(
    context: LoadContext, filename: str, role: str = "annotators", repo_type: str = "model"
) -> Path:
    """Local path of `filename` from the repo of `role` (downloaded once when allowed);
    `repo_type` "dataset" for a Hub dataset repo (OneFormer's class lists)."""
    repo = context.model_ids[role]
    source, is_local = resolve_source(repo, context.models_dir)
    if is_local:
        path = Path(source) / filename
        if path.is_file():
            return path
        raise ModelUnavailableError(
            f"The {role} weights `{filename}` are missing from {source}. Run "
            f"`{download_command(role)}` with internet access to fetch them, or copy "
            f"`{filename}` from the Hub repo `{repo}` there."
        )
    from huggingface_hub import hf_hub_download

    try:
        return Path(
            hf_hub_download(repo, filename, repo_type=repo_type, local_files_only=hub_offline())
        )
    except Exception as error:  # noqa: BLE001 (hub errors differ by version; all mean "not here")
        message = missing_model_message(role, repo, context.models_dir)
        raise ModelUnavailableError(f"`{filename}`: {message}") from error


def load_state_dict(path: Path) -> dict[str, Any]:
    """Tensors from a .safetensors or .pth/.pt file, never executing pickled code."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_pretrained(
    context: LoadContext, role: str, model_class: Any, processor_class: Any, **processor_kwargs: Any
) -> tuple[Any, Any]:
    """(model, image processor) of a transformers repo of `role`, or a ModelUnavailableError.

    `processor_kwargs` override the processor's saved settings (OneFormer's class-list folder).
    """
    source, kwargs = pretrained_source(context, role)
    try:
        model = model_class.from_pretrained(source, **kwargs)
        processor = processor_class.from_pretrained(
            source, local_files_only=kwargs["local_files_only"], **processor_kwargs
        )
    except OSError as error:
        if resolve_source(context.model_ids[role], context.models_dir)[1]:
            raise ModelUnavailableError(
                f"The {role} model at {source} could not be loaded ({error}). Check that the "
                "folder holds the Hub repo's config.json, preprocessor_config.json and "
                "model.safetensors (or pytorch_model.bin)."
            ) from error
        message = missing_model_message(role, context.model_ids[role], context.models_dir)
        raise ModelUnavailableError(message) from error
    return model, processor


def pretrained_source(context: LoadContext, role: str) -> tuple[str, dict[str, Any]]:
    """(source, from_pretrained kwargs) for a transformers repo of `role`.

    safetensors are preferred; a repo with only `pytorch_model.bin` (e.g.
    openmmlab/upernet-convnext-small on `main`) is read by transformers with
    `torch.load(weights_only=True)`: tensors only, no pickled code runs. The ids come from
    settings only, never from a visitor.
    """
    source, is_local = resolve_source(context.model_ids[role], context.models_dir)
    return source, {"local_files_only": is_local or hub_offline()}


def processor_pixels(processor: Any, image: Any, device: str, dtype: Any) -> Any:
    """A transformers image processor's `pixel_values` (1, 3, h, w) for RGB uint8 `image`, on
    `device` in `dtype` (a read-only array is copied first: the processor's tensor would warn)."""
    if not image.flags.writeable:
        image = image.copy()
    inputs = processor(images=image, return_tensors="pt")
    return inputs["pixel_values"].to(device, dtype)
