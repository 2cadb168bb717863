"""The denoising loop: SD1.5's UNet steered by ControlNet residuals, with the paper's control modes.

Adapted from diffusers' `StableDiffusionControlNetPipeline.__call__` (Apache-2.0), keeping its
steps but adding what it lacks: control on both CFG branches or the conditional one only,
per-connection resolution weighting with any gamma, several ControlNets summed (paper Fig. 6), and
a control window per ControlNet (start / end as fractions of the steps). A ControlNet whose strength
is 0, or whose window does not cover the step, is not run at all.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipelines.loop import step_plan
from pipelines.loop.control import ControlMode, mode_weights
from pipelines.loop.img2img import ImageStart
from pipelines.loop.schedulers import start_index
from pipelines.speed import fast_path, feature_cache


@dataclass
class ControlUnit:
    """One ControlNet with its control map, as it enters the loop."""

    model: torch.nn.Module  # a diffusers ControlNetModel
    image: torch.Tensor  # (1, 3, H, W) in [0, 1], at the output size
    strength: float
    start: float = 0.0  # control applies from this fraction of the steps ...
    end: float = 1.0  # ... to this one
    label: str = "ControlNet"  # named on the page (e.g. when it compiles)
    # A ControlNet with `global_pool_conditions` in its config (v1.1's shuffle): its residuals
    # are pooled to one value per channel (the model does it), it steers the conditional CFG
    # branch only and every depth alike, whatever the control mode (diffusers' guess mode for it).
    pooled: bool = False

    def active(self, index: int, total: int) -> bool:
        return runs_at(self.strength, self.start, self.end, index, total)


def runs_at(strength: float, start: float, end: float, index: int, total: int) -> bool:
    """Whether a ControlNet runs at step `index` of `total`: not at strength 0 (the output cannot
    depend on it), and only inside its control window (diffusers' rule: the step's span
    [index / total, (index + 1) / total] must lie inside [start, end])."""
    return strength != 0 and start <= index / total and (index + 1) / total <= end


ProgressCallback = Callable[[int, int], None]  # (steps done, total)
StepCallback = Callable[[int, int, torch.Tensor], None]  # (steps done, total, latents)


def control_image_tensor(control_map: np.ndarray, device, dtype) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) in [0, 1]; ControlNets take maps unnormalised."""
    tensor = torch.from_numpy(np.array(control_map, dtype=np.uint8)).permute(2, 0, 1)[None]
    return tensor.to(device=device, dtype=dtype) / 255.0


def control_residuals(
    units: Sequence[ControlUnit],
    latents: torch.Tensor,  # (B', 4, h, w), already scaled for the scheduler
    timestep: torch.Tensor,
    text_embeddings: torch.Tensor,  # (B', 77, D)
    mode: ControlMode,
    gamma: float,
    shallow: int | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor | None] | None:
    """Sum of the given units' 13 residuals, each weighted by strength * w_i; None if none ran.

    `shallow`: only the first `shallow` residuals, from each ControlNet's shallow branch (feature
    caching's cheap steps); the middle residual is then None.
    """
    total: list[torch.Tensor] | None = None
    running = [unit for unit in units if unit.strength != 0]  # strength 0: don't pay for it
    # x * 1.0 is x: one ControlNet at strength 1 in balanced mode (the default) skips 13
    # multiplications per step. With several units each output is copied by its product before
    # the next ControlNet runs (a compiled one's CUDA graph reuses its output memory).
    skip_unit_factors = len(running) == 1
    for unit in running:
        image = unit.image.expand(latents.shape[0], -1, -1, -1)
        if shallow is None:
            down, middle = unit.model(
                latents,
                timestep,
                encoder_hidden_states=text_embeddings,
                controlnet_cond=image,
                conditioning_scale=1.0,
                return_dict=False,
            )
            outputs = [*down, middle]
            heights = [output.shape[-2] for output in outputs]
        else:
            model = feature_cache.shallow_controlnet(unit.model)
            outputs = model(latents, timestep, text_embeddings, image, shallow)
            down_shapes, middle_shape = residual_shapes(unit.model.config, latents.shape)
            heights = [shape[1] for shape in (*down_shapes, middle_shape)]
        if unit.pooled:
            if shallow is not None:  # the shallow branch's outputs: pooled as the model pools
                outputs = [output.mean(dim=(2, 3), keepdim=True) for output in outputs]
            factors = [unit.strength] * len(outputs)
        else:
            factors = [unit.strength * weight for weight in mode_weights(mode, heights, gamma)]
        weighted = [
            output if factor == 1.0 and skip_unit_factors else output * factor
            for output, factor in zip(outputs, factors, strict=False)  # shallow: first ones
        ]
        total = weighted if total is None else [a + b for a, b in zip(total, weighted, strict=True)]
    if total is None:
        return None
    if shallow is not None:
        return total, None
    return total[:-1], total[-1]


