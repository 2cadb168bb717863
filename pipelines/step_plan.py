"""Sampler steps planned ahead: no host round trip inside the denoising loop.

diffusers' multistep samplers compute each step with small tensors. UniPC, for example, copies
sigmas to the GPU one scalar at a time and solves a tiny linear system there. Each copy from
pageable host memory waits for the GPU to finish its queue (PyTorch ends a `non_blocking=False`
copy with `cudaStreamSynchronize`). So the host cannot queue the next step while the UNet runs,
and every step's ~160 small launches add to the GPU's time instead of hiding behind it.

A deterministic sampler of that kind is linear. The sample after step i is a fixed linear
combination of the starting latents x_0 and the model outputs eps_0 .. eps_i. The weights depend
only on the schedule.

We find those weights once per (sampler, settings, steps) by running the sampler itself on
coordinate vectors: each element of the probe stands for one of x_0, eps_0, eps_1, ... The weights
are then checked on random data against the sampler's own steps. On the GPU a step becomes one
matrix-vector product, with no host transfer:
x_{i+1} = W[i] @ [x_0, eps_0, ..., eps_{N-1}].

Samplers that add noise (Euler a, LCM, DDIM with eta > 0) fail the check and keep their own step.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

CHECK_TOLERANCE = 1e-6  # relative: the plan must redo the sampler's own steps to float64 rounding


@dataclass(frozen=True)
class StepPlan:
    """A sampler's whole run as weights: model input i = input_scales[i] * x_i, and
    x_{i+1} = weights[i] @ [x_0, eps_0, ..., eps_{N-1}]."""

    input_scales: tuple[float, ...]  # (N,)
    weights: torch.Tensor  # (N, N + 1), float64, on the CPU

    @property
    def steps(self) -> int:
        return len(self.input_scales)


def plan_for(scheduler, steps: int, eta: float = 0.0) -> StepPlan | None:
    """The plan of `scheduler`'s class and config at `steps` steps, or None when its steps are not
    a fixed linear map (it adds noise, or clips). Cached: the probe runs once per setting."""
    config = json.dumps(dict(scheduler.config), sort_keys=True, default=str)
    uses_eta = "eta" in inspect.signature(scheduler.step).parameters
    return _plan(type(scheduler), config, steps, float(eta) if uses_eta else 0.0)


@functools.lru_cache(maxsize=64)
def _plan(scheduler_class, config: str, steps: int, eta: float) -> StepPlan | None:
    def fresh():
        scheduler = scheduler_class.from_config(json.loads(config))
        scheduler.set_timesteps(steps, device="cpu")
        return scheduler

    try:
        plan = _probe(fresh(), eta)
        return plan if _redoes_the_sampler(plan, fresh(), eta) else None
    except Exception as error:  # noqa: BLE001 (any sampler: one the probe cannot drive is out)
        logger.info("%s keeps its own step: %s", scheduler_class.__name__, error)
        return None


def _step_options(scheduler, eta: float) -> dict:
    parameters = inspect.signature(scheduler.step).parameters
    options = {"eta": eta} if "eta" in parameters else {}
    if "generator" in parameters:  # a sampler that draws noise gets some, and fails the check
        options["generator"] = torch.Generator().manual_seed(0)
    return options


def _probe(scheduler, eta: float) -> StepPlan:
    """Runs the sampler on coordinates: element k of the probe is the weight of basis entry k
    (0: x_0; 1 + i: eps_i), so what the sampler returns is the next sample's weights."""
    timesteps = scheduler.timesteps
    size = len(timesteps) + 1
    sample = torch.zeros(1, size, dtype=torch.float64)
    sample[0, 0] = 1.0
    options = _step_options(scheduler, eta)
    scales, rows = [], []
    for index, timestep in enumerate(timesteps):
        scaled = scheduler.scale_model_input(sample, timestep)
        largest = int(sample.abs().argmax())
        scale = float(scaled[0, largest] / sample[0, largest])
        if not torch.allclose(scaled, sample * scale, rtol=CHECK_TOLERANCE, atol=0):
            raise ValueError("the model input is not a scaled sample")
        model_output = torch.zeros_like(sample)
        model_output[0, index + 1] = 1.0
        sample = scheduler.step(model_output, timestep, sample, **options, return_dict=False)[0]
        scales.append(scale)
        rows.append(sample[0].clone())
    return StepPlan(tuple(scales), torch.stack(rows))


def _redoes_the_sampler(plan: StepPlan, scheduler, eta: float) -> bool:
    """Whether the plan gives the sampler's own samples on random data (noise would not)."""
    generator = torch.Generator().manual_seed(1234)
    shape = (2, 4, 3, 3)
    sample = torch.randn(shape, generator=generator, dtype=torch.float64)
    basis = [sample]
    options = _step_options(scheduler, eta)
    for index, timestep in enumerate(scheduler.timesteps):
        scaled = scheduler.scale_model_input(sample, timestep)
        if not _close(scaled, sample * plan.input_scales[index]):
            return False
        # The model's output depends on its input, as a UNet's does.
        model_output = torch.tanh(scaled) + torch.randn(shape, generator=generator).double()
        basis.append(model_output)
        sample = scheduler.step(model_output, timestep, sample, **options, return_dict=False)[0]
        planned = torch.tensordot(plan.weights[index, : len(basis)], torch.stack(basis), dims=1)
        if not _close(planned, sample):
            return False
    return True


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = max(float(b.abs().max()), 1.0)
    return bool(torch.isfinite(a).all()) and float((a - b).abs().max()) <= CHECK_TOLERANCE * scale


class Trajectory:
    """One run of a plan on the loop's device: keeps x_0 and every model output so far, and gives
    each next sample with one matrix-vector product (float32, whatever the model's dtype)."""

    def __init__(self, plan: StepPlan, latents: torch.Tensor):
        self.plan = plan
        self.dtype = latents.dtype
        self.shape = latents.shape
        self.weights = plan.weights.to(latents.device, torch.float32)  # the one host copy
        size = (plan.steps + 1, math.prod(latents.shape))
        self.history = latents.new_zeros(size, dtype=torch.float32)
        self.history[0] = latents.reshape(-1)

    def model_input(self, index: int, sample: torch.Tensor) -> torch.Tensor:
        scale = self.plan.input_scales[index]
        return sample if scale == 1.0 else sample * scale

    def step(self, index: int, model_output: torch.Tensor) -> torch.Tensor:
        self.history[index + 1] = model_output.reshape(-1)
        return (self.weights[index] @ self.history).view(self.shape).to(self.dtype)
