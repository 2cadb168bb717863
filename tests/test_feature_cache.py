"""Feature caching (DeepCache) on the tiny models: its forwards against diffusers' own, the
schedule of full and shallow steps, the engine's option, and the fast path's capture."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from errors import InvalidRequestError
from pipelines.engine import Engine
from pipelines.loop.control import CONTROL_MODES
from pipelines.loop.denoise import ControlUnit, control_residuals, denoise
from pipelines.loop.schedulers import make_scheduler
from pipelines.speed import fast_path, feature_cache
from testkit.tolerances import ROUNDING_LEVELS, assert_levels_within

REQUEST = {"steps": 6, "image_resolution": 256, "seed": 4}


@pytest.fixture(scope="module")
def models(engine):
    pipe = engine.base_pipeline()
    return pipe, engine.controlnet("canny")


def _inputs(pipe, height=16, width=16, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, height, width, generator=generator)
    embeds = torch.randn(batch, 77, pipe.unet.config.cross_attention_dim, generator=generator)
    control = torch.rand(batch, 3, height * 8, width * 8, generator=generator)
    return sample, torch.tensor(601), embeds, control


def _controlnet_residuals(controlnet, sample, timestep, embeds, control):
    down, middle = controlnet(
        sample, timestep, encoder_hidden_states=embeds, controlnet_cond=control, return_dict=False
    )
    return list(down), middle


@pytest.mark.parametrize("size", [(16, 16), (15, 13)])  # 15 x 13: upsamplers told their size
@pytest.mark.parametrize("with_control", [True, False])
def test_a_full_step_is_diffusers_unet_forward(models, size, with_control):
    pipe, controlnet = models
    sample, timestep, embeds, control = _inputs(pipe, *size)
    down, middle = (
        _controlnet_residuals(controlnet, sample, timestep, embeds, control)
        if with_control
        else (None, None)
    )
    with torch.inference_mode():
        expected = pipe.unet(
            sample,
            timestep,
            encoder_hidden_states=embeds,
            down_block_additional_residuals=down,
            mid_block_additional_residual=middle,
            return_dict=False,
        )[0]
        noise, features = feature_cache.caching_unet(pipe.unet)(
            sample, timestep, embeds, down, middle
        )
    # The same modules called with the same tensors, in diffusers' order: equal bit for bit.
    assert torch.equal(noise, expected), float((noise - expected).abs().max())
    # The last up block's input: full latent size, the second level's channels.
    assert features.shape == (2, pipe.unet.config.block_out_channels[1], *size)


def test_a_shallow_step_on_its_own_full_steps_features_gives_the_same_noise(models):
    pipe, controlnet = models
    sample, timestep, embeds, control = _inputs(pipe)
    down, middle = _controlnet_residuals(controlnet, sample, timestep, embeds, control)
    count = feature_cache.shallow_count(pipe.unet)
    assert count == 3  # conv_in and the first down block's two layers, as in SD1.5
    caching = feature_cache.caching_unet(pipe.unet)
    with torch.inference_mode():
        full, features = caching(sample, timestep, embeds, down, middle)
        shallow, kept = caching(sample, timestep, embeds, down[:count], cached=features)
        other_input = caching(sample * 0.5, timestep, embeds, down[:count], cached=features)[0]
    # The shallow step recomputes the same first and last blocks on the same inputs: bit for bit.
    assert torch.equal(shallow, full), float((shallow - full).abs().max())
    assert kept is features
    assert not torch.allclose(other_input, full)  # the shallow branch does depend on the input


def test_the_shallow_controlnet_gives_its_first_residuals(models):
    pipe, controlnet = models
    sample, timestep, embeds, control = _inputs(pipe, seed=1)
    down, _ = _controlnet_residuals(controlnet, sample, timestep, embeds, control)
    with torch.inference_mode():
        shallow = feature_cache.shallow_controlnet(controlnet)(sample, timestep, embeds, control, 3)
    assert len(shallow) == 3
    for mine, theirs in zip(shallow, down[:3], strict=True):  # ControlNetModel's own ops: exact
        assert torch.equal(mine, theirs), float((mine - theirs).abs().max())
    assert feature_cache.shallow_controlnet(controlnet) is feature_cache.shallow_controlnet(
        controlnet
    )  # made once, so a compiled one is reused


def test_shallow_residuals_keep_the_control_modes_weights(models):
    pipe, controlnet = models
    sample, timestep, embeds, control = _inputs(pipe, seed=2)
    unit = ControlUnit(controlnet, control[:1], strength=0.7)
    mode = CONTROL_MODES["prompt"]  # resolution-weighted: w_i = (h_min / h_i) ** gamma
    with torch.inference_mode():
        full_down, _ = control_residuals([unit], sample, timestep, embeds, mode, 1.0)
        shallow_down, middle = control_residuals([unit], sample, timestep, embeds, mode, 1.0, 3)
    assert middle is None and len(shallow_down) == 3
    for mine, theirs in zip(shallow_down, full_down[:3], strict=True):  # same product: exact
        assert torch.equal(mine, theirs), float((mine - theirs).abs().max())


def _count_calls(module: torch.nn.Module) -> list[int]:
    calls = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


@pytest.mark.parametrize("interval, full_steps", [(1, 7), (3, 3), (7, 1)])
def test_deep_blocks_run_only_on_full_steps(settings, interval, full_steps):
    engine = Engine(settings, device="cpu")  # its own models: hooks stay off the shared ones
    pipe, controlnet = engine.base_pipeline(), engine.controlnet("canny")
    unet_middle, controlnet_middle = (
        _count_calls(pipe.unet.mid_block),
        _count_calls(controlnet.mid_block),
    )
    controlnet_first = _count_calls(controlnet.down_blocks[0])
    sample, _, embeds, control = _inputs(pipe, batch=1)
    denoise(
        unet=pipe.unet,
        scheduler=make_scheduler("UniPC", pipe.scheduler.config),
        units=[ControlUnit(controlnet, control[:1], strength=1.0)],
        prompt_embeds=embeds,
        negative_embeds=torch.zeros_like(embeds),
        latents=sample,
        steps=7,
        guidance_scale=7.5,
        mode=CONTROL_MODES["controlnet"],  # CFG-RW: shallow residuals on the conditional half
        gamma=1.0,
        generator=torch.Generator().manual_seed(0),
        cache_interval=interval,
    )
    assert len(unet_middle) == len(controlnet_middle) == full_steps
    assert len(controlnet_first) == 7  # the ControlNet's shallow branch runs at every step


def test_the_engine_option_changes_the_images_a_little(engine, astronaut):
    exact = engine.generate("canny", astronaut, "a robot", **REQUEST)
    same = engine.generate("canny", astronaut, "a robot", cache_interval=1, **REQUEST)
    cached = engine.generate("canny", astronaut, "a robot", cache_interval=2, **REQUEST)
    other_seed = engine.generate("canny", astronaut, "a robot", **{**REQUEST, "seed": 5})
    assert np.array_equal(same.images[0], exact.images[0])
    cached_change = np.abs(cached.images[0].astype(int) - exact.images[0].astype(int)).mean()
    seed_change = np.abs(other_seed.images[0].astype(int) - exact.images[0].astype(int)).mean()
    assert 0 < cached_change < 0.1 * seed_change, (cached_change, seed_change)
    assert (
        cached.parameters[0]["cache_interval"] == 2 and exact.parameters[0]["cache_interval"] == 1
    )


@pytest.mark.parametrize("value", [0, 11, 2.5, "often", -1])
def test_out_of_range_intervals_are_refused_by_the_engine(engine, astronaut, value):
    with pytest.raises(InvalidRequestError, match="cache_interval"):
        engine.generate("canny", astronaut, "a robot", cache_interval=value, **REQUEST)


def test_unsupported_unets_are_refused_with_a_reason():
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        class_embed_type="timestep",
    )
    with pytest.raises(InvalidRequestError, match="SD1.5-style UNets only"):
        feature_cache.check_supported(unet)


def test_the_fast_path_compiles_the_caching_models_without_graph_breaks(
    settings, engine, astronaut, monkeypatch
):
    real = fast_path.compile_in_place
    monkeypatch.setattr(
        fast_path,
        "compile_in_place",
        lambda module, **options: real(module, **{**options, "backend": "eager"}),
    )
    fast_engine = Engine(dataclasses.replace(settings, fast_path="on"), device="cpu")
    request = {**REQUEST, "cache_interval": 3, "control_end": 0.5}  # steps 3+ have no control
    first = fast_engine.generate("canny", astronaut, "a robot", **request)
    notice = next(w for w in first.warnings if w.startswith("First request"))
    assert "UNet (feature caching)" in notice and "Canny ControlNet (feature caching)" in notice
    unet = fast_engine.base_pipeline().unet
    assert fast_path.is_compiled(feature_cache.caching_unet(unet))
    again = fast_engine.generate("canny", astronaut, "a robot", **request)
    assert not any("First request" in warning for warning in again.warnings)
    plain = engine.generate("canny", astronaut, "a robot", **request)
    # channels_last, fused QKV and the traced graph reorder float32 sums only.
    assert_levels_within(first.images[0], plain.images[0], ROUNDING_LEVELS, "feature_cache:fast")


def test_feature_cache_benchmark_tiny_counts_and_times_both_steps():
    import json
    import os
    import subprocess
    import sys

    from testkit.paths import PROJECT_ROOT

    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.feature_cache", "--tiny"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        cwd=PROJECT_ROOT,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    records = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    assert [record["measure"] for record in records] == ["flops", "seconds"]
    flops, seconds = records
    assert 0 < flops["shallow_share"] < 1, flops
    bounds = [flops["speedup_bound"][str(n)] for n in (2, 3, 4, 5)]
    assert bounds[0] > 1 and bounds == sorted(bounds), flops  # more caching, more gain
    # Timed, the tiny shallow step saves a few milliseconds, which a busy machine can swallow:
    # only that both steps were measured, not which one came out faster.
    assert seconds["full_s"] > 0 and seconds["shallow_s"] > 0, seconds
    assert seconds["shallow_share"] > 0, seconds
    assert set(seconds["speedup_bound"]) == set(flops["speedup_bound"]), seconds


def test_a_composition_caches_every_units_deep_blocks(settings, astronaut):
    engine = Engine(settings, device="cpu")  # its own models: hooks stay off the shared ones
    units = [{"condition": "canny", "image": astronaut}, {"condition": "depth", "strength": 0.8}]
    request = {**REQUEST, "control_mode": "controlnet", "cache_interval": 2}  # CFG-RW too
    exact = engine.compose(units, "a robot", **{**request, "cache_interval": 1})
    counted = {
        role: (_count_calls(model.mid_block), _count_calls(model.down_blocks[0]))
        for role, model in (
            ("canny", engine.controlnet("canny")),
            ("depth", engine.controlnet("depth")),
        )
    }
    cached = engine.compose(units, "a robot", **request)
    for role, (middle, first) in counted.items():
        assert (len(middle), len(first)) == (3, 6), role  # steps 0, 2, 4 full; all 6 shallow
    change = np.abs(cached.images[0].astype(int) - exact.images[0].astype(int)).mean()
    assert 0 < change < 5, change


def test_offload_hooks_run_before_the_caching_forwards(settings, astronaut):
    """Low-memory mode moves each model to the GPU in an accelerate hook on its forward; the
    caching forwards call the models' blocks directly, so they must run that hook themselves."""
    from accelerate.hooks import ModelHook, add_hook_to_module

    engine = Engine(dataclasses.replace(settings, low_memory=True), device="cpu")
    seen = []

    class Record(ModelHook):
        def pre_forward(self, module, *args, **kwargs):
            seen.append(type(module).__name__)
            return args, kwargs

    add_hook_to_module(engine.base_pipeline().unet, Record())
    add_hook_to_module(engine.controlnet("canny"), Record())
    engine.generate("canny", astronaut, "a robot", cache_interval=3, **{**REQUEST, "steps": 4})
    # Every step: the UNet's caching forward; the ControlNet's own forward on the full steps
    # (0 and 3), its shallow branch on the others.
    assert seen.count("UNet2DConditionModel") == 4 and seen.count("ControlNetModel") == 4
