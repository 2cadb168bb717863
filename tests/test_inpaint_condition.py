"""The v1.1 inpaint ControlNet as a condition of its own (role and condition `inpaint`): its control
image is the initial image with the pixels the (blurred, thresholded) mask repaints at -1, as
diffusers' `StableDiffusionControlNetInpaintPipeline` takes it; a request without a mask is refused;
it runs at any denoising strength, alone and composed, and downloads as the other ControlNets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from start_image import NEGATIVE_PROMPT, PROMPT, SIZE, reference_pipeline

import download
from availability import ROLE_WORDS, condition_status
from conditions import CONDITIONS
from errors import InvalidRequestError
from pipelines.loop import img2img
from pipelines.request import GenerationRequest
from settings import DEFAULT_MODEL_IDS, V10_MODEL_IDS, Settings
from testkit.models_dir import ADDED_ROLES, RECORDED_ROLES, controlnet_roles

INPAINT_ID = "lllyasviel/control_v11p_sd15_inpaint"


def options(**overrides):
    return {
        "negative_prompt": NEGATIVE_PROMPT,
        "image_resolution": SIZE,
        "steps": 4,
        "seed": 11,
        "guidance_scale": 7.0,
        "keep_unmasked": False,
        **overrides,
    }


def expected_control(request: GenerationRequest) -> torch.Tensor:
    expected = torch.from_numpy(request.start_image.astype(np.float32) / 255.0).permute(2, 0, 1)
    expected = expected[None].clone()
    expected[:, :, torch.from_numpy(request.repainted)] = -1.0
    return expected


def recorded_conds(engine, role: str, run):
    seen = []

    def record(module, args, kwargs):
        seen.append(kwargs["controlnet_cond"][:1].clone())

    hook = engine.controlnet(role).register_forward_pre_hook(record, with_kwargs=True)
    try:
        result = run()
    finally:
        hook.remove()
    return seen, result


# ---- the condition, its model, its download ------------------------------------------------------
def test_inpaint_is_a_condition_with_its_own_role():
    condition = CONDITIONS["inpaint"]
    assert (condition.label, condition.controlnet_role, condition.annotators) == (
        "Inpaint",
        "inpaint",
        ("none",),
    )
    assert "mask" in condition.description
    assert DEFAULT_MODEL_IDS["inpaint"] == INPAINT_ID and "inpaint" not in V10_MODEL_IDS
    assert "inpaint" in img2img.MASKED_IMAGE_ROLES
    # The tests' MODELS_DIR seeds it after every earlier role: theirs keep their weights.
    roles = controlnet_roles()
    later = ADDED_ROLES[ADDED_ROLES.index("inpaint") + 1 :]  # roles added after it
    assert roles[: len(RECORDED_ROLES)] == list(RECORDED_ROLES)
    assert roles[-1 - len(later)] == "inpaint" and ADDED_ROLES[0] == "inpaint"


def test_inpaint_downloads_as_a_diffusers_controlnet():
    assert download.rule_for("inpaint") == download.CONTROLNET_RULE
    assert download.rule_for("inpaint", "fp16") == download.HALF_CONTROLNET_RULE
    assert "inpaint" in download.ROLES
    assert set(download.plan_repos(["inpaint"], DEFAULT_MODEL_IDS, family="v10")) == {INPAINT_ID}


def test_availability_names_the_inpaint_controlnet(models_dir, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert condition_status(CONDITIONS["inpaint"], Settings(models_dir=models_dir)).ready
    copy = tmp_path / "models"
    shutil.copytree(models_dir / DEFAULT_MODEL_IDS["base"], copy / DEFAULT_MODEL_IDS["base"])
    status = condition_status(CONDITIONS["inpaint"], Settings(models_dir=copy))
    assert [(need.role, need.model_id) for need in status.run_missing] == [("inpaint", INPAINT_ID)]
    assert ROLE_WORDS["inpaint"] in status.run_missing[0].words


# ---- the request ---------------------------------------------------------------------------------
def test_a_request_without_a_mask_is_refused(settings, photo, mask):
    with pytest.raises(InvalidRequestError, match="Inpaint needs a mask: paint over the area"):
        GenerationRequest.build(settings, "inpaint", photo, PROMPT)
    with pytest.raises(InvalidRequestError, match="Inpaint needs a mask"):
        GenerationRequest.build(settings, "inpaint", photo, PROMPT, denoising_strength=0.5)
    with pytest.raises(InvalidRequestError, match="Inpaint needs a mask"):
        GenerationRequest.composed(
            settings, [{"condition": "canny", "image": photo}, {"condition": "inpaint"}], PROMPT
        )
    # A composition without an inpaint unit needs none; with a mask it runs.
    GenerationRequest.composed(settings, [{"condition": "canny", "image": photo}], PROMPT)
    assert GenerationRequest.build(settings, "inpaint", photo, mask=mask).mask is not None


# ---- the control image and the images ------------------------------------------------------------
@pytest.mark.parametrize("strength", [1.0, 0.75])
def test_the_control_tensor_is_the_image_at_minus_one_where_the_mask_repaints(
    small_engine, photo, mask, strength
):
    request = GenerationRequest.build(
        small_engine.settings, "inpaint", photo, PROMPT, mask=mask,
        **options(denoising_strength=strength, mask_blur=3),
    )  # fmt: skip
    seen, result = recorded_conds(small_engine, "inpaint", lambda: small_engine.run(request))
    expected = expected_control(request)
    assert seen and all(torch.equal(cond, expected) for cond in seen)
    assert (expected == -1).any() and (expected >= 0).any()
    # The page's map is the photo itself (annotator none).
    np.testing.assert_array_equal(result.control_map, photo)
    assert result.images[0].shape == (128, 192, 3) and result.images[0].std() > 1
    assert result.parameters[0]["units"][0]["model_id"] == INPAINT_ID


def test_keep_unmasked_keeps_the_original_outside(small_engine, photo, mask):
    blur = 4
    result = small_engine.generate(
        "inpaint", photo, PROMPT, mask=mask, **options(keep_unmasked=True, mask_blur=blur)
    )
    reach = int(2.5 * blur + 0.5)
    outside = np.ones(mask.shape, bool)
    outside[40 - reach : 88 + reach, 60 - reach : 140 + reach] = False
    np.testing.assert_array_equal(result.images[0][outside], photo[outside])
    inside = np.zeros(mask.shape, bool)
    inside[40 + reach : 88 - reach, 60 + reach : 140 - reach] = True
    assert np.abs(result.images[0][inside].astype(int) - photo[inside]).mean() > 5


def test_canny_and_inpaint_compose(small_engine, photo, mask):
    units = [{"condition": "canny", "image": photo}, {"condition": "inpaint", "strength": 0.8}]
    request = GenerationRequest.composed(
        small_engine.settings, units, PROMPT, mask=mask, **options(denoising_strength=0.75)
    )
    seen, result = recorded_conds(small_engine, "inpaint", lambda: small_engine.run(request))
    assert seen and all(torch.equal(cond, expected_control(request)) for cond in seen)
    assert [unit["model_id"] for unit in result.parameters[0]["units"]] == [
        DEFAULT_MODEL_IDS["canny"],
        INPAINT_ID,
    ]
    assert len(result.control_maps) == 2 and len(result.images) == 1


def test_the_images_are_diffusers_inpaint_pipelines_fed_the_minus_one_image(
    small_engine, photo, mask
):
    from diffusers import StableDiffusionControlNetInpaintPipeline

    request = GenerationRequest.build(
        small_engine.settings, "inpaint", photo, PROMPT, mask=mask,
        **options(scheduler="DDIM", denoising_strength=0.75),
    )  # fmt: skip
    result = small_engine.run(request)
    unit = request.units[0]
    theirs = reference_pipeline(
        StableDiffusionControlNetInpaintPipeline, small_engine, "inpaint", request.scheduler
    )
    height, width = request.size
    output = theirs(
        prompt=request.full_prompt,
        negative_prompt=request.negative_prompt,
        image=Image.fromarray(request.start_image),
        mask_image=Image.fromarray(request.repainted.astype(np.uint8) * 255),
        control_image=expected_control(request),  # the -1 image, as the model was trained
        height=height,
        width=width,
        strength=request.denoising_strength,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance_scale,
        eta=request.eta,
        generator=[torch.Generator().manual_seed(result.seeds[0])],
        controlnet_conditioning_scale=unit.strength,
        control_guidance_start=unit.control_start,
        control_guidance_end=unit.control_end,
        output_type="np",
    )
    their_image = (output.images[0] * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(result.images[0], their_image)
