"""The engine on tiny SD1.5 + ControlNet models, loaded from MODELS_DIR by the app's own code."""

from __future__ import annotations

import time

import numpy as np
import pytest

from conditions import CONDITIONS
from errors import InvalidRequestError, ModelUnavailableError
from pipelines.loop.schedulers import SCHEDULERS
from settings import DEFAULT_MODEL_IDS, Settings

FAST = {"steps": 2, "image_resolution": 256}


def run(engine, image, **options):
    return engine.generate("canny", image, "a photo", **{**FAST, "seed": 7, **options})


def differs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_generates_images_with_the_control_map_first(engine, coffee):
    result = run(engine, coffee, num_images=3)
    assert result.control_map.shape == (256, 384, 3)  # 400 x 600 photo, short side 256
    assert len(result.images) == 3
    for image in result.images:
        assert image.shape == (256, 384, 3) and image.dtype == np.uint8
    assert differs(result.images[0], result.images[1]) > 1  # each image has its own noise
    assert result.seed == 7


def test_same_seed_same_pixels_other_seed_other_pixels(engine, astronaut):
    first = run(engine, astronaut, seed=1234).images[0]
    again = run(engine, astronaut, seed=1234).images[0]
    other = run(engine, astronaut, seed=1235).images[0]
    np.testing.assert_array_equal(first, again)
    assert differs(first, other) > 1


def test_random_seed_is_returned_and_reproduces(engine, astronaut):
    result = run(engine, astronaut, seed=-1)
    assert 0 <= result.seed <= 2**31 - 1
    replay = run(engine, astronaut, seed=result.seed)
    np.testing.assert_array_equal(result.images[0], replay.images[0])


def test_strength_zero_makes_output_independent_of_the_control(engine, astronaut):
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    uncontrolled = [run(engine, image, strength=0.0).images[0] for image in (astronaut, flipped)]
    np.testing.assert_array_equal(uncontrolled[0], uncontrolled[1])
    controlled = [run(engine, image, strength=1.0).images[0] for image in (astronaut, flipped)]
    assert differs(controlled[0], controlled[1]) > 0.5


def test_control_modes_and_gamma_change_the_output(engine, astronaut):
    images = {
        mode: run(engine, astronaut, control_mode=mode, strength=2.0).images[0]
        for mode in ("balanced", "prompt", "controlnet")
    }
    assert differs(images["balanced"], images["prompt"]) > 0.5
    assert differs(images["prompt"], images["controlnet"]) > 0.5
    flat = run(engine, astronaut, control_mode="controlnet", strength=2.0, resolution_weighting=0)
    assert differs(flat.images[0], images["controlnet"]) > 0.5
    # Balanced ignores gamma: uniform weights whatever the slider says.
    balanced = run(engine, astronaut, control_mode="balanced", strength=2.0, resolution_weighting=2)
    np.testing.assert_array_equal(balanced.images[0], images["balanced"])


def test_controlnet_mode_adds_control_to_the_conditional_branch_only(engine, astronaut):
    seen = []

    def record(module, args, kwargs):
        seen.append(kwargs["down_block_additional_residuals"])

    hook = engine.base_pipeline().unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        run(engine, astronaut, control_mode="controlnet", steps=1)
        run(engine, astronaut, control_mode="balanced", steps=1)
    finally:
        hook.remove()
    conditional_only, balanced = seen
    for residual in conditional_only:
        uncond, cond = residual.chunk(2)
        assert uncond.abs().max() == 0 and cond.abs().max() > 0
    assert all(residual.chunk(2)[0].abs().max() > 0 for residual in balanced)


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_every_scheduler_runs(engine, astronaut, scheduler):
    result = run(engine, astronaut, scheduler=scheduler, steps=3, eta=0.5)
    assert result.images[0].std() > 1  # not a flat image


def test_ddim_eta_changes_the_output(engine, astronaut):
    deterministic = run(engine, astronaut, scheduler="DDIM", steps=3, eta=0.0).images[0]
    stochastic = run(engine, astronaut, scheduler="DDIM", steps=3, eta=1.0).images[0]
    assert differs(deterministic, stochastic) > 0.5


def test_a_long_prompt_is_read_whole_without_a_warning(engine, astronaut):
    long_prompt = "a house " * 40  # 320 tokens for the tiny models' byte-level tokenizer
    result = engine.generate("canny", astronaut, long_prompt, **FAST, seed=1)
    assert not result.warnings
    cut = engine.generate("canny", astronaut, long_prompt[:60], **FAST, seed=1)
    assert not np.array_equal(result.images[0], cut.images[0])  # its later chunks count


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"steps": 10**6}, "`steps` must be between 1 and 100"),
        ({"num_images": 13}, "`num_images` must be between 1 and 12"),
        ({"image_resolution": 4096}, "`image_resolution` must be between 256 and 768"),
        ({"strength": float("nan")}, "`strength` must be between 0 and 2"),
        ({"guidance_scale": "high"}, "`guidance_scale` must be a number"),
        ({"steps": 2.5}, "`steps` must be a whole number"),
        ({"scheduler": "LMS"}, "Unknown scheduler 'LMS'"),
        ({"control_mode": "guess"}, "Unknown control mode 'guess'"),
        ({"annotator": "hed"}, "has no annotator 'hed'"),
        ({"blur": 3}, "Unknown parameter"),
        ({"low_threshold": 999}, "`low_threshold` must be between 1 and 255"),
    ],
)
def test_bad_parameters_are_refused_at_once(engine, astronaut, options, message):
    started = time.perf_counter()
    with pytest.raises(InvalidRequestError, match=message.replace("(", r"\(")):
        engine.generate("canny", astronaut, "a photo", **options)
    assert time.perf_counter() - started < 1.0


