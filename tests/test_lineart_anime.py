"""Anime line art: the network against controlnet_aux's LineartAnimeDetector on the same random
weights (loaded through the app's own loading code), the real network's shape, the condition end
to end on the tiny models, availability and download."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from controlnet_aux.lineart_anime import LineartAnimeDetector, UnetGenerator
from gradio_client import Client, handle_file
from PIL import Image

import download
from annotators import ANNOTATORS, LoadContext, make_control_map
from annotators.lineart_anime import (
    GENERATOR_WIDTH,
    LINEART_ANIME_WEIGHTS,
    build_anime_generator,
    side_up,
)
from annotators.util import resize_to
from availability import condition_status
from conditions import CONDITIONS
from errors import ModelUnavailableError
from settings import DEFAULT_MODEL_IDS, V10_MODEL_IDS, Settings
from testkit.annotator_weights import ANIME_TEST_WIDTH, save_lineart_anime
from testkit.models_dir import ADDED_ROLES, controlnet_roles
from testkit.paths import ASSETS, PROJECT_ROOT

FAST = {"steps": 2, "image_resolution": 256, "seed": 7}
ANIME_ID = "lllyasviel/control_v11p_sd15s2_lineart_anime"
ANNOTATOR_NAMES = ("lineart_anime", "line_drawing", "none")
EXAMPLE = "lineart_anime_girl.png"


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    """A MODELS_DIR holding `netG.pth` as the tests' MODELS_DIR holds it (testkit)."""
    folder = tmp_path_factory.mktemp("lineart_anime_models")
    save_lineart_anime(folder)
    return folder


@pytest.fixture(scope="module")
def detector(weights_dir):
    return ANNOTATORS["lineart_anime"].load(LoadContext(weights_dir, dict(DEFAULT_MODEL_IDS)))


@pytest.fixture(scope="module")
def reference(weights_dir) -> LineartAnimeDetector:
    """controlnet_aux's own detector, built as its from_pretrained builds it (at the file's
    width), on the same file."""
    norm_layer = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    network = UnetGenerator(3, 1, 8, ANIME_TEST_WIDTH, norm_layer=norm_layer, use_dropout=False)
    checkpoint = torch.load(weights_dir / DEFAULT_MODEL_IDS["annotators"] / LINEART_ANIME_WEIGHTS)
    network.load_state_dict({k.replace("module.", ""): v for k, v in checkpoint.items()})
    return LineartAnimeDetector(network.eval())


@pytest.fixture(scope="module")
def girl() -> np.ndarray:
    """The tab's example: black pen lines on white paper, RGB (512, 512, 3)."""
    return np.asarray(Image.open(ASSETS / EXAMPLE).convert("RGB"))


def anime_map(detector, image, resolution=256, detect_resolution=256):
    annotator = ANNOTATORS["lineart_anime"]
    return make_control_map(annotator, detector, image, resolution, detect_resolution, {})


# ---- the registry ------------------------------------------------------------------------------
def test_the_condition_is_an_entry_with_its_own_role_annotators_and_example():
    anime = CONDITIONS["lineart_anime"]
    assert (anime.label, anime.controlnet_role, anime.annotators) == (
        "Anime line art",
        "lineart_anime",
        ANNOTATOR_NAMES,
    )
    assert DEFAULT_MODEL_IDS["lineart_anime"] == ANIME_ID
    assert "lineart_anime" not in V10_MODEL_IDS  # no v1.0 model
    assert "anime base model" in anime.description
    assert anime.default_detect_resolution == 512 and anime.params == ()
    assert ANNOTATORS["lineart_anime"].needs == (("annotators", "netG.pth"),)
    licences = (ASSETS / "LICENSE.md").read_text()
    assert [name for name, _ in anime.examples] == [EXAMPLE]
    assert f"`{EXAMPLE}`" in licences and "draw_lineart_anime_girl.py" in licences
    # Seeded after every earlier ControlNet role, so their tiny weights (and the golden images)
    # stay what they were.
    later = ADDED_ROLES[ADDED_ROLES.index("lineart_anime") + 1 :]  # roles added after it
    assert controlnet_roles()[-1 - len(later)] == "lineart_anime"
    assert ADDED_ROLES.index("lineart_anime") > ADDED_ROLES.index("inpaint")


def test_the_example_is_a_black_line_drawing_on_white_paper(girl):
    grey = girl.min(axis=2)
    assert np.median(grey) == 255 and 0.02 < (grey < 128).mean() < 0.15
    assert len(np.unique(grey)) > 50  # anti-aliased, soft line edges


