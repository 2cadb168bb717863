"""Image to image: the engine's images are diffusers' `StableDiffusionControlNetImg2ImgPipeline`'s
on the same weights, seeds and settings, for every sampler the app offers; strength 1 is text to
image, unchanged; the schedule, the control window, the steps shown and the limits follow the
steps actually run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from start_image import NEGATIVE_PROMPT, PROMPT, SIZE, reference_pipeline

from errors import InvalidImageError, InvalidRequestError
from pipelines.loop import step_plan
from pipelines.loop.schedulers import SCHEDULERS, start_index
from pipelines.request import GenerationRequest
from testkit.tolerances import ROUNDING_LEVELS, assert_levels_within

GUIDANCE = 7.0
# Every sampler the page offers, DDIM also with eta (its noise comes from the same generators).
SAMPLERS = [(name, 0.0) for name in SCHEDULERS] + [("DDIM", 0.5)]


def options(**overrides):
    return {
        "negative_prompt": NEGATIVE_PROMPT,
        "image_resolution": SIZE,
        "steps": 6,
        "seed": 11,
        "guidance_scale": GUIDANCE,
        "num_images": 2,
        **overrides,
    }


def build(engine, image, **given) -> GenerationRequest:
    return GenerationRequest.build(engine.settings, "canny", image, PROMPT, **options(**given))


def diffusers_images(engine, request: GenerationRequest, control_map: np.ndarray, seeds):
    """diffusers' ControlNet img2img pipeline on the engine's own loaded models, given the
    engine's control map and initial image at the output size: uint8 images."""
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    unit = request.units[0]
    theirs = reference_pipeline(
        StableDiffusionControlNetImg2ImgPipeline,
        engine,
        request.units[0].controlnet_role,
        request.scheduler,
    )
    height, width = request.size
    output = theirs(
        prompt=request.full_prompt,
        negative_prompt=request.negative_prompt,
        image=Image.fromarray(request.start_image),
        control_image=Image.fromarray(control_map),
        height=height,
        width=width,
        strength=request.denoising_strength,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance_scale,
        eta=request.eta,
        generator=[torch.Generator().manual_seed(seed) for seed in seeds],
        num_images_per_prompt=request.num_images,
        controlnet_conditioning_scale=unit.strength,
        control_guidance_start=unit.control_start,
        control_guidance_end=unit.control_end,
        output_type="np",
    )
    return list((output.images * 255).round().astype(np.uint8))


def assert_same_images(mine, theirs, label: str, exact: bool) -> None:
    assert len(mine) == len(theirs)
    for index, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        if exact:
            np.testing.assert_array_equal(a, b, err_msg=f"{label}: image {index}")
        else:
            assert_levels_within(a, b, ROUNDING_LEVELS, f"{label}: image {index}")


@pytest.mark.parametrize("strength", [0.5, 0.75])
@pytest.mark.parametrize(("sampler", "eta"), SAMPLERS)
def test_the_images_are_diffusers_img2img_pipelines(small_engine, coffee, sampler, eta, strength):
    """The default path (planned sampler steps) within float32 rounding of diffusers' own loop:
    at most ROUNDING_LEVELS per pixel (testkit.tolerances), where a wrong schedule, a noise drawn
    in another order or an unscaled latent moves most pixels by many levels."""
    request = build(small_engine, coffee, scheduler=sampler, eta=eta, denoising_strength=strength)
    assert request.steps_run == int(6 * strength) and request.start_image.shape == (128, 192, 3)
    result = small_engine.run(request)
    theirs = diffusers_images(small_engine, request, result.control_map, result.seeds)
    assert_same_images(result.images, theirs, f"img2img {sampler} eta {eta} at {strength}", False)
    assert all(image.std() > 1 for image in result.images)  # not a flat image
    assert np.abs(result.images[0].astype(int) - result.images[1]).mean() > 1  # seed + 1


@pytest.mark.parametrize(("sampler", "eta"), [("UniPC", 0.0), ("Euler a", 0.0), ("DDIM", 0.5)])
def test_with_the_samplers_own_steps_the_images_are_diffusers_bit_for_bit(
    small_engine, coffee, monkeypatch, sampler, eta
):
    """Without the plans the engine runs diffusers' own operations in diffusers' order: the same
    bits (so the semantics, the draws included, are exactly the pipeline's)."""
    monkeypatch.setattr(step_plan, "plan_for", lambda *args, **kwargs: None)
    request = build(small_engine, coffee, scheduler=sampler, eta=eta, denoising_strength=0.6)
    result = small_engine.run(request)
    theirs = diffusers_images(small_engine, request, result.control_map, result.seeds)
    assert_same_images(result.images, theirs, f"img2img {sampler} own steps", True)


