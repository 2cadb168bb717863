"""Planned sampler steps: the plans redo diffusers' own samplers (their noise included), samplers
the weights cannot redo keep their own step, and the denoising loop moves nothing from the host
once it runs."""

from __future__ import annotations

import copy
import inspect
import json
import sys
import threading

import diffusers
import pytest
import torch

from benchmarks import sampler_steps
from pipelines.loop import step_plan
from pipelines.loop.control import CONTROL_MODES
from pipelines.loop.denoise import ControlUnit, denoise
from pipelines.loop.schedulers import make_scheduler
from testkit.host_transfers import HostTransfers
from testkit.tiny_models import SD15_SCHEDULER  # runwayml/stable-diffusion-v1-5's
from testkit.tolerances import assert_within


def _sampler(name: str):
    if name == "Euler":  # not in the app's list: a sampler that scales its model input
        return diffusers.EulerDiscreteScheduler.from_config(SD15_SCHEDULER)
    return make_scheduler(name, SD15_SCHEDULER)


def _model(model_input: torch.Tensor) -> torch.Tensor:
    """Stands in for a UNet: its output depends on its input, not linearly."""
    return torch.tanh(model_input) * 0.8 + 0.1 * model_input.roll(1, dims=-1)


SAMPLERS = [
    ("UniPC", 0.0),
    ("DDIM", 0.0),
    ("DPM++ 2M Karras", 0.0),
    ("Euler", 0.0),
    ("Euler a", 0.0),  # noise at every step
    ("LCM", 0.0),  # noise at every step but the last
    ("DDIM", 0.5),  # noise from eta
]
# diffusers' Euler and DPM-Solver steps cast the sample to float32 inside `step` (their upcast
# for fp16 models), so their own loop on float64 samples is only float32-exact.
ROUNDS_TO_FLOAT32 = {"Euler", "Euler a", "DPM++ 2M Karras"}
FLOAT32_EPS = torch.finfo(torch.float32).eps
# Rounding errors per step, in units of the samples' scale: the plan's dot product sums up to
# 1 + steps + draws rounded terms (pairwise: a few roundings deep), the sampler's own step a dozen
# float ops; 16 covers both. The model stand-in is 1-Lipschitz, so errors add up over the steps
# instead of growing.
ROUNDINGS_PER_STEP = 16


def _run_both(name: str, eta: float, steps: int, dtype: torch.dtype):
    """Yield (plan's sample, sampler's own sample) after each step, both from the same start and
    the same per-image noise generators, in `dtype`."""
    scheduler = _sampler(name)
    scheduler.set_timesteps(steps)
    plan = step_plan.plan_for(scheduler, steps, eta)
    assert plan is not None and plan.steps == len(scheduler.timesteps)
    parameters = inspect.signature(scheduler.step).parameters
    options = {"eta": eta} if "eta" in parameters else {}
    start = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    start = start * scheduler.init_noise_sigma
    theirs = start
    generators = [torch.Generator().manual_seed(seed) for seed in (5, 6)]  # one per image
    if "generator" in parameters:
        options["generator"] = [torch.Generator().manual_seed(seed) for seed in (5, 6)]
    trajectory = step_plan.Trajectory(plan, start, generators)
    mine = start
    for index, timestep in enumerate(scheduler.timesteps):
        output = _model(scheduler.scale_model_input(theirs, timestep))
        theirs = scheduler.step(output, timestep, theirs, **options, return_dict=False)[0]
        mine = trajectory.step(index, _model(trajectory.model_input(index, mine)))
        yield mine, theirs
    assert theirs.abs().max() > 0.1  # a real run, not zeros on both sides


@pytest.mark.parametrize("name, eta", SAMPLERS)
@pytest.mark.parametrize("steps", [1, 7, 20])
def test_a_plan_is_the_samplers_own_linear_map(name, eta, steps):
    """The algebra, in float64: the plan's weights are the sampler's steps to float64 rounding."""
    for index, (mine, theirs) in enumerate(_run_both(name, eta, steps, torch.float64), start=1):
        assert mine.dtype == theirs.dtype == torch.float64
        exact = name not in ROUNDS_TO_FLOAT32
        bound = 1e-10 if exact else ROUNDINGS_PER_STEP * index * FLOAT32_EPS
        scale = max(float(theirs.abs().max()), 1.0)
        assert float((mine - theirs).abs().max()) <= bound * scale, (index, bound)


