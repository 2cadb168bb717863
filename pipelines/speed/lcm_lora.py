"""Few-step sampling with LCM-LoRA (Luo et al., "LCM-LoRA: A Universal Stable-Diffusion
Acceleration Module", 2023): an opt-in that changes the images, for 4-8 steps instead of 20.

The "LCM" sampler runs the LCM scheduler on SD1.5 with the LCM-LoRA merged into the UNet's weights
(diffusers' `load_lora_weights` + `fuse_lora` + `unload_lora_weights`: no LoRA layers stay, so a
step costs what a plain one does, compiled graphs included). The first merge keeps a copy of the
UNet's weights on the CPU; any other sampler copies them back, in place, bit for bit, so the exact
path's images never change. ControlNets are not touched: they steer the merged UNet as they do the
plain one (the paper's transfer to community SD1.5 models, Fig. 12).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from errors import ModelUnavailableError
from model_sources import hub_offline, missing_model_message, resolve_source
from pipelines.speed import fast_path

logger = logging.getLogger(__name__)

# Sampler name -> the role (settings' model table) of the LoRA it needs.
LORA_SAMPLERS = {"LCM": "lcm_lora"}
# LCM-LoRA's advice: 4-8 steps, guidance 1-2 (above, images burn; at 1 there is no CFG at all).
LCM_STEPS = (4, 8)
LCM_MAX_GUIDANCE = 2.0
_STATE_ATTRIBUTE = "_few_step_lora"  # on the UNet: {"source": ..., "backup": {...}, "merged": bool}


def lora_role(sampler: str) -> str | None:
    return LORA_SAMPLERS.get(sampler)


def merged_lora(unet: torch.nn.Module) -> str | None:
    """The LoRA source merged into `unet` now, if any."""
    state = unet.__dict__.get(_STATE_ATTRIBUTE)
    return state["source"] if state and state["merged"] else None


def use_lora(pipe, model_id: str | None, models_dir: Path) -> None:
    """Merge the LoRA `model_id` into the pipeline's UNet, or (None) give the UNet back its own
    weights. A no-op when the UNet already is in that state."""
    unet = pipe.unet
    state = unet.__dict__.get(_STATE_ATTRIBUTE)
    if model_id is None:
        if state and state["merged"]:
            _restore(unet, state)
        return
    source, is_local = resolve_source(model_id, models_dir)
    if state and state["merged"]:
        if state["source"] == source:
            return
        _restore(unet, state)
    backup = state["backup"] if state else _backup(unet)
    unet.__dict__[_STATE_ATTRIBUTE] = {"source": source, "backup": backup, "merged": False}
    logger.info("Merging the LoRA %s into the UNet", source)
    failure = None
    try:
        pipe.load_lora_weights(
            source, adapter_name="few_step", local_files_only=is_local or hub_offline()
        )
        pipe.fuse_lora(components=["unet"], adapter_names=["few_step"], lora_scale=1.0)
    except (OSError, ValueError) as error:
        failure = error
    finally:
        pipe.unload_lora_weights()  # the merged weights stay; the LoRA layers go
    if failure is not None:
        _restore(unet, unet.__dict__[_STATE_ATTRIBUTE])
        if is_local:
            raise ModelUnavailableError(
                f"The LCM-LoRA at {source} could not be loaded ({failure}). The folder should "
                "hold the Hub repo's pytorch_lora_weights.safetensors."
            ) from failure
        raise ModelUnavailableError(
            missing_model_message("lcm_lora", model_id, models_dir)
        ) from failure
    fast_path.refresh_fused_projections(unet)
    unet.__dict__[_STATE_ATTRIBUTE]["merged"] = True


def _backup(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The UNet's own weights, on the CPU (the GPU's memory is for generating)."""
    return {name: p.detach().to("cpu", copy=True) for name, p in unet.named_parameters()}


def _restore(unet: torch.nn.Module, state: dict) -> None:
    """Copy the UNet's own weights back, in place (compiled graphs read the same memory)."""
    backup = state["backup"]
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            parameter.copy_(backup[name])
    state["merged"] = False
    logger.info("The UNet has its own weights again")


def advice(sampler: str, steps: int, guidance_scale: float) -> list[str]:
    """Warnings for settings that LCM-LoRA is not made for."""
    if sampler != "LCM":
        return []
    warnings = []
    low, high = LCM_STEPS
    if not low <= steps <= high:
        warnings.append(
            f"LCM is made for {low}-{high} steps; {steps} may look worse or cost more for nothing."
        )
    if guidance_scale > LCM_MAX_GUIDANCE:
        warnings.append(
            f"LCM is made for a guidance scale of 1-{LCM_MAX_GUIDANCE:g}; at {guidance_scale:g} "
            "images burn. 1 also skips classifier-free guidance: half the work per step."
        )
    return warnings
