"""Inpainting: the engine's images are diffusers' `StableDiffusionControlNetInpaintPipeline`'s (a
4-channel UNet) on the same weights, seeds and settings; with `keep_unmasked` every pixel outside
the blurred mask is the original's; the mask is read, fitted, blurred and checked as documented;
the inpaint ControlNet's hook gets the initial image with the masked pixels at -1."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from start_image import NEGATIVE_PROMPT, PROMPT, SIZE, reference_pipeline

from errors import InvalidImageError, InvalidRequestError
from pipelines.loop import img2img
from pipelines.request import GenerationRequest
from testkit.tolerances import ROUNDING_LEVELS, assert_levels_within


def options(**overrides):
    return {
        "negative_prompt": NEGATIVE_PROMPT,
        "image_resolution": SIZE,
        "steps": 6,
        "seed": 21,
        "guidance_scale": 7.0,
        "keep_unmasked": False,  # diffusers does not paste back
        **overrides,
    }


def build(engine, image, mask, **given) -> GenerationRequest:
    return GenerationRequest.build(
        engine.settings, "canny", image, PROMPT, mask=mask, **options(**given)
    )


def diffusers_images(engine, request: GenerationRequest, control_map: np.ndarray, seeds):
    """diffusers' ControlNet inpaint pipeline on the engine's models, given the engine's initial
    image, its thresholded mask and its control map at the output size: uint8 images."""
    from diffusers import StableDiffusionControlNetInpaintPipeline

    unit = request.units[0]
    theirs = reference_pipeline(
        StableDiffusionControlNetInpaintPipeline,
        engine,
        request.units[0].controlnet_role,
        request.scheduler,
    )
    height, width = request.size
    images = []
    for seed in seeds:  # one image per call: diffusers shares the first generator's latents
        output = theirs(
            prompt=request.full_prompt,
            negative_prompt=request.negative_prompt,
            image=Image.fromarray(request.start_image),
            mask_image=Image.fromarray(request.repainted.astype(np.uint8) * 255),
            control_image=Image.fromarray(control_map),
            height=height,
            width=width,
            strength=request.denoising_strength,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance_scale,
            eta=request.eta,
            generator=[torch.Generator().manual_seed(seed)],
            controlnet_conditioning_scale=unit.strength,
            control_guidance_start=unit.control_start,
            control_guidance_end=unit.control_end,
            output_type="np",
        )
        images.append((output.images[0] * 255).round().astype(np.uint8))
    return images


def mean_levels(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


@pytest.mark.parametrize("strength", [1.0, 0.75])
@pytest.mark.parametrize(("sampler", "eta"), [("UniPC", 0.0), ("DDIM", 0.0), ("Euler a", 0.0)])
def test_the_images_are_diffusers_inpaint_pipelines(
    small_engine, photo, mask, sampler, eta, strength
):
    """Inpainting runs the sampler's own steps, in diffusers' order: the same bits."""
    request = build(
        small_engine, photo, mask, scheduler=sampler, eta=eta, denoising_strength=strength
    )
    assert request.steps_run == int(6 * strength)
    result = small_engine.run(request)
    theirs = diffusers_images(small_engine, request, result.control_map, result.seeds)
    np.testing.assert_array_equal(result.images[0], theirs[0], err_msg=f"{sampler} {strength}")
    assert result.images[0].std() > 1


def test_several_images_each_as_it_would_alone(small_engine, photo, mask):
    """Image i draws from seed + i as it would alone (diffusers' pipeline would encode the image
    once, with the first generator): each equals diffusers' single-image run of its seed."""
    request = build(small_engine, photo, mask, num_images=2, denoising_strength=0.75)
    result = small_engine.run(request)
    theirs = diffusers_images(small_engine, request, result.control_map, result.seeds)
    for index, (mine, their) in enumerate(zip(result.images, theirs, strict=True)):
        assert_levels_within(mine, their, ROUNDING_LEVELS, f"inpaint batch image {index}")
    assert mean_levels(result.images[0], result.images[1]) > 1


