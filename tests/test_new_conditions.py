"""Tile (tile_resample) and Instruct Pix2Pix: their maps, their checks, their models, their
downloads and their endpoints, on the tiny models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

import download
from annotators import ANNOTATORS, LoadContext, make_control_map
from annotators.util import crop_to_aspect, resize_to, target_size
from availability import condition_status, statuses
from conditions import CONDITIONS
from errors import InvalidRequestError
from settings import DEFAULT_MODEL_IDS, V10_MODEL_IDS, Settings
from testkit.paths import ASSETS, PROJECT_ROOT
from testkit.tiny_models import build_tiny_controlnet

FAST = {"steps": 2, "image_resolution": 256, "seed": 7}
NEW_ROLES = {
    "tile": "lllyasviel/control_v11f1e_sd15_tile",
    "ip2p": "lllyasviel/control_v11e_sd15_ip2p",
}


def reference_tile(image: np.ndarray, rate: float, height: int, width: int) -> np.ndarray:
    """AUTOMATIC1111's rule, written out: from a rate of 1.1 the image (at its own size) shrinks
    by the rate with INTER_AREA, each side truncated; the result goes to the output size with
    INTER_AREA to fewer pixels, INTER_CUBIC otherwise."""
    if rate >= 1.1:
        small = (int(image.shape[1] / rate), int(image.shape[0] / rate))  # (W, H) for cv2
        image = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
    if image.shape[:2] == (height, width):
        return image
    fewer = height * width < image.shape[0] * image.shape[1]
    method = cv2.INTER_AREA if fewer else cv2.INTER_CUBIC
    return cv2.resize(image, (width, height), interpolation=method)


# ---- the registry ------------------------------------------------------------------------------
def test_the_new_conditions_are_entries_with_their_roles_and_examples():
    tile, ip2p = CONDITIONS["tile"], CONDITIONS["ip2p"]
    assert (tile.controlnet_role, tile.annotators) == ("tile", ("tile_resample", "none"))
    assert (ip2p.controlnet_role, ip2p.annotators) == ("ip2p", ("none",))
    assert {role: DEFAULT_MODEL_IDS[role] for role in NEW_ROLES} == NEW_ROLES
    assert not set(NEW_ROLES) & set(V10_MODEL_IDS)  # no v1.0 models: see the v1.0 test below
    assert "instruction" in ip2p.description and ip2p.examples == (
        ("chelsea.jpg", "make it winter"),
    )
    assert ip2p.prompt_hint and not tile.prompt_hint
    licences = (ASSETS / "LICENSE.md").read_text()
    for condition in (tile, ip2p):
        for name, prompt in condition.examples:
            assert (ASSETS / name).is_file() and f"`{name}`" in licences and prompt
    rate = ANNOTATORS["tile_resample"].params[0]
    assert (rate.name, rate.default, rate.minimum, rate.maximum, rate.step) == (
        "down_sampling_rate", 1.0, 1.0, 8.0, 0.01,
    )  # fmt: skip
    assert ANNOTATORS["tile_resample"].needs == ()  # no weights: it runs anywhere


# ---- tile_resample -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("photo", "rate", "resolution"),
    [
        ("coffee", 1.0, 256),  # 400 x 600 -> 256 x 384: area down, no resample
        ("coffee", 1.09, 256),  # below 1.1: the image as it is
        ("coffee", 1.1, 256),  # 363 x 545, then area down
        ("coffee", 2.5, 256),  # 160 x 240, then cubic up
        ("coffee", 8.0, 512),  # 50 x 75, then cubic up to 512 x 768
        ("astronaut", 3.3, 256),  # 155 x 155 (truncated), cubic up
        ("astronaut", 1.0, 768),  # no resample, cubic up to 768
    ],
)
def test_the_tile_map_equals_the_reference_rule(engine, request, photo, rate, resolution):
    image = request.getfixturevalue(photo)
    control_map = engine.annotate(
        image, "tile_resample", image_resolution=resolution, down_sampling_rate=rate
    ).image
    height, width = target_size(image.shape[0], image.shape[1], resolution, "image")
    expected = reference_tile(image, rate, height, width)
    assert control_map.shape == (height, width, 3) and control_map.dtype == np.uint8
    np.testing.assert_array_equal(control_map, expected)


def test_the_tile_rate_is_relative_to_the_photos_own_size(coffee):
    """A rate that only brings a large photo down to the output size blurs nothing more than the
    plain resize does; the same rate on a photo at the output size blurs it."""
    annotator = ANNOTATORS["tile_resample"]
    detector = annotator.load(LoadContext(Path("/nonexistent"), {}))

    def tile(image, rate):
        params = annotator.check_params({"down_sampling_rate": rate})
        return make_control_map(annotator, detector, image, 256, params=params)

    big = cv2.resize(coffee, (1200, 800), interpolation=cv2.INTER_CUBIC)
    np.testing.assert_array_equal(tile(big, 2.0), reference_tile(big, 2.0, 256, 384))
    small = resize_to(coffee, 256, 384)
    sharp, blurred = tile(small, 1.0), tile(small, 4.0)
    np.testing.assert_array_equal(sharp, small)

    def detail(image):  # high-frequency energy
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64)
        return float(np.abs(cv2.Laplacian(grey, cv2.CV_64F)).mean())

    assert detail(blurred) < 0.5 * detail(sharp)


def test_the_tile_map_follows_the_resize_modes(engine, coffee):
    for resize_mode in ("crop_and_resize", "just_resize", "resize_and_fill"):
        control_map = engine.annotate(
            coffee,
            "tile_resample",
            image_resolution=256,
            aspect_ratio="1:1",
            resize_mode=resize_mode,
            down_sampling_rate=2.0,
        ).image
        assert control_map.shape == (256, 256, 3), resize_mode
    cropped = engine.annotate(
        coffee, "tile_resample", image_resolution=256, aspect_ratio="1:1", down_sampling_rate=2.0
    ).image
    centre = crop_to_aspect(coffee, 256, 256)  # crop_and_resize (the default) crops first
    np.testing.assert_array_equal(cropped, reference_tile(centre, 2.0, 256, 256))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (9, "`down_sampling_rate` must be between 1 and 8, got 9."),
        (0.5, "`down_sampling_rate` must be between 1 and 8, got 0.5."),
        (float("nan"), "`down_sampling_rate` must be between 1 and 8"),
        ("lots", "`down_sampling_rate` must be a number between 1 and 8, got 'lots'."),
    ],
)
def test_the_engine_checks_the_tile_rate(engine, astronaut, value, message):
    with pytest.raises(InvalidRequestError) as refused:
        engine.annotate(astronaut, "tile_resample", down_sampling_rate=value)
    assert message in str(refused.value)
    with pytest.raises(InvalidRequestError, match="down_sampling_rate"):
        engine.generate("tile", astronaut, "a photo", down_sampling_rate=value, **FAST)


# ---- Instruct Pix2Pix: the photo is the map ----------------------------------------------------
def test_the_ip2p_map_is_the_photo_in_rgb_at_the_output_size(engine, coffee):
    result = engine.annotate(coffee, "none", image_resolution=256)
    np.testing.assert_array_equal(result.image, resize_to(coffee, 256, 384))
    rgba = np.dstack([coffee, np.full(coffee.shape[:2], 255, np.uint8)])
    rgba[:40, :40, 3] = 0  # transparent corner: white paper
    from_rgba = engine.annotate(rgba, "none", image_resolution=256).image
    assert from_rgba.shape == (256, 384, 3) and from_rgba[0, 0].tolist() == [255, 255, 255]


# ---- end to end on the tiny models ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("condition", "prompt", "params"),
    [
        ("tile", "a cup of coffee, highly detailed", {"down_sampling_rate": 2.0}),
        ("tile", "a cup of coffee", {"annotator": "none"}),
        ("ip2p", "make it winter", {}),
    ],
)
def test_each_new_condition_generates_end_to_end(engine, coffee, condition, prompt, params):
    result = engine.generate(condition, coffee, prompt, **params, **FAST)
    assert result.control_map.shape == (256, 384, 3)
    assert [image.shape for image in result.images] == [(256, 384, 3)]
    assert result.images[0].std() > 0
    assert engine.cached_controlnets[-1] == DEFAULT_MODEL_IDS[condition]
    unit = result.parameters[0]["units"][0]
    assert unit["condition"] == condition and unit["model_id"] == DEFAULT_MODEL_IDS[condition]
    if "down_sampling_rate" in params:
        assert unit["params"] == {"down_sampling_rate": 2.0}
        expected = reference_tile(coffee, 2.0, 256, 384)
        np.testing.assert_array_equal(result.control_map, expected)


def test_the_new_controlnets_steer_the_image(engine, coffee):
    """Each new role loads its own ControlNet: the same map and seed give other images."""
    images = {
        name: engine.generate(name, coffee, "a cup", annotator="none", **FAST).images[0]
        for name in ("tile", "ip2p", "canny")
    }
    assert not np.array_equal(images["tile"], images["ip2p"])
    assert not np.array_equal(images["ip2p"], images["canny"])


def test_v10_on_the_new_tabs_runs_their_v11_models(engine, coffee):
    """Neither has a v1.0 model, so the family switch keeps the v1.1 one (the model store's
    rule for roles missing from V10_MODEL_IDS): the same images, the v1.1 id in the PNG."""
    for condition in ("tile", "ip2p"):
        assert engine.controlnet_id(condition, "v1.0") == DEFAULT_MODEL_IDS[condition]
        v11 = engine.generate(condition, coffee, "make it winter", **FAST)
        v10 = engine.generate(
            condition, coffee, "make it winter", controlnet_version="v1.0", **FAST
        )
        np.testing.assert_array_equal(v10.images[0], v11.images[0])
        assert v10.parameters[0]["controlnet_version"] == "v1.0"
        assert v10.parameters[0]["units"][0]["model_id"] == DEFAULT_MODEL_IDS[condition]
        label = CONDITIONS[condition].label
        assert f"{label} has no v1.0 ControlNet" in " ".join(v10.warnings), v10.warnings
        assert not any("v1.0" in warning for warning in v11.warnings)
    canny_v10 = engine.generate("canny", coffee, "a cup", controlnet_version="v1.0", **FAST)
    assert not any("no v1.0 ControlNet" in warning for warning in canny_v10.warnings)


def test_the_new_conditions_compose(engine, astronaut):
    result = engine.compose(
        [
            {"condition": "tile", "image": astronaut, "params": {"down_sampling_rate": 3.0}},
            {"condition": "ip2p", "strength": 0.5},  # no image of its own: unit 1's
        ],
        "make it a statue",
        **FAST,
    )
    assert len(result.control_maps) == 2 and len(result.images) == 1
    np.testing.assert_array_equal(result.control_maps[0], reference_tile(astronaut, 3.0, 256, 256))
    np.testing.assert_array_equal(result.control_maps[1], resize_to(astronaut, 256, 256))
    assert [unit["model_id"] for unit in result.parameters[0]["units"]] == [
        DEFAULT_MODEL_IDS["tile"],
        DEFAULT_MODEL_IDS["ip2p"],
    ]


# ---- which tabs can run ------------------------------------------------------------------------
def test_availability_covers_the_new_tabs(models_dir, tmp_path, monkeypatch):
    import shutil

    from ui.status import tab_note

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    here = statuses(Settings(models_dir=models_dir))
    assert here["tile"].ready and here["ip2p"].ready
    copy = tmp_path / "models"
    for model_id in (DEFAULT_MODEL_IDS["base"], *NEW_ROLES.values()):
        shutil.copytree(models_dir / model_id, copy / model_id)
    settings = Settings(models_dir=copy)
    assert condition_status(CONDITIONS["tile"], settings).ready
    for role, model_id in NEW_ROLES.items():
        shutil.rmtree(copy / model_id)
        status = condition_status(CONDITIONS[role], settings)
        assert [(need.role, need.model_id) for need in status.run_missing] == [(role, model_id)]
        assert status.annotator_missing == {}  # their annotators need no weights
        assert f"python -m cli download {role}" in tab_note(status)
    assert "the Instruct Pix2Pix ControlNet (`lllyasviel/control_v11e_sd15_ip2p`)" in (
        status.run_missing[0].words
    )


# ---- download ------------------------------------------------------------------------------------
def test_the_new_roles_are_diffusers_controlnets_for_download():
    for role in NEW_ROLES:
        assert download.rule_for(role) == download.CONTROLNET_RULE
        assert download.rule_for(role, "fp16") == download.HALF_CONTROLNET_RULE
        assert role in download.ROLES  # --all fetches them
    # The v1.0 family has no tile or ip2p model: their v1.1 repos are fetched.
    assert set(download.plan_repos(NEW_ROLES, DEFAULT_MODEL_IDS, family="v10")) == set(
        NEW_ROLES.values()
    )


HUB_LISTING = {
    "config.json": 5,
    "diffusion_pytorch_model.safetensors": 9,
    "diffusion_pytorch_model.fp16.safetensors": 4,
    "diffusion_pytorch_model.bin": 9,
    "diffusion_pytorch_model.fp16.bin": 4,
    "README.md": 1,
    "images/input.png": 3,
}


def fake_hub(monkeypatch) -> list[tuple[str, list[str]]]:
    """`hub_listing` and `snapshot_download` faked in-process: (repo, allow_patterns) per call,
    each call writing the files the Hub would."""
    import huggingface_hub

    calls = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(download, "hub_listing", lambda repo_id: HUB_LISTING)

    def fake_snapshot(repo_id, *, local_dir, allow_patterns):
        calls.append((repo_id, sorted(allow_patterns)))
        for name in allow_patterns:
            path = Path(local_dir) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * HUB_LISTING[name])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    return calls


@pytest.mark.parametrize(
    ("precision", "weights"),
    [
        ("fp32", "diffusion_pytorch_model.safetensors"),
        ("fp16", "diffusion_pytorch_model.fp16.safetensors"),
    ],
)
def test_cli_download_tile_ip2p_plans_the_right_files(
    monkeypatch, tmp_path, capsys, precision, weights
):
    import cli

    calls = fake_hub(monkeypatch)
    argv = ["download", "tile", "ip2p", "--models-dir", str(tmp_path), "--precision", precision]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert calls == [
        (NEW_ROLES["tile"], ["config.json", weights]),
        (NEW_ROLES["ip2p"], ["config.json", weights]),
    ]
    for model_id in NEW_ROLES.values():
        assert sorted(p.name for p in (tmp_path / model_id).iterdir()) == ["config.json", weights]


def test_cli_download_from_a_mirror_gives_loadable_controlnets(tmp_path, coffee):
    mirror = tmp_path / "hub"
    for seed, model_id in enumerate(NEW_ROLES.values(), start=1):
        build_tiny_controlnet(mirror / model_id, seed=seed)
        (mirror / model_id / "diffusion_pytorch_model.bin").write_bytes(b"pickle")  # left behind
    out = tmp_path / "models"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "download",
            "tile",
            "ip2p",
            "--source",
            mirror,
            "--models-dir",
            out,
        ],
        cwd=PROJECT_ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for model_id in NEW_ROLES.values():
        assert sorted(p.name for p in (out / model_id).iterdir()) == [
            "config.json",
            "diffusion_pytorch_model.safetensors",
        ]
        assert f"{model_id}: fetched 2 file(s)" in result.stdout
    from diffusers import ControlNetModel

    from model_sources import load_model

    for role, model_id in NEW_ROLES.items():
        model = load_model(
            ControlNetModel.from_pretrained, role, model_id, out, half_precision=False
        )
        assert isinstance(model, ControlNetModel)


# ---- through a real server ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server.url, verbose=False)


def test_the_new_endpoints_run_on_the_server(client):
    photo = handle_file(ASSETS / "coffee.jpg")
    gallery, seed = client.predict(
        image=photo,
        prompt="a cup of coffee",
        down_sampling_rate=2.0,
        seed=5,
        steps=1,
        api_name="/tile",
    )
    assert seed == 5 and [item["caption"] for item in gallery] == [
        "Control map",
        "Image 1 · seed 5",
    ]
    tile_map = np.asarray(Image.open(gallery[0]["image"]).convert("RGB"))
    coffee = np.asarray(Image.open(ASSETS / "coffee.jpg").convert("RGB"))
    np.testing.assert_array_equal(tile_map, reference_tile(coffee, 2.0, 256, 384))
    gallery, _ = client.predict(
        image=handle_file(ASSETS / "chelsea.jpg"),
        prompt="make it winter",
        steps=1,
        api_name="/ip2p",
    )
    assert len(gallery) == 2
    with Image.open(gallery[1]["image"]) as image:
        assert image.format == "PNG" and min(image.size) == 256
    control_map, _ = client.predict(  # the map, and no pose JSON
        image=photo,
        annotator="tile_resample",
        image_resolution=256,
        down_sampling_rate=8,
        api_name="/annotate",
    )
    annotated = np.asarray(Image.open(control_map).convert("RGB"))
    np.testing.assert_array_equal(annotated, reference_tile(coffee, 8.0, 256, 384))
