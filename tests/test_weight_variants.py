"""fp16 weight variants (`*.fp16.safetensors`, half the download): which files a model loads from,
through the app's own loading code, from MODELS_DIR folders and from a Hugging Face cache."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
)

from errors import ModelUnavailableError
from model_sources import load_model, weight_variants
from pipelines.engine import Engine
from settings import DEFAULT_MODEL_IDS, Settings
from testkit.tiny_models import BASE_ID, build_tiny_base, build_tiny_controlnet
from testkit.tolerances import FLOAT16_SMALLEST_ROUNDING, FLOAT16_U, report

CANNY_ID = DEFAULT_MODEL_IDS["canny"]


def save_half(folder: Path, target: Path) -> Path:
    """`folder`'s ControlNet saved as the fp16 variant only, as `--precision fp16` fetches it."""
    model = ControlNetModel.from_pretrained(folder)
    model.to(torch.float16).save_pretrained(target, variant="fp16", safe_serialization=True)
    return target


def first_weight(model: torch.nn.Module) -> torch.Tensor:
    return model.conv_in.weight.detach().float()


def assert_same_weights(model, reference: torch.Tensor, through_fp16: bool, label: str) -> None:
    """Equal to the float32 reference, or to its float16 rounding: within u = 2**-11 of each
    weight, or 2**-25 (half float16's smallest step) for weights too small for its normal range."""
    weight = first_weight(model)
    smallest_normal = 2.0**-14  # float16's
    relative = (weight - reference).abs() / reference.abs().clamp_min(smallest_normal)
    report(f"{label} (relative)", float(relative.max()), FLOAT16_U if through_fp16 else 0.0)
    if through_fp16:
        rtol, atol = FLOAT16_U, FLOAT16_SMALLEST_ROUNDING
        torch.testing.assert_close(weight, reference, rtol=rtol, atol=atol)
    else:  # the full-precision file read as float32: nothing rounded
        assert torch.equal(weight, reference)


@pytest.fixture(scope="module")
def controlnets(tmp_path_factory) -> dict[str, Path]:
    """Folders: full weights only, fp16 only, and both (the fp16 file from another seed, so the
    tests can tell which file was read)."""
    root = tmp_path_factory.mktemp("variants")
    full = build_tiny_controlnet(root / "full", seed=1)
    half = save_half(full, root / "half")
    both = root / "both"
    shutil.copytree(full, both)
    other = build_tiny_controlnet(root / "other", seed=2)
    save_half(other, root / "other_half")
    shutil.copy(
        root / "other_half" / "diffusion_pytorch_model.fp16.safetensors",
        both / "diffusion_pytorch_model.fp16.safetensors",
    )
    return {"full": full, "half": half, "both": both, "other": other}


@pytest.mark.parametrize(
    "folder, half_precision, expected",
    [
        ("full", True, [None]),
        ("full", False, [None]),
        ("half", True, ["fp16"]),
        ("half", False, ["fp16"]),  # only fp16 files: a CPU upcasts them
        ("both", True, ["fp16"]),  # same numbers in fp16, half the reading
        ("both", False, [None]),  # fp32 on a CPU: the full-precision file
    ],
)
def test_local_folders_load_the_variant_they_hold(controlnets, folder, half_precision, expected):
    assert weight_variants(str(controlnets[folder]), True, half_precision) == expected
    model = load_model(
        ControlNetModel.from_pretrained,
        "canny",
        str(controlnets[folder]),
        Path("/nonexistent"),
        half_precision=half_precision,
        dtype=torch.float16 if half_precision else torch.float32,
    )
    assert model.dtype == (torch.float16 if half_precision else torch.float32)
    source = "other" if folder == "both" and expected == ["fp16"] else "full"
    reference = first_weight(ControlNetModel.from_pretrained(controlnets[source]))
    through_fp16 = half_precision or expected == ["fp16"]
    assert_same_weights(
        model, reference, through_fp16, f"weight_variants:{folder},{half_precision}"
    )


