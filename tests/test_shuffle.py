"""Shuffle: content shuffle seeded by the request's seed (controlnet_aux's map for that seed), and
a ControlNet with `global_pool_conditions` whose pooled residuals steer the conditional branch
only, every depth alike, alone and in compositions, as diffusers runs it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from start_image import NEGATIVE_PROMPT, PROMPT, SIZE, reference_pipeline

from annotators.util import resize_image
from conditions import CONDITIONS
from testkit.tolerances import ROUNDING_LEVELS, assert_levels_within

OPTIONS = {
    "image_resolution": SIZE,
    "steps": 3,
    "seed": 5,
    "guidance_scale": 7.0,
    "negative_prompt": NEGATIVE_PROMPT,
}


def controlnet_aux_map(image: np.ndarray, seed: int, resolution: int) -> np.ndarray:
    """ContentShuffleDetector's map after np.random.seed(seed): shuffled at the annotator
    resolution 512, then resized to `resolution` (its short side) with INTER_LINEAR."""
    from controlnet_aux.shuffle import ContentShuffleDetector

    np.random.seed(seed)
    return ContentShuffleDetector()(
        image, detect_resolution=512, image_resolution=resolution, output_type="np"
    )


def test_the_map_is_controlnet_aux_content_shuffle_for_the_requests_seed(small_engine, coffee):
    result = small_engine.generate("shuffle", coffee, PROMPT, **OPTIONS)
    control_map = result.control_maps[0]
    assert control_map.shape == (128, 192, 3)
    np.testing.assert_array_equal(control_map, controlnet_aux_map(coffee, 5, SIZE))
    again = small_engine.generate("shuffle", coffee, PROMPT, **OPTIONS)
    np.testing.assert_array_equal(again.control_maps[0], control_map)  # the same seed: same map
    other = small_engine.generate("shuffle", coffee, PROMPT, **{**OPTIONS, "seed": 6})
    assert not np.array_equal(other.control_maps[0], control_map)
    # The photo's own colours, moved about: about the photo's mean brightness.
    shuffled = resize_image(coffee, 512)
    assert abs(float(shuffled.mean()) - float(control_map.mean())) < 0.1 * shuffled.mean()


def residuals_seen(engine, run) -> list:
    """The UNet's ControlNet residuals at each step while `run()` runs."""
    seen = []

    def record(module, args, kwargs):
        seen.append(kwargs["down_block_additional_residuals"])

    hook = engine.base_pipeline().unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        run()
    finally:
        hook.remove()
    return seen


@pytest.mark.parametrize("mode", ["balanced", "controlnet"])
def test_pooled_residuals_steer_the_conditional_branch_only_in_every_mode(
    small_engine, coffee, mode
):
    steps = residuals_seen(
        small_engine,
        lambda: small_engine.generate("shuffle", coffee, PROMPT, control_mode=mode, **OPTIONS),
    )
    assert len(steps) == OPTIONS["steps"]
    for residuals in steps:
        for residual in residuals:
            assert residual.shape[0] == 2 and residual.shape[-2:] == (1, 1)  # pooled
            assert not residual[0].any() and residual[1].any()  # [unconditional, conditional]


def test_composed_with_canny_the_pooled_unit_adds_a_constant_to_the_conditional_half(
    small_engine, coffee
):
    units = [{"condition": "canny", "image": coffee}, {"condition": "shuffle"}]
    alone = residuals_seen(
        small_engine, lambda: small_engine.generate("canny", coffee, PROMPT, **OPTIONS)
    )[0]
    composed = residuals_seen(small_engine, lambda: small_engine.compose(units, PROMPT, **OPTIONS))
    for canny, both in zip(alone, composed[0], strict=True):  # the first step: same latents
        assert both.shape == canny.shape  # the pooled residual broadcast over canny's pixels
        assert torch.equal(both[0], canny[0])  # the unconditional half: canny's alone
        added = both[1] - canny[1]
        spread = (added - added.mean(dim=(1, 2), keepdim=True)).abs().max()
        assert added.abs().max() > 0
        # One value per channel (float32 rounding of the sum aside).
        assert spread <= 1e-5 * (float(canny[1].abs().max()) + float(added.abs().max()))


def test_the_images_are_diffusers_controlnet_pipelines_with_the_shuffle_model(small_engine, coffee):
    """diffusers' ControlNet pipeline forces guess mode for a global-pooling model: its images on
    the same weights, seeds and map, within float32 rounding (testkit.tolerances)."""
    from diffusers import StableDiffusionControlNetPipeline

    result = small_engine.generate("shuffle", coffee, PROMPT, num_images=2, **OPTIONS)
    theirs = reference_pipeline(StableDiffusionControlNetPipeline, small_engine, "shuffle", "UniPC")
    assert theirs.controlnet.config.global_pool_conditions
    height, width = result.images[0].shape[:2]
    output = theirs(
        prompt=f"{PROMPT}, best quality, extremely detailed",
        negative_prompt=NEGATIVE_PROMPT,
        image=Image.fromarray(result.control_maps[0]),
        height=height,
        width=width,
        num_inference_steps=OPTIONS["steps"],
        guidance_scale=OPTIONS["guidance_scale"],
        generator=[torch.Generator().manual_seed(seed) for seed in result.seeds],
        num_images_per_prompt=2,
        output_type="np",
    )
    images = (output.images * 255).round().astype(np.uint8)
    for index, (mine, reference) in enumerate(zip(result.images, images, strict=True)):
        assert_levels_within(mine, reference, ROUNDING_LEVELS, f"shuffle image {index}")


def test_feature_caching_pools_the_shallow_steps_too(small_engine, coffee, monkeypatch):
    from pipelines.loop import denoise

    shallow_steps = []
    real = denoise.control_residuals

    def recording(units, latents, timestep, embeddings, mode, gamma, shallow=None):
        residuals = real(units, latents, timestep, embeddings, mode, gamma, shallow)
        if shallow is not None and units:
            shallow_steps.append(residuals[0])
        return residuals

    monkeypatch.setattr(denoise, "control_residuals", recording)
    small_engine.generate("shuffle", coffee, PROMPT, cache_interval=2, **OPTIONS)
    assert len(shallow_steps) == 1  # steps 0 and 2 are full ones, step 1 shallow
    assert all(residual.shape[-2:] == (1, 1) for residual in shallow_steps[0])


def test_shuffle_has_no_v10_model_and_says_so(small_engine, coffee):
    result = small_engine.generate("shuffle", coffee, PROMPT, controlnet_version="v1.0", **OPTIONS)
    label = CONDITIONS["shuffle"].label
    assert any(f"{label} has no v1.0 ControlNet" in warning for warning in result.warnings)