def residual_shapes(
    config, sample_shape: Sequence[int]
) -> tuple[list[tuple[int, int, int]], tuple[int, int, int]]:
    """(C, h, w) of each residual a ControlNet gives (and the UNet encoder's skips) for a sample
    of shape (B, 4, h, w): conv_in, each resnet, each downsampler; then the middle block's."""
    _, _, height, width = sample_shape
    channels = list(config.block_out_channels)
    layers = config.layers_per_block
    layers = [layers] * len(channels) if isinstance(layers, int) else list(layers)
    shapes = [(channels[0], height, width)]  # conv_in
    for index, out_channels in enumerate(channels):
        shapes += [(out_channels, height, width)] * layers[index]
        if index < len(channels) - 1:  # a stride-2 convolution, padding 1: ceil(h / 2)
            height, width = (height + 1) // 2, (width + 1) // 2
            shapes.append((out_channels, height, width))
    return shapes, (channels[-1], height, width)


def zero_residuals(
    unet_config, sample: torch.Tensor, shallow: int | None = None
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Zeros shaped like a ControlNet's residuals for `sample` (B, 4, h, w) (`shallow`: the first
    ones only, and no middle one).

    Compiled models take them when no ControlNet runs at a step (outside every control window):
    adding zeros changes nothing, and the UNet keeps the one graph it compiled with residuals
    instead of compiling a second one without them in the middle of a request.
    """
    down_shapes, middle_shape = residual_shapes(unet_config, sample.shape)
    batch = sample.shape[0]
    if shallow is not None:
        return [sample.new_zeros(batch, *shape) for shape in down_shapes[:shallow]], None
    down = [sample.new_zeros(batch, *shape) for shape in down_shapes]
    return down, sample.new_zeros(batch, *middle_shape)


@torch.inference_mode()
def denoise(
    *,
    unet: torch.nn.Module,
    scheduler,
    units: Sequence[ControlUnit],
    prompt_embeds: torch.Tensor,  # (B, 77, D)
    negative_embeds: torch.Tensor | None,  # (B, 77, D), None when guidance is off
    latents: torch.Tensor,  # (B, 4, h, w): the noise
    steps: int,
    guidance_scale: float,
    mode: ControlMode,
    gamma: float,
    generator: torch.Generator,
    eta: float = 0.0,
    on_progress: ProgressCallback | None = None,
    on_step: StepCallback | None = None,
    cache_interval: int = 1,
    image: ImageStart | None = None,
) -> torch.Tensor:
    """The latents after `steps` steps. `cache_interval` > 1 turns on feature caching (see
    `feature_cache`): a full UNet step every `cache_interval` steps, shallow ones between.

    `image`: image to image (and, with its mask, inpainting), diffusers' way (`img2img`): the
    schedule's last steps only, from the image's latents noised to the first of them."""
    # 1. Timesteps and the sampler's extra arguments (eta only exists for DDIM).
    scheduler.set_timesteps(steps, device=latents.device)
    timesteps = scheduler.timesteps
    drawn, start, mask = latents, 0, None
    if image is None:
        latents = latents * scheduler.init_noise_sigma
    else:
        start, mask = start_index(steps, image.strength), image.mask
        timesteps = timesteps[start * scheduler.order :]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start * scheduler.order)
        if image.strength == 1.0:  # inpainting from noise
            latents = latents * scheduler.init_noise_sigma
        else:
            first = timesteps[:1].repeat(latents.shape[0])
            latents = scheduler.add_noise(image.latents, drawn, first)
    step_parameters = inspect.signature(scheduler.step).parameters
    extra_step_kwargs = {"generator": generator} if "generator" in step_parameters else {}
    if "eta" in step_parameters:
        extra_step_kwargs["eta"] = eta
    # Samplers run as planned weights, their noise drawn ahead: no host transfer in the loop. A
    # mask changes the samples between steps, which the plans do not model: the sampler's own.
    trajectory = None
    if mask is None:
        trajectory = step_plan.trajectory_for(scheduler, steps, latents, eta, generator, start)

    # 2. CFG: one batch of [unconditional, conditional], like diffusers.
    use_cfg = negative_embeds is not None
    embeds = torch.cat([negative_embeds, prompt_embeds]) if use_cfg else prompt_embeds

    # 3. Denoising loop.
    caching = cache_interval > 1
    caching_unet = feature_cache.caching_unet(unet) if caching else None
    shallow_count = feature_cache.shallow_count(unet) if caching else None
    compiled = any(fast_path.is_compiled(module) for module in _modules_run(unet, units, caching))
    zeros = {}  # residuals for steps where no ControlNet runs, made once per depth (compiled only)
    features = None  # feature caching: the last full step's deep features
    for index, timestep in enumerate(timesteps):
        if compiled:
            fast_path.mark_step_begin()  # CUDA graphs: last step's outputs are consumed
        model_input = torch.cat([latents] * 2) if use_cfg else latents
        if trajectory is None:
            model_input = scheduler.scale_model_input(model_input, timestep)
        else:
            model_input = trajectory.model_input(index, model_input)
        active = [unit for unit in units if unit.active(index, len(timesteps))]
        shallow = None if feature_cache.is_full_step(index, cache_interval) else shallow_count

        if use_cfg:
            # The paper's CFG-RW (and a pooled unit in any mode): control enters eps_c only, and
            # eps_uc gets zero residuals. The other units steer both branches.
            conditional = [u for u in active if mode.conditional_only or u.pooled]
            both = [u for u in active if u not in conditional]
            residuals = _summed(
                control_residuals(both, model_input, timestep, embeds, mode, gamma, shallow),
                _on_conditional_half(
                    control_residuals(
                        conditional, model_input.chunk(2)[1], timestep, prompt_embeds, mode,
                        gamma, shallow,
                    )
                ),
            )  # fmt: skip
        else:
            residuals = control_residuals(
                active, model_input, timestep, embeds, mode, gamma, shallow
            )

        if compiled:  # one UNet graph: residuals always given, in one memory format
            if residuals is None:  # no ControlNet at this step: add zeros
                if shallow not in zeros:
                    zeros[shallow] = zero_residuals(unet.config, model_input, shallow)
                residuals = zeros[shallow]
            down, middle = residuals
            residuals = (
                [r.contiguous() for r in down],
                (None if middle is None else middle.contiguous()),
            )
        down, middle = residuals if residuals is not None else (None, None)
        if not caching:
            noise = unet(
                model_input,
                timestep,
                encoder_hidden_states=embeds,
                down_block_additional_residuals=down,
                mid_block_additional_residual=middle,
                return_dict=False,
            )[0]
        elif shallow is None:
            noise, features = caching_unet(model_input, timestep, embeds, down, middle)
            if compiled:  # a CUDA graph's outputs are overwritten by its next replays: keep a copy
                features = features.clone()
        else:
            noise, _ = caching_unet(model_input, timestep, embeds, down, cached=features)
        if use_cfg:
            noise_uncond, noise_cond = noise.chunk(2)
            noise = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
        if trajectory is None:
            step = scheduler.step(noise, timestep, latents, **extra_step_kwargs, return_dict=False)
            latents = step[0]
        else:
            latents = trajectory.step(index, noise)
        if mask is not None:  # inpainting: outside the mask, the image noised to the next step
            proper = image.latents
            if index < len(timesteps) - 1:
                following = timesteps[index + 1 : index + 2]
                proper = scheduler.add_noise(proper, drawn, following)
            latents = (1 - mask) * proper + mask * latents
        if on_progress is not None:
            on_progress(index + 1, len(timesteps))
        if on_step is not None:
            on_step(index + 1, len(timesteps), latents)
    return latents


Residuals = tuple[list[torch.Tensor], torch.Tensor | None]


def _on_conditional_half(residuals: Residuals | None) -> Residuals | None:
    """Residuals of the conditional half of the CFG batch, with zeros for the unconditional
    half before them."""
    if residuals is None:
        return None
    down, middle = residuals
    down = [torch.cat([torch.zeros_like(r), r]) for r in down]
    if middle is not None:
        middle = torch.cat([torch.zeros_like(middle), middle])
    return down, middle


def _summed(first: Residuals | None, second: Residuals | None) -> Residuals | None:
    """Two sets of residuals added (a pooled set broadcasts over the other's pixels); either
    alone is returned as it is."""
    if first is None or second is None:
        return first if second is None else second
    down = [a + b for a, b in zip(first[0], second[0], strict=True)]
    middle = None if first[1] is None else first[1] + second[1]
    return down, middle


def _modules_run(unet, units: Sequence[ControlUnit], caching: bool) -> list[torch.nn.Module]:
    """The modules the loop calls (with feature caching, the wrappers around the UNet too)."""
    modules = [unet, *(unit.model for unit in units)]
    if caching:
        modules += [feature_cache.caching_unet(unet)]
        modules += [feature_cache.shallow_controlnet(unit.model) for unit in units]
    return modules


@torch.inference_mode()
def decode_latents(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Latents (B, 4, h, w) -> images (B, 3, H, W) in [0, 1], float32 (NaN stays NaN)."""
    latents = latents.to(vae.dtype)
    images = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    return (images.float() / 2 + 0.5).clamp(0, 1)


def broken_images(images: torch.Tensor) -> list[int]:
    """Indices of images that are not finite or entirely black: SD1.5's fp16 VAE can overflow."""
    finite = torch.isfinite(images).flatten(1).all(dim=1)
    black = images.nan_to_num(0.0).flatten(1).amax(dim=1) == 0
    return [index for index, bad in enumerate((~finite) | black) if bad]


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, H, W) in [0, 1] -> list of RGB uint8 (H, W, 3)."""
    array = images.nan_to_num(0.0).permute(0, 2, 3, 1).cpu().numpy()
    return list((array * 255).round().astype(np.uint8))