def hub_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """`folder`'s files as the Hugging Face cache holds a downloaded repo (refs/main -> a
    snapshot), so from_pretrained finds them offline by repo id."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit, dirs_exist_ok=True)
    return cache


@pytest.mark.parametrize("cached", ["full", "half"])
def test_hub_ids_in_fp16_try_the_variant_then_the_full_files(controlnets, tmp_path, caplog, cached):
    caplog.set_level(logging.INFO, logger="model_sources")
    cache = hub_cache(tmp_path / "hub", CANNY_ID, controlnets[cached])
    assert weight_variants(CANNY_ID, False, True) == ["fp16", None]
    assert weight_variants(CANNY_ID, False, False) == [None]
    model = load_model(
        ControlNetModel.from_pretrained,
        "canny",
        CANNY_ID,
        tmp_path / "empty_models_dir",
        half_precision=True,
        dtype=torch.float16,
        cache_dir=cache,
    )
    reference = first_weight(ControlNetModel.from_pretrained(controlnets["full"]))
    assert_same_weights(model, reference, True, f"weight_variants:hub {cached}")
    fell_back = "No fp16 weights for canny" in caplog.text
    assert fell_back == (cached == "full")
    if cached == "half":  # fp32 asks for the full files only, and this cache has none
        with pytest.raises(ModelUnavailableError, match="is not available"):
            load_model(
                ControlNetModel.from_pretrained,
                "canny",
                CANNY_ID,
                tmp_path / "empty_models_dir",
                half_precision=False,
                cache_dir=cache,
            )


def test_a_cached_hub_pipeline_without_fp16_files_loads_its_full_ones(tmp_path):
    """diffusers refuses a pipeline variant with a ValueError (a model: OSError); both fall back."""
    base = build_tiny_base(tmp_path / "base")
    cache = hub_cache(tmp_path / "hub", BASE_ID, base)
    pipe = load_model(
        StableDiffusionControlNetPipeline.from_pretrained,
        "base",
        BASE_ID,
        tmp_path / "empty_models_dir",
        half_precision=True,
        dtype=torch.float16,
        cache_dir=cache,
        controlnet=None,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    assert pipe.unet.dtype == torch.float16


def test_an_fp16_only_models_dir_generates_on_the_cpu(tmp_path, astronaut):
    """A MODELS_DIR filled with `download --precision fp16`: base and ControlNet hold only
    `*.fp16.safetensors`; the CPU engine upcasts them to fp32 and generates."""
    full = tmp_path / "full"
    build_tiny_base(full / BASE_ID)
    build_tiny_controlnet(full / CANNY_ID, seed=1)
    models_dir = tmp_path / "models"
    pipe = StableDiffusionPipeline.from_pretrained(full / BASE_ID, safety_checker=None)
    pipe.to(torch.float16).save_pretrained(
        models_dir / BASE_ID, variant="fp16", safe_serialization=True
    )
    save_half(full / CANNY_ID, models_dir / CANNY_ID)
    weights = sorted(path.name for path in models_dir.rglob("*.safetensors"))
    assert weights and all(name.endswith(".fp16.safetensors") for name in weights), weights

    engine = Engine(Settings(models_dir=models_dir), device="cpu")
    request = {"steps": 2, "image_resolution": 256, "seed": 1}
    result = engine.generate("canny", astronaut, "a house", **request)
    assert len(result.images) == 1 and result.images[0].shape == (256, 256, 3)
    loaded = engine.base_pipeline()
    assert loaded.unet.dtype == torch.float32 and engine.controlnet("canny").dtype == torch.float32

    # The same request on the full-precision files differs only by fp16 rounding of the weights:
    # each step's prediction moves by about u = 2**-11 of its scale, the steps add up, over the
    # image's 255 levels (another seed moves the mean by about 45 levels).
    reference = Engine(Settings(models_dir=full), device="cpu")
    expected = reference.generate("canny", astronaut, "a house", **request)
    difference = abs(result.images[0].astype(int) - expected.images[0].astype(int))
    bound = request["steps"] * FLOAT16_U * 255  # 0.25 levels
    report("weight_variants:fp16_images mean", float(difference.mean()), bound)
    assert difference.mean() <= bound, difference.mean()