# ---- the network: equal to controlnet_aux's LineartAnimeDetector -----------------------------
@pytest.mark.parametrize(
    ("photo", "resolution", "detect_resolution"),
    [
        ("astronaut", 256, 256),  # a 256 x 256 network input
        ("astronaut", 256, 384),  # made at 384 (the network sees 512), brought to 256, inverted
        ("coffee", 256, 256),  # 256 x 384 -> the network sees 256 x 512
        ("coffee", 256, 128),  # 128 x 192 -> 256 x 256, back to 128 x 192, then to 256 x 384
        ("girl", 256, 256),
    ],
)
def test_maps_equal_controlnet_aux_lineart_anime(
    detector, reference, request, photo, resolution, detect_resolution
):
    image = request.getfixturevalue(photo)
    got = anime_map(detector, image, resolution, detect_resolution)
    expected = reference(
        image, detect_resolution=detect_resolution, image_resolution=resolution, output_type="np"
    )
    assert got.shape == expected.shape == (*got.shape[:2], 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)
    assert len(np.unique(got)) > 20  # a soft drawing, not a flat map


def test_the_network_sees_sides_brought_up_to_multiples_of_256(weights_dir, astronaut, monkeypatch):
    """8 down-samplings halve the sides 8 times: the photo is resized up to the next multiples
    of 256 for the network, and its drawing back to the photo's own size."""
    assert [side_up(n) for n in (1, 255, 256, 257, 384, 512, 513)] == [
        256, 256, 256, 512, 512, 512, 768,
    ]  # fmt: skip
    from annotators import lineart_anime

    seen = []
    build = lineart_anime.build_anime_generator

    def spying_build(width):
        network = build(width=width)
        network.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0].shape))
        return network

    monkeypatch.setattr(lineart_anime, "build_anime_generator", spying_build)
    detect = ANNOTATORS["lineart_anime"].load(LoadContext(weights_dir, dict(DEFAULT_MODEL_IDS)))
    photo = resize_to(astronaut, 300, 200)
    drawing = detect(photo)
    assert seen == [(1, 3, 512, 256)] and drawing.shape == (300, 200)
    # The map is that drawing inverted: white lines on black, as the ControlNet saw.
    annotator = ANNOTATORS["lineart_anime"]
    inverted = make_control_map(annotator, detect, photo, 200, None, {}, size=(300, 200))
    np.testing.assert_array_equal(inverted[:, :, 0], 255 - drawing)


def test_the_loader_builds_the_real_network_and_reads_the_files_width(weights_dir, tmp_path):
    """netG.pth's network: UnetGenerator(3, 1, 8, 64), 54.4 M parameters (218 MB in float32).
    The loader takes the width from the file's first convolution, so the tests' narrow file and
    a plain (unprefixed) state dict load through the same code."""
    real = build_anime_generator()
    assert GENERATOR_WIDTH == 64
    assert sum(p.numel() for p in real.parameters()) == 54_405_505
    test_file = weights_dir / DEFAULT_MODEL_IDS["annotators"] / LINEART_ANIME_WEIGHTS
    saved = torch.load(test_file)
    assert all(key.startswith("module.") for key in saved)
    assert {key.removeprefix("module.") for key in saved} == set(real.state_dict())
    plain = tmp_path / DEFAULT_MODEL_IDS["annotators"] / LINEART_ANIME_WEIGHTS
    plain.parent.mkdir(parents=True)
    torch.save({key.removeprefix("module."): value for key, value in saved.items()}, plain)
    context = LoadContext(weights_dir, dict(DEFAULT_MODEL_IDS))
    unprefixed = LoadContext(tmp_path, dict(DEFAULT_MODEL_IDS))
    photo = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        ANNOTATORS["lineart_anime"].load(context)(photo),
        ANNOTATORS["lineart_anime"].load(unprefixed)(photo),
    )


def test_missing_weights_name_the_file_and_the_download_command(tmp_path):
    (tmp_path / DEFAULT_MODEL_IDS["annotators"]).mkdir(parents=True)  # the folder, not the file
    with pytest.raises(ModelUnavailableError, match="netG.pth") as missing:
        ANNOTATORS["lineart_anime"].load(LoadContext(tmp_path, dict(DEFAULT_MODEL_IDS)))
    assert "python -m cli download annotators" in str(missing.value)