# Each tab's own annotator where the tests provide its weights (NormalBAE's full-size weights are
# built by its own test; "openpose" without weights falls back to MediaPipe, with a notice).
END_TO_END = [
    (name, condition.annotators[0] if name != "normal" else "normal_midas")
    for name, condition in CONDITIONS.items()
]


@pytest.mark.parametrize(("condition", "annotator"), END_TO_END)
def test_every_tab_generates_end_to_end(engine, astronaut, condition, annotator):
    image = astronaut
    if CONDITIONS[condition].input_kind == "canvas":
        image = np.zeros((512, 512, 4), np.uint8)
        image[200:220, 50:450] = (0, 0, 0, 255)
    extra = {}
    if condition == "inpaint":  # it needs a mask: white = repaint
        extra["mask"] = np.zeros(image.shape[:2], np.uint8)
        extra["mask"][100:300, 100:300] = 255
    result = engine.generate(condition, image, "an astronaut", annotator=annotator, **FAST, **extra)
    assert result.control_map.shape == (256, 256, 3)
    if annotator != "mlsd":  # random M-LSD weights find no line: an empty map is right there
        assert result.control_map.max() > 0
    if annotator == "openpose":  # no OpenPose weights here: MediaPipe drew the astronaut
        assert any("MediaPipe" in warning for warning in result.warnings)
    assert len(result.images) == 1 and result.images[0].shape == (256, 256, 3)
    role = CONDITIONS[condition].controlnet_role_for(annotator)
    assert engine.cached_controlnets[-1] == DEFAULT_MODEL_IDS[role]


def test_unknown_condition_is_refused(engine, astronaut):
    with pytest.raises(InvalidRequestError, match="Unknown condition 'sketch'"):
        engine.generate("sketch", astronaut, "a photo")


def test_switching_conditions_keeps_the_base_and_bounds_the_cache(models_dir, astronaut):
    from pipelines.engine import Engine

    engine = Engine(Settings(models_dir=models_dir, controlnet_cache_size=1), device="cpu")
    engine.generate("canny", astronaut, "a", **FAST)
    base = engine.base_pipeline()
    assert engine.cached_controlnets == [DEFAULT_MODEL_IDS["canny"]]
    engine.generate("scribble", astronaut, "a", **FAST)
    assert engine.base_pipeline() is base
    assert engine.cached_controlnets == [DEFAULT_MODEL_IDS["scribble"]]


def test_missing_model_says_which_and_how_to_provide_it(models_dir, astronaut, monkeypatch):
    from pipelines.engine import Engine

    model_ids = {**DEFAULT_MODEL_IDS, "canny": "nobody/missing-canny"}
    engine = Engine(Settings(models_dir=models_dir, model_ids=model_ids), device="cpu")
    with pytest.raises(ModelUnavailableError) as error:
        engine.generate("canny", astronaut, "a photo", **FAST)
    message = str(error.value)
    assert "nobody/missing-canny" in message
    assert str(models_dir / "nobody/missing-canny") in message
    assert "MODEL_CANNY" in message and "internet" in message
    assert "Traceback" not in message
    # The control-map preview needs no diffusion model.
    control_map = engine.annotate(astronaut, "canny", image_resolution=256).image
    assert control_map.shape == (256, 256, 3) and control_map.max() == 255


def test_missing_base_model_is_reported_too(tmp_path, astronaut):
    from pipelines.engine import Engine

    engine = Engine(Settings(models_dir=tmp_path), device="cpu")
    with pytest.raises(ModelUnavailableError, match="stable-diffusion-v1-5/stable-diffusion-v1-5"):
        engine.generate("scribble", astronaut, "a photo", **FAST)


def test_detect_resolution_defaults_to_the_annotators_own(engine, coffee, monkeypatch):
    from annotators import make_control_map as real

    seen = []

    def spy(annotator, detector, image, image_resolution, detect_resolution=None, *args, **kw):
        seen.append((annotator.name, detect_resolution))
        return real(annotator, detector, image, image_resolution, detect_resolution, *args, **kw)

    monkeypatch.setattr("pipelines.engine.make_control_map", spy)
    engine.annotate(coffee, "depth_midas", image_resolution=256)
    engine.annotate(coffee, "hed", image_resolution=256)
    engine.annotate(coffee, "hed", image_resolution=256, detect_resolution=320)
    engine.annotate(coffee, "canny", image_resolution=256, detect_resolution=320)
    assert seen == [("depth_midas", 384), ("hed", 512), ("hed", 320), ("canny", None)]