def test_an_initial_image_of_its_own_is_fitted_to_the_output_and_used(small_engine, coffee):
    flipped = np.ascontiguousarray(coffee[::-1])  # the same size, other pixels
    request = build(small_engine, coffee, init_image=flipped, denoising_strength=0.5)
    assert request.init_image_source == "uploaded"
    own = build(small_engine, coffee, denoising_strength=0.5)
    assert own.init_image_source == "control_image"
    # The initial image is fitted like the control map: crop_and_resize crops 400x600 to 2:3.
    assert request.start_image.shape == own.start_image.shape == (128, 192, 3)
    np.testing.assert_array_equal(request.start_image, own.start_image[::-1])
    result = small_engine.run(request)
    theirs = diffusers_images(small_engine, request, result.control_map, result.seeds)
    assert_same_images(result.images, theirs, "img2img own initial image", False)
    other = small_engine.run(own).images[0]
    assert np.abs(other.astype(int) - result.images[0]).mean() > 1


def test_strength_one_is_text_to_image_unchanged(small_engine, coffee, astronaut):
    plain = small_engine.generate("canny", coffee, PROMPT, **options())
    at_one = small_engine.generate(
        "canny", coffee, PROMPT, init_image=astronaut, **options(denoising_strength=1.0)
    )
    assert_same_images(at_one.images, plain.images, "strength 1", True)
    assert at_one.parameters == plain.parameters  # nothing about an initial image recorded
    assert not at_one.warnings
    request = build(small_engine, coffee, init_image=astronaut)
    assert request.start_image is None and request.steps_run == 6


def test_a_lower_strength_keeps_more_of_the_initial_image(small_engine, astronaut):
    """The further from noise a run starts, the closer its image stays to the initial one."""
    blank = np.full_like(astronaut, 200)
    distances = []
    for strength in (0.3, 0.6, 1.0):
        image = small_engine.generate(
            "canny", astronaut, PROMPT, init_image=blank,
            **options(denoising_strength=strength, steps=10, num_images=1),
        ).images[0]  # fmt: skip
        distances.append(float(np.abs(image.astype(int) - 200).mean()))
    assert distances[0] < distances[1] < distances[2], distances


def test_the_schedule_starts_where_diffusers_get_timesteps_does():
    assert [start_index(10, s) for s in (1.0, 0.75, 0.5, 0.25, 0.09)] == [0, 3, 5, 8, 10]
    assert start_index(20, 0.99) == 1 and start_index(3, 0.5) == 2


def test_progress_previews_window_and_parameters_follow_the_steps_run(
    small_engine, coffee, monkeypatch
):
    seen, calls = [], []
    request = build(
        small_engine, coffee, steps=10, denoising_strength=0.5, num_images=1,
        control_start=0.2, control_end=0.6,
    )  # fmt: skip
    assert request.steps_run == 5
    controlnet = small_engine.controlnet("canny")
    hook = controlnet.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        result = small_engine.run(request, on_progress=lambda step, total: seen.append(total))
    finally:
        hook.remove()
    assert seen == [5] * 5
    # The window is a fraction of the 5 steps run: steps 1 and 2 (0.2 <= i/5, (i+1)/5 <= 0.6).
    assert len(calls) == 2
    theirs = diffusers_images(small_engine, request, result.control_map, result.seeds)
    assert_same_images(result.images, theirs, "img2img control window", False)
    parameters = result.parameters[0]
    assert parameters["steps"] == 10 and parameters["steps_run"] == 5
    assert parameters["denoising_strength"] == 0.5
    assert parameters["init_image_source"] == "control_image"
    assert "mask_source" not in parameters and "mask_blur" not in parameters
    assert small_engine.last_timing.steps == 5
    assert small_engine._generate_seconds(request) == small_engine._generate_seconds(
        build(small_engine, coffee, steps=5, num_images=1)
    )  # ZeroGPU asks for the steps run


def test_the_control_modes_act_on_the_shorter_run(small_engine, coffee):
    seen = []

    def record(module, args, kwargs):
        seen.append(kwargs["down_block_additional_residuals"])

    hook = small_engine.base_pipeline().unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        small_engine.generate(
            "canny", coffee, PROMPT, **options(denoising_strength=0.5, control_mode="controlnet")
        )
    finally:
        hook.remove()
    assert len(seen) == 3
    for residuals in seen:  # the conditional branch only, as in text to image
        for residual in residuals:
            uncond, cond = residual.chunk(2)
            assert uncond.abs().max() == 0 and cond.abs().max() > 0


