"""Sampler steps planned ahead: no host round trip inside the denoising loop.

diffusers' multistep samplers compute each step with small tensors. UniPC, for example, copies
sigmas to the GPU one scalar at a time and solves a tiny linear system there. Each copy from
pageable host memory waits for the GPU to finish its queue (PyTorch ends a `non_blocking=False`
copy with `cudaStreamSynchronize`). So the host cannot queue the next step while the UNet runs,
and every step's many small launches add to the GPU's time instead of hiding behind it. Samplers
that add noise draw it from the request's CPU generators at each step and copy it over: the same
wait.

A sampler's step is linear. The sample after step i is a fixed linear combination of the starting
latents x_0, the model outputs eps_0 .. eps_i and the noise z_0 .. z_k drawn so far. The weights
depend only on the schedule.

We find those weights once per (sampler, settings, steps) by running the sampler itself on
coordinate vectors: each element of the probe stands for one of x_0, eps_0, eps_1, ..., and each
noise draw returns the coordinate of the next z. The weights are then checked on random data
against the sampler's own steps. In the loop, the noise is drawn before the first step, from the
same generators in the same order as the sampler would, and copied over once. A step becomes one
matrix-vector product on the GPU, with no host transfer:
x_{i+1} = W[i] @ [x_0, eps_0, ..., eps_{N-1}, z_0, ..., z_{K-1}].

An image-to-image run takes only the end of the schedule (from `start`, the sampler's begin index
set there, as diffusers' img2img pipeline does): its plan is probed over those steps, x_0 being
the noised image's latents. Inpainting changes the samples between steps (outside the mask they
are the image's), which the weights do not model: it keeps the sampler's own step.

A sampler the probe cannot drive, or whose steps the weights do not redo (clipping, thresholding,
noise drawn another way), keeps its own step.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

_PROBING = threading.Lock()
MAX_DRAWS_PER_STEP = 2  # noise draws a sampler may make per step (ancestral ones make 1)
# The history a trajectory keeps grows with steps x batch x size: 1.3 MiB at 512 px, 20 steps,
# one image. Past this, the sampler keeps its own step: such requests are bound by the GPU's
# compute, not by the host's waits, and an 8 GB card needs the memory more.
MAX_HISTORY_BYTES = 128 * 2**20
CHECK_TOLERANCE = 1e-6  # relative: the plan must redo the sampler's own steps to float64 rounding


@dataclass(frozen=True)
class StepPlan:
    """A sampler's whole run as weights: model input i = input_scales[i] * x_i, and
    x_{i+1} = weights[i] @ [x_0, eps_0, ..., eps_{N-1}, z_0, ..., z_{K-1}]."""

    input_scales: tuple[float, ...]  # (N,)
    weights: torch.Tensor  # (N, 1 + N + K), float64, on the CPU
    noise_draws: int = 0  # K: the sampler's calls to randn_tensor over the whole run

    @property
    def steps(self) -> int:
        return len(self.input_scales)


def trajectory_for(
    scheduler, steps: int, latents: torch.Tensor, eta: float = 0.0, generator=None, start: int = 0
) -> Trajectory | None:
    """A planned run for the loop, its noise drawn, or None: the sampler keeps its own step (no
    plan for it, or a history above MAX_HISTORY_BYTES). `scheduler` has its timesteps set (and,
    for an image-to-image run from schedule index `start`, its begin index)."""
    plan = plan_for(scheduler, steps, eta, start)
    if plan is None or plan.steps != len(scheduler.timesteps) - start * scheduler.order:
        return None
    if history_bytes(plan, latents) > MAX_HISTORY_BYTES:
        return None
    return Trajectory(plan, latents, generator)


def history_bytes(plan: StepPlan, latents: torch.Tensor) -> int:
    return plan.weights.shape[1] * latents.numel() * 4  # float32 rows


def plan_for(scheduler, steps: int, eta: float = 0.0, start: int = 0) -> StepPlan | None:
    """The plan of `scheduler`'s class and config at `steps` steps, or None when its steps are not
    a fixed linear map (it clips, say). Cached: the probe runs once per setting. `start` > 0: an
    image-to-image run, from that step of the schedule to its end (diffusers' `get_timesteps`:
    the sampler's begin index set there)."""
    config = json.dumps(dict(scheduler.config), sort_keys=True, default=str)
    uses_eta = "eta" in inspect.signature(scheduler.step).parameters
    return _plan(type(scheduler), config, steps, float(eta) if uses_eta else 0.0, start)


@functools.lru_cache(maxsize=64)
def _plan(scheduler_class, config: str, steps: int, eta: float, start: int = 0) -> StepPlan | None:
    def fresh():
        scheduler = scheduler_class.from_config(json.loads(config))
        scheduler.set_timesteps(steps, device="cpu")
        if start and hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start * scheduler.order)
        return scheduler, scheduler.timesteps[start * scheduler.order :]

    try:
        with _PROBING:  # one probe at a time: each swaps a function in the sampler's module
            plan = _probe(*fresh(), eta)
            return plan if _redoes_the_sampler(plan, *fresh(), eta) else None
    except Exception as error:  # noqa: BLE001 (any sampler: one the probe cannot drive is out)
        logger.info("%s keeps its own step: %s", scheduler_class.__name__, error)
        return None


