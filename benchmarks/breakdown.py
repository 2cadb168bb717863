"""Where one engine call's time goes: the functions the engine calls for each part, swapped for
timed wrappers for the length of one call, with a device synchronisation before and after each.

The synchronisations cost a little themselves, so the parts add up to more than an untimed call
takes; the breakdown says where the time goes, the untimed calls how much there is.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable

import numpy as np
import torch

# (name, module, attribute) of the functions timed, each where its caller looks it up (a name the
# engine imported is swapped in the engine's namespace). "controlnets" and "sampler_steps" run
# inside "denoise"; "decode" is the checked decode, its float32 retry included. A sampler's step is
# its planned one (pipelines/loop/step_plan.py) where it has a plan, else diffusers' own: both are
# timed as "sampler_steps".
BREAKDOWN_PARTS = (
    ("encode_prompt", "pipelines.engine", "encode_prompt"),
    ("denoise", "pipelines.engine", "denoise"),
    ("controlnets", "pipelines.loop.denoise", "control_residuals"),
    ("decode", "pipelines.engine", "decode_checked"),
)


def breakdown(call: Callable[[], np.ndarray], device: torch.device) -> dict[str, float]:
    """One more call of `call`, timed part by part (seconds): text encoding, the denoising loop
    and in it the ControlNets and the sampler's steps (the rest of the loop is the UNet's), the
    VAE decode, and everything else (`outside`)."""
    from pipelines.loop.schedulers import make_scheduler
    from pipelines.loop.step_plan import Trajectory

    # (name, owner, attribute) of each function timed; the sampler's steps are methods.
    targets = [
        (name, importlib.import_module(module), attribute)
        for name, module, attribute in BREAKDOWN_PARTS
    ]
    targets.append(("sampler_steps", type(make_scheduler("UniPC", {})), "step"))
    targets.append(("sampler_steps", Trajectory, "step"))
    totals = {name: 0.0 for name, _, _ in targets}
    calls = dict.fromkeys(totals, 0)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(name: str, function: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            sync()
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                sync()
                totals[name] += time.perf_counter() - began
                calls[name] += 1

        return wrapper

    originals = [(owner, attribute, getattr(owner, attribute)) for _, owner, attribute in targets]
    try:
        for name, owner, attribute in targets:
            setattr(owner, attribute, timed(name, getattr(owner, attribute)))
        sync()
        began = time.perf_counter()
        call()
        sync()
        total = time.perf_counter() - began
    finally:
        for owner, attribute, original in originals:
            setattr(owner, attribute, original)
    # A part the engine no longer reaches through these names would read as 0 s, not as missing.
    missed = [name for name, count in calls.items() if not count]
    if missed:
        raise RuntimeError(f"the call never reached {missed}: BREAKDOWN_PARTS names a stale place")
    parts = {name: round(value, 4) for name, value in totals.items()}
    parts["unet_and_loop"] = round(
        totals["denoise"] - totals["controlnets"] - totals["sampler_steps"], 4
    )
    parts["outside"] = round(
        total - totals["encode_prompt"] - totals["denoise"] - totals["decode"], 4
    )
    return {"total": round(total, 4), **parts}