def test_the_module_does_not_import_torch():
    code = (
        "import sys; import annotators.lineart_anime; "
        "assert 'torch' not in sys.modules and 'controlnet_aux' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True)


# ---- end to end on the tiny models -------------------------------------------------------------
@pytest.mark.parametrize("annotator", ANNOTATOR_NAMES)
def test_each_annotator_generates_end_to_end_on_the_anime_controlnet(engine, girl, annotator):
    result = engine.generate("lineart_anime", girl, "1girl", annotator=annotator, **FAST)
    assert result.control_map.shape == (256, 256, 3)
    assert [picture.shape for picture in result.images] == [(256, 256, 3)]
    assert engine.cached_controlnets[-1] == ANIME_ID
    unit = result.parameters[0]["units"][0]
    assert (unit["condition"], unit["annotator"], unit["model_id"]) == (
        "lineart_anime",
        annotator,
        ANIME_ID,
    )
    annotated = engine.annotate(girl, annotator, image_resolution=256).image
    np.testing.assert_array_equal(result.control_map, annotated)


def test_the_anime_controlnet_is_its_own_model(engine, girl):
    """The same map and seed on the line-art tab give other images: another ControlNet."""
    images = {
        name: engine.generate(name, girl, "1girl", annotator="line_drawing", **FAST).images[0]
        for name in ("lineart_anime", "lineart")
    }
    assert not np.array_equal(images["lineart_anime"], images["lineart"])


def test_v10_on_the_anime_tab_runs_the_v11_model(engine, girl):
    assert engine.controlnet_id("lineart_anime", "v1.0") == ANIME_ID
    v10 = engine.generate(
        "lineart_anime", girl, "1girl", annotator="none", controlnet_version="v1.0", **FAST
    )
    assert v10.parameters[0]["units"][0]["model_id"] == ANIME_ID
    assert "Anime line art has no v1.0 ControlNet" in " ".join(v10.warnings), v10.warnings


def test_anime_line_art_composes_with_another_condition(engine, astronaut):
    result = engine.compose(
        [
            {"condition": "lineart_anime", "image": astronaut},  # its first annotator
            {"condition": "depth", "strength": 0.5},  # unit 1's image
        ],
        "a statue",
        **FAST,
    )
    assert len(result.control_maps) == 2 and len(result.images) == 1
    expected = engine.annotate(astronaut, "lineart_anime", image_resolution=256).image
    np.testing.assert_array_equal(result.control_maps[0], expected)


# ---- availability and download -----------------------------------------------------------------
def test_availability_knows_what_the_anime_tab_needs(models_dir, tmp_path, monkeypatch):
    from ui.status import tab_note

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert condition_status(CONDITIONS["lineart_anime"], Settings(models_dir=models_dir)).ready
    copy = tmp_path / "models"
    for model_id in (DEFAULT_MODEL_IDS["base"], ANIME_ID, DEFAULT_MODEL_IDS["annotators"]):
        shutil.copytree(models_dir / model_id, copy / model_id)
    settings = Settings(models_dir=copy)
    (copy / DEFAULT_MODEL_IDS["annotators"] / LINEART_ANIME_WEIGHTS).unlink()
    status = condition_status(CONDITIONS["lineart_anime"], settings)
    assert not status.ready and status.run_missing == ()
    assert list(status.annotator_missing) == ["lineart_anime"]  # line drawing and none run
    assert [need.file for need in status.default_annotator_missing] == [LINEART_ANIME_WEIGHTS]
    assert "python -m cli download annotators" in tab_note(status)
    shutil.rmtree(copy / ANIME_ID)
    status = condition_status(CONDITIONS["lineart_anime"], settings)
    assert [(need.role, need.model_id) for need in status.run_missing] == [
        ("lineart_anime", ANIME_ID)
    ]
    assert f"the anime line art ControlNet (`{ANIME_ID}`)" in status.run_missing[0].words
    assert "python -m cli download lineart_anime" in tab_note(status)


def test_download_knows_the_anime_files():
    assert download.rule_for("lineart_anime") == download.CONTROLNET_RULE
    assert download.rule_for("lineart_anime", "fp16") == download.HALF_CONTROLNET_RULE
    assert "lineart_anime" in download.ROLES  # --all fetches it
    annotators = download.rule_for("annotators")
    assert LINEART_ANIME_WEIGHTS in annotators.allow
    assert (LINEART_ANIME_WEIGHTS,) in annotators.requires
    assert list(download.plan_repos(["lineart_anime"], DEFAULT_MODEL_IDS, family="v10")) == [
        ANIME_ID
    ]


# ---- through a real server ---------------------------------------------------------------------
def test_the_anime_endpoint_and_annotate_run_on_the_server(server, engine, girl):
    client = Client(server.url, verbose=False)
    drawing = handle_file(ASSETS / EXAMPLE)
    gallery, seed = client.predict(
        image=drawing, prompt="1girl", seed=5, steps=1, api_name="/lineart_anime"
    )
    assert seed == 5 and len(gallery) == 2
    served = np.asarray(Image.open(gallery[0]["image"]).convert("RGB"))
    expected = engine.annotate(girl, "lineart_anime", image_resolution=256).image
    np.testing.assert_array_equal(served, expected)
    path, _ = client.predict(  # the map, and no pose JSON
        image=drawing, annotator="lineart_anime", image_resolution=256, api_name="/annotate"
    )
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), expected)
