"""`python -m cli` as a real subprocess on the tiny models: generate, annotate, errors, help."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from png_info import read_parameters

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ASSETS = PROJECT_ROOT / "assets"
FAST = ["--steps", "2", "--image-resolution", "256", "--seed", "7"]


def run_cli(models_dir: Path, *args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MODELS_DIR": str(models_dir), "HF_HUB_OFFLINE": "1", "DEVICE": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "cli", *map(str, args)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A folder with assets/astronaut.png (512 x 512) and assets/coffee.jpg (600 x 400)."""
    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut.png", "coffee.jpg"):
        shutil.copy(ASSETS / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def folder_run(models_dir, photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("folder_out")
    args = ["generate", "--condition", "canny", "--image", photos, "--prompt", "a cat"]
    result = run_cli(models_dir, *args, "--out", out, "--num-images", "2", *FAST)
    return result, out


def test_generate_on_a_folder_writes_the_map_then_the_images(folder_run):
    result, out = folder_run
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in out.iterdir()) == [
        "astronaut_0.png",
        "astronaut_1.png",
        "astronaut_map.png",
        "coffee_0.png",
        "coffee_1.png",
        "coffee_map.png",
    ]
    # One line per input, in order, with the seed used and the map first.
    assert result.stdout.splitlines() == [
        "astronaut.png: seed 7 -> astronaut_map.png, astronaut_0.png, astronaut_1.png",
        "coffee.jpg: seed 7 -> coffee_map.png, coffee_0.png, coffee_1.png",
    ]
    for stem, size in (("astronaut", (256, 256)), ("coffee", (384, 256))):
        for suffix in ("map", "0", "1"):
            with Image.open(out / f"{stem}_{suffix}.png") as picture:
                assert (picture.format, picture.size, picture.mode) == ("PNG", size, "RGB")
    assert not np.array_equal(pixels(out / "astronaut_0.png"), pixels(out / "astronaut_1.png"))
    # Image i used seed + i, and its PNG says so (with the rest of its parameters).
    saved = [read_parameters(out / f"coffee_{index}.png") for index in (0, 1)]
    assert [parameters["seed"] for parameters in saved] == [7, 8]
    assert saved[0]["prompt"] == "a cat" and saved[0]["units"][0]["condition"] == "canny"
    assert "4/4" in result.stderr  # one progress bar over 2 images x 2 steps
    assert "Traceback" not in result.stderr


def test_generate_on_one_file_with_the_same_seed_gives_the_same_pixels(
    models_dir, photos, folder_run, tmp_path
):
    args = ["generate", "--condition", "canny", "--image", photos / "astronaut.png"]
    result = run_cli(
        models_dir, *args, "--prompt", "a cat", "--out", tmp_path, "--num-images", "2", *FAST
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("astronaut.png: seed 7 -> astronaut_map.png")
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "astronaut_0.png",
        "astronaut_1.png",
        "astronaut_map.png",
    ]
    _, folder_out = folder_run
    for name in ("astronaut_map.png", "astronaut_0.png", "astronaut_1.png"):
        np.testing.assert_array_equal(pixels(tmp_path / name), pixels(folder_out / name))


def test_a_bad_file_is_reported_and_the_others_still_made(models_dir, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(ASSETS / "astronaut.png", photos / "astronaut.png")
    (photos / "notes.png").write_text("not an image")
    (photos / "readme.txt").write_text("not an image file name: ignored")
    out = tmp_path / "out"
    args = ["generate", "--condition", "canny", "--image", photos, "--out", out]
    result = run_cli(models_dir, *args, "--steps", "1", "--image-resolution", "256")
    assert result.returncode == 1
    assert sorted(path.name for path in out.iterdir()) == ["astronaut_0.png", "astronaut_map.png"]
    assert "1 of 2 input(s) failed" in result.stderr
    assert "notes.png: Could not read the file as an image" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--condition", "sketchy"], "Unknown condition 'sketchy'; choose one of: canny, mlsd"),
        (["--condition", "canny", "--steps", "0"], "`steps` must be between 1 and 100, got 0."),
        (["--condition", "canny", "--param", "colour=3"], "Unknown parameter(s): colour."),
        (["--condition", "canny", "--annotator", "hed"], "has no annotator 'hed'"),
    ],
)
def test_bad_requests_exit_with_the_message_and_no_traceback(models_dir, tmp_path, extra, message):
    image = ASSETS / "astronaut.png"
    result = run_cli(models_dir, "generate", "--image", image, "--out", tmp_path, *extra)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())


def test_a_missing_model_stops_with_how_to_provide_it(tmp_path):
    args = ["generate", "--condition", "canny", "--image", ASSETS / "astronaut.png"]
    result = run_cli(tmp_path / "empty", *args, "--out", tmp_path / "out", "--steps", "1")
    assert result.returncode == 2
    assert "error: The base model `stable-diffusion-v1-5/stable-diffusion-v1-5` is not" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_annotate_writes_maps_only(models_dir, photos, tmp_path):
    args = ["annotate", "--annotator", "canny", "--image", photos, "--out", tmp_path]
    result = run_cli(models_dir, *args, "--image-resolution", "256", "--param", "low_threshold=50")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "astronaut.png -> astronaut_map.png",
        "coffee.jpg -> coffee_map.png",
    ]
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "astronaut_map.png",
        "coffee_map.png",
    ]
    with Image.open(tmp_path / "coffee_map.png") as picture:
        assert (picture.format, picture.size) == ("PNG", (384, 256))
        assert set(np.unique(np.asarray(picture))) <= {0, 255}  # Canny edges


