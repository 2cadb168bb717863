"""Sampler registry. A fresh scheduler is built per request: schedulers keep per-run state. And
where an image-to-image run starts in a sampler's schedule.

Entries name diffusers classes as strings so the UI can list samplers without importing torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from errors import look_up

# name -> (diffusers class, options on top of the base model's scheduler config)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    # UniPC reaches good quality in 20 steps (what the diffusers ControlNet docs use).
    "UniPC": ("UniPCMultistepScheduler", {}),
    # DDIM is the paper's sampler, and the one that uses eta.
    "DDIM": ("DDIMScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DPM++ 2M Karras": (
        "DPMSolverMultistepScheduler",
        {"use_karras_sigmas": True, "algorithm_type": "dpmsolver++"},
    ),
    # Latent consistency: 4-8 steps, with the LCM-LoRA merged into the UNet
    # (pipelines/speed/lcm_lora.py).
    "LCM": ("LCMScheduler", {}),
}


def check_scheduler(name: Any) -> str:
    """`name` if it is a sampler of `SCHEDULERS`, else an InvalidRequestError listing them."""
    look_up(SCHEDULERS, name, "scheduler")
    return name


def make_scheduler(name: str, base_config: Mapping[str, Any]):
    class_name, options = SCHEDULERS[check_scheduler(name)]
    import diffusers

    return getattr(diffusers, class_name).from_config(dict(base_config), **options)


def start_index(steps: int, strength: float) -> int:
    """Where an image-to-image run starts in a schedule of `steps` steps (diffusers'
    `get_timesteps`): it runs the last `min(int(steps * strength), steps)` of them, so strength 1
    runs them all and lower strengths start later, from the initial image noised to that step."""
    init_timestep = min(int(steps * strength), steps)
    return max(steps - init_timestep, 0)