def test_keep_unmasked_keeps_every_pixel_outside_the_blurred_mask(small_engine, photo, mask):
    blur = 4
    kept = small_engine.generate(
        "canny", photo, PROMPT, mask=mask, **options(keep_unmasked=True, mask_blur=blur)
    ).images[0]
    # The blur reaches 2 * int(2.5 * blur + 0.5) + 1 = 21 pixels across: 10 around the rectangle.
    reach = int(2.5 * blur + 0.5)
    outside = np.ones(mask.shape, bool)
    outside[40 - reach : 88 + reach, 60 - reach : 140 + reach] = False
    np.testing.assert_array_equal(kept[outside], photo[outside])
    inside = np.zeros(mask.shape, bool)
    inside[40 + reach : 88 - reach, 60 + reach : 140 - reach] = True
    assert mean_levels(kept[inside], photo[inside]) > 5  # repainted
    # Without it the kept area comes back through the VAE: not the original pixels.
    decoded = small_engine.generate(
        "canny", photo, PROMPT, mask=mask, **options(keep_unmasked=False, mask_blur=blur)
    ).images[0]
    assert mean_levels(decoded[outside], photo[outside]) > 5
    # Inside the mask, past the blur band, both are the generated pixels.
    np.testing.assert_array_equal(kept[inside], decoded[inside])


def at_output_size(engine, photo, **given) -> GenerationRequest:
    return GenerationRequest.build(engine.settings, "canny", photo, image_resolution=SIZE, **given)


def test_the_mask_is_blurred_as_automatic1111_does_and_thresholded(small_engine, photo, mask):
    request = at_output_size(small_engine, photo, mask=mask, mask_blur=4)
    assert request.mask.shape == (128, 192) and request.mask.dtype == np.uint8
    assert 0 < request.mask[40, 100] < 255  # the edge is blurred
    assert request.mask[64, 100] == 255 and request.mask[5, 5] == 0
    sharp = at_output_size(small_engine, photo, mask=mask, mask_blur=0)
    np.testing.assert_array_equal(sharp.mask, mask)
    np.testing.assert_array_equal(request.repainted, request.mask > 127)
    # Half way up the blur, the thresholded edge stays where the drawn one was.
    assert np.abs(request.repainted.astype(int) - (mask > 127)).sum() < 0.02 * mask.size


@pytest.mark.parametrize("mode", ["L", "1", "RGB", "I;16"])
def test_a_mask_in_any_mode_means_the_same(small_engine, photo, mask, mode):
    picture = Image.fromarray(mask)
    if mode == "I;16":
        picture = Image.fromarray((mask.astype(np.uint16) * 257), mode="I;16")
    else:
        picture = picture.convert(mode)
    request = at_output_size(small_engine, photo, mask=picture, mask_blur=0)
    np.testing.assert_array_equal(request.repainted, mask > 127)


@pytest.mark.parametrize("resize_mode", ["just_resize", "crop_and_resize", "resize_and_fill"])
def test_the_mask_is_fitted_like_the_image(settings, resize_mode):
    """A photo whose white half is its own mask: after fitting to another aspect, the mask still
    covers exactly the white pixels of the initial image."""
    image = np.zeros((300, 200, 3), np.uint8)
    image[:, 100:] = 255
    request = GenerationRequest.build(
        settings, "canny", image, mask=image, mask_blur=0, aspect_ratio="16:9",
        resize_mode=resize_mode, image_resolution=256, denoising_strength=0.5,
    )  # fmt: skip
    assert request.start_image.shape[:2] == request.mask.shape == (256, 448)
    np.testing.assert_array_equal(request.repainted, request.start_image[..., 0] > 127)