def _step_options(scheduler, eta: float) -> dict:
    parameters = inspect.signature(scheduler.step).parameters
    options = {"eta": eta} if "eta" in parameters else {}
    if "generator" in parameters:  # never drawn from: the probes replace the draws
        options["generator"] = torch.Generator().manual_seed(0)
    return options


@contextmanager
def _noise_drawn_by(scheduler, draw) -> Iterator[None]:
    """The sampler's calls to diffusers' `randn_tensor` (by name, in its module) answered by
    `draw(shape)` instead."""
    module = sys.modules[type(scheduler).__module__]
    real = getattr(module, "randn_tensor", None)
    if real is None:  # it draws noise some other way, if at all: the check will tell
        yield
        return

    def replacement(shape, generator=None, device=None, dtype=None, layout=None):
        return draw(tuple(shape))

    module.randn_tensor = replacement
    try:
        yield
    finally:
        module.randn_tensor = real


def _probe(scheduler, timesteps, eta: float) -> StepPlan:
    """Runs the sampler on coordinates over `timesteps` (its schedule, or the end of it): element
    k of the probe is the weight of basis entry k (0: x_0; 1 + i: eps_i; 1 + N + j: the j-th noise
    drawn), so what the sampler returns is the next sample's weights."""
    steps = len(timesteps)
    size = 1 + steps + MAX_DRAWS_PER_STEP * steps
    sample = torch.zeros(1, size, dtype=torch.float64)
    sample[0, 0] = 1.0
    draws = 0

    def coordinate(shape) -> torch.Tensor:
        nonlocal draws
        if draws == MAX_DRAWS_PER_STEP * steps:
            raise ValueError("the sampler draws noise more often than planned for")
        noise = torch.zeros(shape, dtype=torch.float64)
        noise[..., 1 + steps + draws] = 1.0
        draws += 1
        return noise

    options = _step_options(scheduler, eta)
    scales, rows = [], []
    with _noise_drawn_by(scheduler, coordinate):
        for index, timestep in enumerate(timesteps):
            scaled = scheduler.scale_model_input(sample, timestep)
            largest = int(sample.abs().argmax())
            scale = float(scaled[0, largest] / sample[0, largest])
            if not torch.allclose(scaled, sample * scale, rtol=CHECK_TOLERANCE, atol=0):
                raise ValueError("the model input is not a scaled sample")
            model_output = torch.zeros_like(sample)
            model_output[0, index + 1] = 1.0
            sample = scheduler.step(model_output, timestep, sample, **options, return_dict=False)
            sample = sample[0]
            scales.append(scale)
            rows.append(sample[0].clone())
    weights = torch.stack(rows)[:, : 1 + steps + draws]
    return StepPlan(tuple(scales), weights, draws)