def test_help_lists_the_subcommands(models_dir):
    result = run_cli(models_dir, "--help")
    assert result.returncode == 0
    for command in ("generate", "annotate", "upscale", "download"):
        assert command in result.stdout
    script = subprocess.run(
        [sys.executable, "cli.py", "generate", "--help"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert script.returncode == 0
    assert "--condition" in script.stdout and "NAME=VALUE" in script.stdout


def test_generate_takes_the_geometry_window_and_model_options(models_dir, photos, tmp_path):
    args = ["generate", "--condition", "canny", "--image", photos / "coffee.jpg", "--out", tmp_path]
    options = ["--aspect-ratio", "1:1", "--resize-mode", "resize_and_fill", "--control-end", "0.5"]
    result = run_cli(models_dir, *args, *options, "--controlnet-version", "v1.0", *FAST)
    assert result.returncode == 0, result.stderr
    saved = read_parameters(tmp_path / "coffee_0.png")
    assert (saved["width"], saved["height"], saved["resize_mode"]) == (256, 256, "resize_and_fill")
    assert saved["units"][0]["control_end"] == 0.5
    assert saved["units"][0]["model_id"] == "lllyasviel/sd-controlnet-canny"
    assert pixels(tmp_path / "coffee_map.png")[:40].max() == 0  # the filled border


def test_generate_inpaints_from_an_initial_image_and_a_mask(models_dir, tmp_path):
    start = np.asarray(Image.open(ASSETS / "astronaut.png").convert("RGB"))[::2, ::2].copy()
    Image.fromarray(start).save(tmp_path / "start.png")  # 256 x 256: the output size
    mask = np.zeros((256, 256), np.uint8)
    mask[80:176, 80:176] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    args = ["generate", "--condition", "canny", "--image", ASSETS / "astronaut.png", "--out", out]
    inputs = ["--init-image", tmp_path / "start.png", "--mask", tmp_path / "mask.png"]
    options = ["--denoising-strength", "0.5", "--mask-blur", "2", "--keep-unmasked", "true"]
    size = ["--image-resolution", "256", "--steps", "4", "--seed", "3"]
    result = run_cli(models_dir, *args, *inputs, *options, *size)
    assert result.returncode == 0, result.stderr
    saved = read_parameters(out / "astronaut_0.png")
    assert saved["init_image_source"] == "uploaded" and saved["mask_source"] == "uploaded"
    assert (saved["denoising_strength"], saved["steps"], saved["steps_run"]) == (0.5, 4, 2)
    assert (saved["mask_blur"], saved["keep_unmasked"]) == (2, True)
    image = pixels(out / "astronaut_0.png")
    outside = np.ones(mask.shape, bool)
    outside[70:186, 70:186] = False  # the blur reaches 2 * 2.5 = 5 pixels past the mask
    np.testing.assert_array_equal(image[outside], start[outside])
    assert np.abs(image[100:156, 100:156].astype(int) - start[100:156, 100:156]).mean() > 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mask", "missing.png"], "No image file at 'missing.png'"),
        (["--init-image", "missing.png"], "No image file at 'missing.png'"),
        (["--denoising-strength", "0"], "`denoising_strength` must be above 0"),
        (["--keep-unmasked", "perhaps"], "`keep_unmasked` must be true or false"),
    ],
)
def test_bad_image_to_image_inputs_stop_before_any_model_loads(
    models_dir, tmp_path, extra, message
):
    image = ASSETS / "astronaut.png"
    args = ["generate", "--condition", "canny", "--image", image, "--out", tmp_path / "out"]
    result = run_cli(models_dir, *args, *extra)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_upscale_writes_the_larger_image_with_its_parameters(models_dir, tmp_path):
    source = tmp_path / "small.png"
    Image.open(ASSETS / "coffee.jpg").convert("RGB").resize((192, 128)).save(source)
    out = tmp_path / "out"
    args = ["upscale", "--image", source, "--prompt", "a cup", "--out", out, "--seed", "3"]
    result = run_cli(models_dir, *args, "--steps", "3", "--tile-size", "256", "--factor", "2")
    assert result.returncode == 0, result.stderr
    assert "small.png: 384x256 in 2 tiles, seed 3 -> small_upscaled.png" in result.stdout
    assert pixels(out / "small_upscaled.png").shape == (256, 384, 3)
    assert read_parameters(out / "small_upscaled.png")["upscale"]["tiles"] == 2
    refused = run_cli(models_dir, *args, "--num-images", "2")  # not an upscale option
    assert refused.returncode == 2 and "unrecognized arguments: --num-images" in refused.stderr
    too_strong = run_cli(models_dir, *args, "--denoising-strength", "1")
    assert too_strong.returncode == 2 and "denoising strength below 1" in too_strong.stderr