def test_refusals_say_what_to_do(settings, photo, mask, tmp_path):
    with pytest.raises(
        InvalidImageError, match=r"The mask is 96x64 pixels but the image is 192x128"
    ):
        GenerationRequest.build(settings, "canny", photo, mask=mask[::2, ::2])
    other = np.zeros((64, 96, 3), np.uint8)
    with pytest.raises(InvalidImageError, match=r"but the initial image is 96x64"):
        GenerationRequest.build(settings, "canny", photo, init_image=other, mask=mask)
    with pytest.raises(InvalidRequestError, match="The mask marks nothing to repaint"):
        GenerationRequest.build(settings, "canny", photo, mask=np.zeros_like(mask))
    thin = np.zeros_like(mask)
    thin[64, 10:180] = 255  # one pixel high: blurred by 8 it is nowhere above mid-grey
    with pytest.raises(InvalidRequestError, match="after its blur"):
        GenerationRequest.build(settings, "canny", photo, mask=thin, mask_blur=8)
    assert GenerationRequest.build(settings, "canny", photo, mask=thin, mask_blur=0).mask.any()
    broken = tmp_path / "mask.png"
    broken.write_bytes(b"no image")
    with pytest.raises(InvalidImageError, match="Could not read the file as an image"):
        GenerationRequest.build(settings, "canny", photo, mask=str(broken))
    with pytest.raises(InvalidRequestError, match="`mask_blur` must be between 0 and 64"):
        GenerationRequest.build(settings, "canny", photo, mask=mask, mask_blur=65)


def test_the_inpaint_controlnet_gets_the_image_with_the_masked_pixels_at_minus_one(
    small_engine, photo, mask, monkeypatch
):
    """The hook for v1.1's inpaint ControlNet, tried on the canny role."""
    monkeypatch.setattr(img2img, "MASKED_IMAGE_ROLES", frozenset({"canny"}))
    seen = []

    def record(module, args, kwargs):
        seen.append(kwargs["controlnet_cond"][:1].clone())

    controlnet = small_engine.controlnet("canny")
    hook = controlnet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        request = build(small_engine, photo, mask, denoising_strength=0.75, mask_blur=2)
        small_engine.run(request)
    finally:
        hook.remove()
    expected = torch.from_numpy(photo.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    expected[:, :, torch.from_numpy(request.repainted)] = -1.0
    assert seen and all(torch.equal(cond, expected) for cond in seen)


def test_the_parameters_record_the_mask_and_restore_it(small_engine, photo, mask):
    from png_info import (
        a1111_infotext,
        compose_restore_values,
        png_bytes_with_parameters,
        read_parameters,
        restore_values,
    )

    result = small_engine.generate(
        "canny", photo, PROMPT, mask=mask, **options(denoising_strength=0.5, mask_blur=6)
    )
    parameters = read_parameters(png_bytes_with_parameters(result.images[0], result.parameters[0]))
    assert parameters == json.loads(json.dumps(result.parameters[0]))
    assert parameters["mask_source"] == "uploaded"
    assert parameters["init_image_source"] == "control_image"
    assert parameters["steps_run"] == 3 and parameters["steps"] == 6
    restored = restore_values(parameters)
    assert restored["denoising_strength"] == 0.5 and restored["mask_blur"] == 6
    assert restored["keep_unmasked"] is False and restored["mask_source"] == "uploaded"
    assert compose_restore_values(parameters, 2)["mask_source"] == "uploaded"
    assert "Denoising strength: 0.5, Mask blur: 6" in a1111_infotext(parameters)


def test_a_composition_inpaints_too(small_engine, photo, mask):
    units = [{"condition": "canny", "image": photo}, {"condition": "depth", "strength": 0.5}]
    result = small_engine.compose(units, PROMPT, mask=mask, **options(keep_unmasked=True))
    assert result.parameters[0]["mask_source"] == "uploaded"
    outside = np.ones(mask.shape, bool)
    outside[30:98, 50:150] = False
    np.testing.assert_array_equal(result.images[0][outside], photo[outside])