@pytest.mark.parametrize("name, eta", SAMPLERS)
@pytest.mark.parametrize("steps", [1, 7, 20])
def test_a_plan_redoes_the_samplers_own_loop_in_float32(name, eta, steps):
    """The loop the app runs, in float32: within rounding that grows with the steps taken."""
    for index, (mine, theirs) in enumerate(_run_both(name, eta, steps, torch.float32), start=1):
        bound = ROUNDINGS_PER_STEP * index * FLOAT32_EPS * max(float(theirs.abs().max()), 1.0)
        torch.testing.assert_close(mine, theirs, rtol=0, atol=bound)


def test_noisy_samplers_draw_their_noise_ahead_from_the_generators():
    plan = step_plan.plan_for(_sampler("Euler a"), 6)
    assert plan.noise_draws == 6 and step_plan.plan_for(_sampler("LCM"), 6).noise_draws == 5
    assert step_plan.plan_for(_sampler("UniPC"), 6).noise_draws == 0
    latents = torch.zeros(2, 4, 8, 8)
    first, again, other = (
        step_plan.draw_noise(plan, latents, [torch.Generator().manual_seed(s) for s in seeds])
        for seeds in ((5, 6), (5, 6), (5, 7))
    )
    assert first.shape == (6, 2 * 4 * 8 * 8) and torch.equal(first, again)
    image_size = 4 * 8 * 8  # image 0 keeps its noise when image 1's seed changes
    torch.testing.assert_close(first[:, :image_size], other[:, :image_size], rtol=0, atol=0)
    assert not torch.equal(first[:, image_size:], other[:, image_size:])


class _EulerWithItsOwnNoise(diffusers.EulerDiscreteScheduler):
    """Draws noise without diffusers' randn_tensor: the probe cannot see it."""

    def step(self, model_output, timestep, sample, **kwargs):
        output = super().step(model_output, timestep, sample, **kwargs)
        return (output[0] + 0.1 * torch.randn_like(output[0]),)


@pytest.mark.parametrize(
    "scheduler",
    [
        diffusers.DDIMScheduler.from_config({**SD15_SCHEDULER, "clip_sample": True}),
        _EulerWithItsOwnNoise.from_config(SD15_SCHEDULER),
    ],
    ids=["clipping", "noise drawn another way"],
)
def test_samplers_the_weights_do_not_redo_keep_their_own_step(scheduler):
    assert step_plan.plan_for(scheduler, 8) is None


def test_a_plan_is_made_once_per_setting():
    step_plan._plan.cache_clear()
    for _ in range(3):
        step_plan.plan_for(_sampler("UniPC"), 12)
    step_plan.plan_for(_sampler("UniPC"), 13)
    step_plan.plan_for(_sampler("DDIM"), 12, eta=0.0)
    step_plan.plan_for(_sampler("DDIM"), 12, eta=0.3)  # eta is part of DDIM's setting
    info = step_plan._plan.cache_info()
    assert (info.misses, info.hits) == (4, 2)


@pytest.fixture(scope="module")
def tiny(engine):
    return engine.base_pipeline(), engine.controlnet("canny")


GUIDANCE = 7.5


def _denoise(pipe, controlnet, device, steps, sampler="UniPC", scales=None):
    """The engine's loop on the tiny models; `scales`, if given, gets the samples' sizes: the
    start, then after each step."""
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn(1, 4, 16, 16, generator=generator)
    embeds = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=generator)
    control = torch.rand(1, 3, 128, 128, generator=generator)
    scheduler = make_scheduler(sampler, pipe.scheduler.config)
    on_step = None
    if scales is not None:
        scheduler.set_timesteps(steps)  # for its init_noise_sigma (denoise sets them again)
        scales.append(float(latents.abs().max()) * float(scheduler.init_noise_sigma))

        def on_step(done, total, sample):
            scales.append(float(sample.abs().max()))

    return denoise(
        unet=pipe.unet,
        scheduler=scheduler,
        units=[ControlUnit(controlnet, control.to(device), strength=0.8)],
        prompt_embeds=embeds.to(device),
        negative_embeds=torch.zeros_like(embeds).to(device),
        latents=latents.to(device),
        steps=steps,
        guidance_scale=GUIDANCE,
        mode=CONTROL_MODES["balanced"],
        gamma=1.0,
        generator=generator,
        on_step=on_step,
    )


def _loop_bound(scales: list[float]) -> float:
    """The planned loop against the sampler's own through the tiny UNet: each step rounds
    (ROUNDINGS_PER_STEP) at the larger of its input's and its output's size, and the steps add up;
    the guided prediction u + g (c - u) passes a difference in the latents on at up to 1 + 2 g
    times the UNet's own, taken as 1 (like the stand-in's above)."""
    per_step = [max(before, after) for before, after in zip(scales, scales[1:], strict=False)]
    return ROUNDINGS_PER_STEP * FLOAT32_EPS * (1 + 2 * GUIDANCE) * sum(per_step)


