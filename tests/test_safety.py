"""The optional NSFW safety checker: offline loading, flagging real photos, censoring, errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from skimage import data

from errors import ModelUnavailableError
from pipelines.models.safety import SAFETY_CHECKER_ID, SafetyChecker, censor
from testkit.tiny_safety import build_tiny_safety_checker


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """Real RGB uint8 photos of different sizes: 512x512, 400x600 and a 64x103 thumbnail."""
    astronaut = data.astronaut()
    return [astronaut, data.coffee(), np.ascontiguousarray(astronaut[::8, ::5])]


def _models_dir(tmp_path_factory, always_flag: bool):
    models_dir = tmp_path_factory.mktemp("models")
    build_tiny_safety_checker(models_dir / SAFETY_CHECKER_ID, always_flag=always_flag)
    return models_dir


@pytest.fixture(scope="module")
def always_flag(tmp_path_factory) -> SafetyChecker:
    return SafetyChecker.load(
        SAFETY_CHECKER_ID, _models_dir(tmp_path_factory, True), "cpu", torch.float32
    )


@pytest.fixture(scope="module")
def never_flag(tmp_path_factory) -> SafetyChecker:
    return SafetyChecker.load(
        SAFETY_CHECKER_ID, _models_dir(tmp_path_factory, False), "cpu", torch.float32
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loads_offline_from_the_models_dir_mirror(tmp_path, photos, dtype):
    build_tiny_safety_checker(tmp_path / SAFETY_CHECKER_ID, always_flag=True)
    checker = SafetyChecker.load(SAFETY_CHECKER_ID, tmp_path, "cpu", dtype)
    assert isinstance(checker.model, StableDiffusionSafetyChecker)
    assert checker.model.dtype == dtype
    assert checker.processor.crop_size["height"] == 32  # the repo's own preprocessor config
    assert checker.flagged(photos) == [True] * len(photos)


def test_always_flag_checker_flags_every_photo_and_censor_blackens_them(always_flag, photos):
    originals = [photo.copy() for photo in photos]
    flags = always_flag.flagged(photos)
    assert flags == [True, True, True]
    assert all(np.array_equal(a, b) for a, b in zip(photos, originals, strict=True))  # untouched
    censored = censor(photos, flags)
    for image, photo in zip(censored, photos, strict=True):
        assert image.shape == photo.shape and image.dtype == np.uint8
        assert not image.any()


def test_never_flag_checker_flags_none_and_censor_returns_them_unchanged(never_flag, photos):
    flags = never_flag.flagged(photos)
    assert flags == [False, False, False]
    censored = censor(photos, flags)
    assert all(image is photo for image, photo in zip(censored, photos, strict=True))


def test_censor_blackens_exactly_the_flagged_images(photos):
    censored = censor(photos, [False, True, False])
    assert censored[0] is photos[0] and censored[2] is photos[2]
    assert censored[1].shape == photos[1].shape and not censored[1].any()
    assert photos[1].any()  # the input is not modified
    with pytest.raises(ValueError):
        censor(photos, [True])


def test_an_empty_batch_needs_no_model_call(never_flag):
    assert never_flag.flagged([]) == []


def test_a_missing_checker_names_the_model(tmp_path):
    with pytest.raises(ModelUnavailableError, match=re.escape(SAFETY_CHECKER_ID)):
        SafetyChecker.load(SAFETY_CHECKER_ID, tmp_path, "cpu", torch.float32)


def test_the_default_checker_is_read_from_the_sd15_repos_subfolders(tmp_path, photos):
    from pipelines.models.safety import subfolders
    from settings import OPTIONAL_MODEL_IDS

    assert OPTIONAL_MODEL_IDS["safety_checker"] == SAFETY_CHECKER_ID
    assert SAFETY_CHECKER_ID == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert subfolders(SAFETY_CHECKER_ID, tmp_path) == ("safety_checker", "feature_extractor")
    repo = build_tiny_safety_checker(tmp_path / SAFETY_CHECKER_ID, always_flag=True)
    assert not (repo / "config.json").exists()  # only in the subfolders
    checker = SafetyChecker.load(SAFETY_CHECKER_ID, tmp_path, "cpu", torch.float32)
    assert checker.flagged(photos[:1]) == [True]


def test_an_override_folder_with_the_files_at_its_root_still_loads(tmp_path, photos):
    from pipelines.models.safety import subfolders

    folder = build_tiny_safety_checker(tmp_path / "flat", always_flag=True, flat=True)
    assert subfolders(str(folder), tmp_path) == (None, None)
    checker = SafetyChecker.load(str(folder), tmp_path, "cpu", torch.float32)
    assert checker.flagged(photos[:1]) == [True]


def test_a_checker_without_its_processor_names_the_missing_file(tmp_path):
    repo = build_tiny_safety_checker(tmp_path / SAFETY_CHECKER_ID)
    (repo / "feature_extractor/preprocessor_config.json").unlink()
    with pytest.raises(ModelUnavailableError) as raised:
        SafetyChecker.load(SAFETY_CHECKER_ID, tmp_path, "cpu", torch.float32)
    message = str(raised.value)
    assert "feature_extractor/preprocessor_config.json" in message
    assert "python -m cli download safety_checker" in message


def test_a_folder_with_only_fp16_checker_weights_loads_them(tmp_path, photos):
    repo = build_tiny_safety_checker(tmp_path / SAFETY_CHECKER_ID, always_flag=True)
    weights = repo / "safety_checker/model.safetensors"
    weights.rename(weights.with_name("model.fp16.safetensors"))  # `download --precision fp16`
    checker = SafetyChecker.load(SAFETY_CHECKER_ID, tmp_path, "cpu", torch.float16)
    assert checker.model.dtype == torch.float16
