"""Hugging Face ZeroGPU: GPU work runs inside `spaces.GPU` when the `spaces` package is present.

On a ZeroGPU Space a GPU is attached only while a `spaces.GPU`-decorated function runs, for at most
its `duration` seconds, and CUDA must not be initialised outside such a function. Elsewhere (a
dedicated GPU, a CPU, the tests) `spaces` is absent and the function is returned unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

Function = TypeVar("Function", bound=Callable)

# The longest GPU slice asked for; ZeroGPU refuses long durations to queued visitors first.
MAX_GPU_SECONDS = 120
# Loading the base and a ControlNet onto the GPU on a cold start, plus decoding.
OVERHEAD_SECONDS = 20
# Per denoising step of one 512 x 512 image with CFG, fp16, on a ZeroGPU slice: an estimate with a
# wide margin over an eager step on such a GPU, because a function that outlives its slice loses
# the GPU mid-request.
SECONDS_PER_STEP_512 = 0.25
# A ControlNet is a copy of the UNet's encoder and middle block only: about a third of its work.
CONTROLNET_SHARE = 0.35
# A feature-caching shallow step skips the deep blocks but still runs the full-resolution ones
# (the first down block and the last up block of the UNet, the ControlNet's first down block),
# the costliest per block: it counts as 40% of a full step.
SHALLOW_STEP_SHARE = 0.4


def on_zero_gpu() -> bool:
    return os.environ.get("SPACES_ZERO_GPU", "").strip().lower() in ("1", "true")


def gpu_seconds(
    steps: int, num_images: int, height: int, width: int, units: int = 1, cache_interval: int = 1
) -> int:
    """How long to ask ZeroGPU for: grows with steps x images x pixels (x ControlNets), capped.
    With feature caching only every `cache_interval`-th step is a full one."""
    full_steps = -(-steps // max(1, cache_interval))  # steps 0, N, 2N, ...
    steps = full_steps + (steps - full_steps) * SHALLOW_STEP_SHARE
    work = steps * num_images * (height * width) / 512**2 * SECONDS_PER_STEP_512
    work *= 1 + CONTROLNET_SHARE * (units - 1)
    return int(min(MAX_GPU_SECONDS, OVERHEAD_SECONDS + work))


def gpu_task(function: Function, duration: Callable[..., int] | int) -> Function:
    """`spaces.GPU(duration=...)(function)` when `spaces` is installed, else `function`."""
    try:
        import spaces
    except ImportError:
        return function
    return spaces.GPU(duration=duration)(function)