@pytest.mark.parametrize("sampler", ["UniPC", "DDIM", "Euler a"])
def test_the_loop_with_a_plan_gives_the_samplers_own_latents(tiny, monkeypatch, sampler):
    pipe, controlnet = tiny
    scales = []
    planned = _denoise(pipe, controlnet, "cpu", 8, sampler, scales)
    monkeypatch.setattr(step_plan, "plan_for", lambda *args, **kwargs: None)
    own_steps = _denoise(pipe, controlnet, "cpu", 8, sampler)
    label = f"step_plan:loop {sampler}"
    assert_within(planned, own_steps, _loop_bound(scales), label, scale=max(scales))


def test_the_counter_sees_diffusers_unipc_copy_its_sigmas():
    scheduler = _sampler("UniPC")
    scheduler.set_timesteps(4, device="meta")
    scheduler._step_index = 0  # diffusers finds it with nonzero(), which the meta device lacks
    sample = torch.zeros(1, 4, 8, 8, device="meta")
    with HostTransfers() as transfers:
        scheduler.step(sample, scheduler.timesteps[0], sample, return_dict=False)
    assert transfers.count >= 2  # sigma_t and sigma_s0, each .to(device)


@pytest.mark.parametrize("sampler", ["UniPC", "LCM"])  # LCM: noise at each step
def test_the_planned_loop_moves_nothing_from_the_host_per_step(tiny, sampler):
    """On the meta device (shapes only): the transfers are the same for 2 and for 5 steps, so
    none happens inside the loop (the few there are copy the inputs, the timesteps, the plan's
    weights and the noise drawn ahead before it)."""
    pipe, controlnet = tiny
    pipe, controlnet = copy.deepcopy(pipe).to("meta"), copy.deepcopy(controlnet).to("meta")
    counts = []
    for steps in (2, 5):
        with HostTransfers() as transfers:
            latents = _denoise(pipe, controlnet, "meta", steps, sampler)
        assert latents.device.type == "meta" and latents.shape == (1, 4, 16, 16)
        counts.append(transfers.count)
    assert counts[0] == counts[1] > 0, counts


def test_sampler_steps_benchmark_tiny(capsys):
    assert sampler_steps.main(["--tiny"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records[0]["phase"] == "setup"
    assert [record["sampler"] for record in records[1:]] == list(sampler_steps.SAMPLERS)
    for record in records[1:]:
        ops = record["ops_per_step"]
        assert 0 < ops["planned"] < ops["own_steps"], record
        assert all(value > 0 for value in record["seconds_per_run"].values())
        # A 1-Lipschitz stand-in model: float32 rounding as in the loop test above, at the end.
        scale = max(record["latents_max_abs"], 1.0)
        bound = ROUNDINGS_PER_STEP * record["steps"] * FLOAT32_EPS * scale
        label = f"step_plan:benchmark {record['sampler']}"
        assert_within(record["max_abs_diff"], 0.0, bound, label, scale=scale)
    unipc = records[1]["ops_per_step"]
    assert unipc["own_steps"] > 5 * unipc["planned"]  # UniPC: ~140 ops per step, the plan ~10


def test_probes_give_the_samplers_module_its_noise_function_back():
    module = sys.modules[diffusers.EulerAncestralDiscreteScheduler.__module__]
    real = module.randn_tensor
    step_plan._plan.cache_clear()
    threads = [
        threading.Thread(target=step_plan.plan_for, args=(_sampler("Euler a"), steps))
        for steps in range(2, 10)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert module.randn_tensor is real
    assert step_plan._plan.cache_info().currsize == 8


def test_a_history_above_its_cap_leaves_the_sampler_its_own_step(tiny, monkeypatch):
    scheduler = _sampler("UniPC")
    scheduler.set_timesteps(20)
    latents = torch.zeros(1, 4, 64, 64)  # 512 px, one image: 21 float32 rows, 1.3 MiB
    trajectory = step_plan.trajectory_for(scheduler, 20, latents)
    assert trajectory is not None and trajectory.history.numel() * 4 == 21 * 4 * 64 * 64 * 4
    assert step_plan.history_bytes(trajectory.plan, latents) <= step_plan.MAX_HISTORY_BYTES
    pipe, controlnet = tiny
    scales = []
    planned = _denoise(pipe, controlnet, "cpu", 6, scales=scales)
    monkeypatch.setattr(step_plan, "MAX_HISTORY_BYTES", 1024)
    assert step_plan.trajectory_for(scheduler, 20, latents) is None
    own_steps = _denoise(pipe, controlnet, "cpu", 6)
    bound = _loop_bound(scales)
    assert_within(own_steps, planned, bound, "step_plan:history_cap", scale=max(scales))