def _redoes_the_sampler(plan: StepPlan, scheduler, timesteps, eta: float) -> bool:
    """Whether the plan gives the sampler's own samples on random data and random noise."""
    generator = torch.Generator().manual_seed(1234)
    shape = (2, 4, 3, 3)
    sample = torch.randn(shape, generator=generator, dtype=torch.float64)
    basis = torch.zeros(plan.weights.shape[1], *shape, dtype=torch.float64)
    basis[0] = sample
    noise = torch.randn(plan.noise_draws, *shape, generator=generator, dtype=torch.float64)
    basis[1 + plan.steps :] = noise
    drawn = iter(noise)

    def next_noise(shape) -> torch.Tensor:
        return next(drawn)  # more draws than the probe saw: StopIteration, and no plan

    options = _step_options(scheduler, eta)
    with _noise_drawn_by(scheduler, next_noise):
        for index, timestep in enumerate(timesteps):
            scaled = scheduler.scale_model_input(sample, timestep)
            if not _close(scaled, sample * plan.input_scales[index]):
                return False
            # The model's output depends on its input, as a UNet's does.
            model_output = torch.tanh(scaled) + torch.randn(shape, generator=generator).double()
            basis[1 + index] = model_output
            sample = scheduler.step(model_output, timestep, sample, **options, return_dict=False)
            sample = sample[0]
            if not _close(torch.tensordot(plan.weights[index], basis, dims=1), sample):
                return False
    return next(drawn, None) is None  # every draw the probe saw happened


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = max(float(b.abs().max()), 1.0)
    return bool(torch.isfinite(a).all()) and float((a - b).abs().max()) <= CHECK_TOLERANCE * scale


class Trajectory:
    """One run of a plan on the loop's device: keeps x_0, the noise and every model output so far,
    and gives each next sample with one matrix-vector product (float32 whatever the model's dtype;
    float64 latents keep float64, so the plan's algebra can be checked to float64 rounding)."""

    def __init__(self, plan: StepPlan, latents: torch.Tensor, generator=None):
        self.plan = plan
        self.dtype = latents.dtype
        self.shape = latents.shape
        exact = torch.float64 if latents.dtype == torch.float64 else torch.float32
        self.weights = plan.weights.to(latents.device, exact)  # one host copy
        size = (plan.weights.shape[1], math.prod(latents.shape))
        self.history = latents.new_zeros(size, dtype=exact)
        self.history[0] = latents.reshape(-1)
        if plan.noise_draws:  # and one more
            self.history[1 + plan.steps :] = draw_noise(plan, latents, generator)

    def model_input(self, index: int, sample: torch.Tensor) -> torch.Tensor:
        scale = self.plan.input_scales[index]
        return sample if scale == 1.0 else sample * scale

    def step(self, index: int, model_output: torch.Tensor) -> torch.Tensor:
        self.history[1 + index] = model_output.reshape(-1)
        return (self.weights[index] @ self.history).view(self.shape).to(self.dtype)


def draw_noise(plan: StepPlan, latents: torch.Tensor, generator=None) -> torch.Tensor:
    """(K, numel) on the latents' device: the noise the sampler would draw in its steps, drawn
    now, as it would (diffusers' `randn_tensor` with its shape, dtype and generators, in order;
    nothing else draws from the generators during the loop), and copied over at once."""
    from diffusers.utils.torch_utils import randn_tensor

    generators = generator if isinstance(generator, list) else [generator]
    on_cpu = all(g is None or g.device.type == "cpu" for g in generators)
    device = torch.device("cpu") if on_cpu else latents.device
    draws = [
        randn_tensor(tuple(latents.shape), generator=generator, device=device, dtype=latents.dtype)
        for _ in range(plan.noise_draws)
    ]
    return torch.stack(draws).reshape(plan.noise_draws, -1).to(latents.device)
