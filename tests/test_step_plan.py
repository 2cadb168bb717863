"""Planned sampler steps: the plans redo diffusers' own samplers, noisy samplers keep their step,
and the denoising loop moves nothing from the host once it runs."""

from __future__ import annotations

import copy
import json

import diffusers
import pytest
import torch

from benchmarks import sampler_steps
from benchmarks.sampler_steps import HostTransfers
from pipelines import step_plan
from pipelines.control import CONTROL_MODES
from pipelines.denoise import ControlUnit, denoise
from pipelines.schedulers import make_scheduler

SD15_SCHEDULER = {  # runwayml/stable-diffusion-v1-5's scheduler_config.json
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "clip_sample": False,
    "skip_prk_steps": True,
}


def _sampler(name: str):
    if name == "Euler":  # not in the app's list: a sampler that scales its model input
        return diffusers.EulerDiscreteScheduler.from_config(SD15_SCHEDULER)
    return make_scheduler(name, SD15_SCHEDULER)


def _model(model_input: torch.Tensor) -> torch.Tensor:
    """Stands in for a UNet: its output depends on its input, not linearly."""
    return torch.tanh(model_input) * 0.8 + 0.1 * model_input.roll(1, dims=-1)


@pytest.mark.parametrize("name", ["UniPC", "DDIM", "DPM++ 2M Karras", "Euler"])
@pytest.mark.parametrize("steps", [1, 7, 20])
def test_a_plan_redoes_the_samplers_own_loop(name, steps):
    scheduler = _sampler(name)
    scheduler.set_timesteps(steps)
    plan = step_plan.plan_for(scheduler, steps)
    assert plan is not None and plan.steps == len(scheduler.timesteps)
    start = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    start = start * scheduler.init_noise_sigma
    theirs = start
    trajectory = step_plan.Trajectory(plan, start)
    mine = start
    for index, timestep in enumerate(scheduler.timesteps):
        output = _model(scheduler.scale_model_input(theirs, timestep))
        theirs = scheduler.step(output, timestep, theirs, return_dict=False)[0]
        mine = trajectory.step(index, _model(trajectory.model_input(index, mine)))
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
    assert theirs.abs().max() > 0.1  # a real run, not zeros on both sides


@pytest.mark.parametrize(
    "name, steps, eta", [("Euler a", 20, 0.0), ("LCM", 4, 0.0), ("DDIM", 20, 0.5)]
)
def test_samplers_that_add_noise_keep_their_own_step(name, steps, eta):
    assert step_plan.plan_for(_sampler(name), steps, eta) is None


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


def _denoise(pipe, controlnet, device, steps, sampler="UniPC"):
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn(1, 4, 16, 16, generator=generator)
    embeds = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=generator)
    control = torch.rand(1, 3, 128, 128, generator=generator)
    return denoise(
        unet=pipe.unet,
        scheduler=make_scheduler(sampler, pipe.scheduler.config),
        units=[ControlUnit(controlnet, control.to(device), strength=0.8)],
        prompt_embeds=embeds.to(device),
        negative_embeds=torch.zeros_like(embeds).to(device),
        latents=latents.to(device),
        steps=steps,
        guidance_scale=7.5,
        mode=CONTROL_MODES["balanced"],
        gamma=1.0,
        generator=generator,
    )


@pytest.mark.parametrize("sampler", ["UniPC", "DDIM"])
def test_the_loop_with_a_plan_gives_the_samplers_own_latents(tiny, monkeypatch, sampler):
    pipe, controlnet = tiny
    planned = _denoise(pipe, controlnet, "cpu", 8, sampler)
    monkeypatch.setattr(step_plan, "plan_for", lambda *args, **kwargs: None)
    own_steps = _denoise(pipe, controlnet, "cpu", 8, sampler)
    torch.testing.assert_close(planned, own_steps, rtol=1e-4, atol=1e-4)


def test_the_counter_sees_diffusers_unipc_copy_its_sigmas():
    scheduler = _sampler("UniPC")
    scheduler.set_timesteps(4, device="meta")
    scheduler._step_index = 0  # diffusers finds it with nonzero(), which the meta device lacks
    sample = torch.zeros(1, 4, 8, 8, device="meta")
    with HostTransfers() as transfers:
        scheduler.step(sample, scheduler.timesteps[0], sample, return_dict=False)
    assert transfers.count >= 2  # sigma_t and sigma_s0, each .to(device)


def test_the_planned_loop_moves_nothing_from_the_host_per_step(tiny):
    """On the meta device (shapes only): the transfers are the same for 2 and for 5 steps, so
    none happens inside the loop (the few there are copy the inputs, the timesteps and the
    plan's weights before it)."""
    pipe, controlnet = tiny
    pipe, controlnet = copy.deepcopy(pipe).to("meta"), copy.deepcopy(controlnet).to("meta")
    counts = []
    for steps in (2, 5):
        with HostTransfers() as transfers:
            latents = _denoise(pipe, controlnet, "meta", steps)
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
        assert record["max_abs_diff"] < 1e-4
    unipc = records[1]["ops_per_step"]
    assert unipc["own_steps"] > 5 * unipc["planned"]  # UniPC: ~140 ops per step, the plan ~10
