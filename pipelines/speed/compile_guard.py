"""The fast path's bookkeeping per request: which compiled models meet a new input shape (they
compile now, and the page says so), and the reason to show when a compile fails."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from pipelines.speed import fast_path, feature_cache

if TYPE_CHECKING:  # a type only: speed/ does not import the loop
    from pipelines.loop.denoise import ControlUnit


def compile_notice(unet, units: list[ControlUnit], request, mode: str) -> str | None:
    """ "First request at this size: compiling ..." where a compiled model meets a new shape;
    None when nothing compiles in this request."""
    height, width = request.size
    key = fast_path.ShapeKey(request.num_images, height, width, request.use_cfg)
    controlnet_key = replace(key, conditional_only=request.control_mode.conditional_only)
    unets, controlnets = compiled_models(unet, units, request.cache_interval, mode)
    compiling = fast_path.first_runs(unets, key)
    compiling += fast_path.first_runs(controlnets, controlnet_key)
    return fast_path.compile_notice(compiling, key, mode)


def compiled_models(
    unet, units: list[ControlUnit], cache_interval: int, mode: str
) -> tuple[dict[str, torch.nn.Module], dict[str, torch.nn.Module]]:
    """The models a request runs, by the name the page gives them: ({UNet}, {ControlNets}).
    With feature caching, its wrappers run (and are compiled) instead of the plain UNet."""
    if cache_interval <= 1:
        return {"UNet": unet}, {unit.label: unit.model for unit in units}
    caching_unet = feature_cache.caching_unet(unet)
    unets = {"UNet (feature caching)": fast_path.speed_up_wrapper(caching_unet, mode=mode)}
    controlnets = {}
    for unit in units:
        controlnets[unit.label] = unit.model
        shallow = feature_cache.shallow_controlnet(unit.model)
        controlnets[f"{unit.label} (feature caching)"] = fast_path.speed_up_wrapper(
            shallow, mode=mode
        )
    return unets, controlnets


def failure_reason(error: BaseException) -> str:
    """The compiler's own error (not Dynamo's wrapper around it), on one short line."""
    cause = error
    while (inner := getattr(cause, "inner_exception", None) or cause.__cause__) is not None:
        cause = inner
    return (f"{type(cause).__name__}: {cause}".strip().splitlines() or ["?"])[0][:200]