def test_a_run_again_gives_the_same_images_and_image_i_is_seed_plus_i(small_engine, coffee):
    both = small_engine.generate("canny", coffee, PROMPT, **options(denoising_strength=0.5))
    again = small_engine.generate("canny", coffee, PROMPT, **options(denoising_strength=0.5))
    second = small_engine.generate(
        "canny", coffee, PROMPT, **options(denoising_strength=0.5, seed=12, num_images=1)
    )
    assert_same_images(again.images, both.images, "again", True)
    # Alone, the batch's sums round another way: within rounding, where another seed is not.
    assert_same_images(second.images, both.images[1:], "image 2 alone", False)


def test_a_composition_starts_from_its_first_units_image(small_engine, coffee, astronaut):
    units = [{"condition": "canny", "image": coffee}, {"condition": "depth", "image": astronaut}]
    request = GenerationRequest.composed(
        small_engine.settings, units, PROMPT, **options(denoising_strength=0.5)
    )
    alone = build(small_engine, coffee, denoising_strength=0.5)
    np.testing.assert_array_equal(request.start_image, alone.start_image)
    result = small_engine.compose(
        units, PROMPT, init_image=astronaut, **options(denoising_strength=0.5)
    )
    assert result.parameters[0]["init_image_source"] == "uploaded"
    assert len(result.images) == 2 and result.images[0].shape == (128, 192, 3)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"denoising_strength": 0}, "`denoising_strength` must be above 0"),
        ({"denoising_strength": 0.0}, "`denoising_strength` must be above 0"),
        ({"denoising_strength": 1.5}, "`denoising_strength` must be between 0 and 1, got 1.5"),
        ({"denoising_strength": -0.1}, "`denoising_strength` must be between 0 and 1"),
        ({"denoising_strength": float("nan")}, "`denoising_strength` must be between 0 and 1"),
        ({"denoising_strength": "much"}, "`denoising_strength` must be a number"),
        ({"denoising_strength": 0.1, "steps": 5}, "runs no step (int(5 x 0.1) = 0)"),
    ],
)
def test_strengths_outside_what_runs_are_refused(settings, coffee, given, message):
    with pytest.raises(InvalidRequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GenerationRequest.build(settings, "canny", coffee, PROMPT, **given)


def test_the_initial_image_is_read_with_the_upload_checks(settings, coffee, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(InvalidImageError, match="Could not read the file as an image"):
        GenerationRequest.build(
            settings, "canny", coffee, init_image=str(broken), denoising_strength=0.5
        )
    tiny = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(InvalidImageError, match="at least 8x8"):
        GenerationRequest.build(settings, "canny", coffee, init_image=tiny, denoising_strength=0.5)
    path = tmp_path / "init.png"
    Image.fromarray(coffee).save(path)
    request = GenerationRequest.build(
        settings, "canny", coffee, init_image=str(path), denoising_strength=0.5
    )
    assert request.init_image_source == "uploaded"


def test_the_parameters_restore_the_image_to_image_settings(small_engine, coffee):
    from png_info import png_bytes_with_parameters, read_parameters, restore_values

    result = small_engine.generate("canny", coffee, PROMPT, **options(denoising_strength=0.75))
    png = png_bytes_with_parameters(result.images[0], result.parameters[0])
    parameters = read_parameters(png)
    assert parameters == json.loads(json.dumps(result.parameters[0]))
    restored = restore_values(parameters)
    assert restored["denoising_strength"] == 0.75 and restored["steps"] == 6
    assert restored["init_image_source"] == "control_image"
    again = small_engine.generate(
        "canny", coffee, PROMPT,
        **{k: v for k, v in restored.items() if k in options() or k == "denoising_strength"},
        num_images=2,
    )  # fmt: skip
    assert_same_images(again.images, result.images, "restored", True)


def test_previews_and_feature_caching_run_on_the_shorter_schedule(engine, astronaut):
    """The session's engine has the TAESD preview decoder; 8 steps at 0.5 run 4."""
    previews = []
    common = {"image_resolution": 256, "steps": 8, "seed": 5, "denoising_strength": 0.5}
    exact = engine.generate(
        "canny", astronaut, PROMPT, **common,
        on_preview=lambda images, step, total: previews.append((step, total, images[0].shape)),
    )  # fmt: skip
    assert previews == [(1, 4, (256, 256, 3)), (2, 4, (256, 256, 3)), (3, 4, (256, 256, 3))]
    cached = engine.generate("canny", astronaut, PROMPT, **common, cache_interval=2)
    assert cached.parameters[0]["steps_run"] == 4 and cached.parameters[0]["cache_interval"] == 2
    difference = np.abs(cached.images[0].astype(int) - exact.images[0]).mean()
    assert 0 < difference < 20  # the shallow steps change the image a little, not wholly
