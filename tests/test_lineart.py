"""Line art: the realistic and coarse networks against controlnet_aux's LineartDetector on the
same random weights of the real architecture (loaded through the app's own loading code), the
standard rule against a reference written from AUTOMATIC1111's, the line drawing's inversion, the
condition end to end on the tiny models, its checks, availability and download."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from controlnet_aux.lineart import Generator, LineartDetector
from controlnet_aux.lineart_standard import LineartStandardDetector
from gradio_client import Client, handle_file
from PIL import Image

import download
from annotators import ANNOTATORS, LoadContext, make_control_map
from annotators.lineart import (
    LINEART_COARSE_WEIGHTS,
    LINEART_WEIGHTS,
    line_drawing,
    lineart_standard,
)
from annotators.util import HWC3, resize_image, resize_to
from availability import condition_status
from conditions import CONDITIONS
from errors import InvalidRequestError, ModelUnavailableError
from settings import DEFAULT_MODEL_IDS, V10_MODEL_IDS, Settings
from testkit.annotator_weights import save_lineart
from testkit.paths import ASSETS, PROJECT_ROOT

FAST = {"steps": 2, "image_resolution": 256, "seed": 7}
LINEART_ID = "lllyasviel/control_v11p_sd15_lineart"
NETWORKS = ("lineart", "lineart_coarse")
ANNOTATOR_NAMES = ("lineart", "lineart_coarse", "lineart_standard", "line_drawing", "none")


def reference_standard(image: np.ndarray) -> np.ndarray:
    """AUTOMATIC1111's lineart_standard on an image already at the annotator resolution, written
    out: edge-pad to multiples of 64, blur(sigma 6) - image, min over the channels, clip at 0,
    divide by max(16, median of the values above 8), times 127, clip, truncate, cut the pad."""
    height, width = image.shape[:2]
    pad_height, pad_width = (-height) % 64, (-width) % 64
    padded = np.pad(image, [[0, pad_height], [0, pad_width], [0, 0]], mode="edge")
    x = padded.astype(np.float32)
    g = cv2.GaussianBlur(x, (0, 0), 6.0)
    intensity = np.min(g - x, axis=2).clip(0, 255)
    above = intensity[intensity > 8]
    intensity /= max(16, np.median(above)) if above.size else 16
    intensity *= 127
    return intensity.clip(0, 255).astype(np.uint8)[:height, :width]


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    """A MODELS_DIR holding `sk_model.pth` and `sk_model2.pth`: seeded random weights of the
    real Generator(3, 1, 3), written by testkit (as the tests' MODELS_DIR holds them)."""
    folder = tmp_path_factory.mktemp("lineart_models")
    save_lineart(folder)
    return folder


@pytest.fixture(scope="module")
def detectors(weights_dir) -> dict:
    context = LoadContext(weights_dir, dict(DEFAULT_MODEL_IDS), "cpu")
    return {name: ANNOTATORS[name].load(context) for name in ANNOTATOR_NAMES}


@pytest.fixture(scope="module")
def reference(weights_dir) -> LineartDetector:
    """controlnet_aux's own detector, built as its from_pretrained builds it, on the same files."""
    folder = weights_dir / DEFAULT_MODEL_IDS["annotators"]
    networks = []
    for filename in (LINEART_WEIGHTS, LINEART_COARSE_WEIGHTS):
        network = Generator(3, 1, 3)
        network.load_state_dict(torch.load(folder / filename, map_location="cpu"))
        networks.append(network.eval())
    return LineartDetector(*networks)


@pytest.fixture(scope="module")
def teapot() -> np.ndarray:
    """The tab's example: black pen lines on white paper, RGB (512, 512, 3)."""
    return np.asarray(Image.open(ASSETS / "lineart_teapot.png").convert("RGB"))


def control_map(detectors, name, image, resolution=256, detect_resolution=256, **params):
    annotator = ANNOTATORS[name]
    checked = annotator.check_params(params)
    return make_control_map(
        annotator, detectors[name], image, resolution, detect_resolution, checked
    )


# ---- the registry ------------------------------------------------------------------------------
def test_the_lineart_condition_is_an_entry_with_its_role_annotators_and_examples():
    lineart = CONDITIONS["lineart"]
    assert (lineart.controlnet_role, lineart.annotators) == ("lineart", ANNOTATOR_NAMES)
    assert DEFAULT_MODEL_IDS["lineart"] == LINEART_ID
    assert "lineart" not in V10_MODEL_IDS  # no v1.0 model: see the v1.0 test below
    assert lineart.default_detect_resolution == 512
    licences = (ASSETS / "LICENSE.md").read_text()
    assert lineart.examples[0][0] == "lineart_teapot.png"
    for name, prompt in lineart.examples:
        assert (ASSETS / name).is_file() and f"`{name}`" in licences and prompt
    assert "made by this project's code" in licences
    assert ANNOTATORS["lineart"].needs == (("annotators", "sk_model.pth"),)
    assert ANNOTATORS["lineart_coarse"].needs == (("annotators", "sk_model2.pth"),)
    for name in ("lineart_standard", "line_drawing"):
        assert ANNOTATORS[name].needs == () and ANNOTATORS[name].params == ()
    assert ANNOTATORS["lineart_standard"].default_detect_resolution == 512
    assert ANNOTATORS["line_drawing"].default_detect_resolution is None  # the output size
    assert lineart.params == ()  # only the annotator resolution


def test_the_example_is_a_black_line_drawing_on_white_paper(teapot):
    grey = teapot.min(axis=2)
    assert np.median(grey) == 255 and 0.02 < (grey < 128).mean() < 0.15
    assert len(np.unique(grey)) > 50  # anti-aliased, soft line edges


# ---- realistic and coarse: equal to controlnet_aux's LineartDetector -----------------------------
@pytest.mark.parametrize(
    ("photo", "resolution", "detect_resolution"),
    [
        ("astronaut", 256, 256),  # 512 -> 256 (area) before the network
        ("astronaut", 256, 128),  # the map made at 128 and brought to 256 (linear), then inverted
        ("coffee", 256, 256),  # 400 x 600 -> 256 x 384
        ("coffee", 256, 128),  # made at 128 x 192, brought to the output's 256 x 384
    ],
)
@pytest.mark.parametrize("name", NETWORKS)
def test_maps_equal_controlnet_aux_lineart(
    detectors, reference, request, name, photo, resolution, detect_resolution
):
    image = request.getfixturevalue(photo)
    got = control_map(detectors, name, image, resolution, detect_resolution)
    expected = reference(
        image,
        coarse=name == "lineart_coarse",
        detect_resolution=detect_resolution,
        image_resolution=resolution,
        output_type="np",
    )
    assert got.shape == expected.shape == (*got.shape[:2], 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


def test_realistic_and_coarse_are_two_networks_with_soft_maps(detectors, astronaut):
    realistic = control_map(detectors, "lineart", astronaut)
    coarse = control_map(detectors, "lineart_coarse", astronaut)
    assert not np.array_equal(realistic, coarse)  # sk_model.pth and sk_model2.pth differ
    for lines in (realistic, coarse):
        np.testing.assert_array_equal(lines[:, :, 0], lines[:, :, 2])  # grey
        assert len(np.unique(lines)) > 50  # soft grey levels (seeded weights)


def test_the_map_is_the_networks_drawing_inverted(detectors, astronaut):
    """The detector returns the network's dark-on-light drawing (sigmoid x 255, truncated); the
    map is its inversion: white lines on black, as the v1.1 ControlNet saw."""
    photo = resize_to(astronaut, 256, 256)
    drawing = detectors["lineart"](photo)
    assert drawing.shape == (256, 256) and drawing.dtype == np.uint8
    np.testing.assert_array_equal(control_map(detectors, "lineart", photo)[:, :, 0], 255 - drawing)


def test_the_weights_load_through_the_apps_loader_as_plain_state_dicts(weights_dir):
    from annotators.weights import load_state_dict

    state = load_state_dict(weights_dir / DEFAULT_MODEL_IDS["annotators"] / LINEART_WEIGHTS)
    network = Generator(3, 1, 3)
    assert state.keys() == network.state_dict().keys()
    parameters = sum(value.numel() for value in state.values())
    assert 4_000_000 < parameters < 4_500_000  # ~17 MB in float32, as the real file


@pytest.mark.parametrize(
    ("name", "filename"), [("lineart", "sk_model.pth"), ("lineart_coarse", "sk_model2.pth")]
)
def test_missing_weights_name_the_file(tmp_path, name, filename):
    (tmp_path / DEFAULT_MODEL_IDS["annotators"]).mkdir(parents=True)  # the folder, not the file
    with pytest.raises(ModelUnavailableError, match=filename) as missing:
        ANNOTATORS[name].load(LoadContext(tmp_path, dict(DEFAULT_MODEL_IDS), "cpu"))
    assert "python -m cli download annotators" in str(missing.value)


def test_annotator_modules_do_not_import_torch():
    code = (
        "import sys; import annotators.lineart; "
        "assert 'torch' not in sys.modules and 'controlnet_aux' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True)


# ---- lineart_standard: AUTOMATIC1111's rule ---------------------------------------------------
@pytest.mark.parametrize("picture", ["astronaut", "coffee", "teapot"])
def test_lineart_standard_equals_the_reference_rule(detectors, request, picture):
    image = request.getfixturevalue(picture)
    got = control_map(detectors, "lineart_standard", image, 256, 256)
    at_detect = resize_image(image, 256)  # the annotator resolution, as for every annotator
    expected = reference_standard(at_detect)
    assert got.shape[:2] == expected.shape  # detect 256 = output 256: no resize after
    np.testing.assert_array_equal(got[:, :, 0], expected)
    # controlnet_aux's LineartStandardDetector (the ComfyUI port of the same rule) agrees.
    ported = LineartStandardDetector()(at_detect, detect_resolution=256, output_type="np")
    np.testing.assert_array_equal(HWC3(got[:, :, 0]), ported)


def test_lineart_standard_pads_to_64_like_the_extension():
    """On an image that is not a multiple of 64 the rule runs on the edge-padded image (the blur
    and the median see the padding), then the padding is cut off."""
    rng = np.random.default_rng(3)
    image = cv2.GaussianBlur(rng.integers(0, 256, (100, 150, 3), dtype=np.uint8), (0, 0), 2)
    got = lineart_standard(image)
    assert got.shape == (100, 150)
    np.testing.assert_array_equal(got, reference_standard(image))
    unpadded = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 6.0)
    assert not np.array_equal(got, _without_padding(image, unpadded))


def _without_padding(image, blurred):
    intensity = np.min(blurred - image.astype(np.float32), axis=2).clip(0, 255)
    intensity /= max(16, np.median(intensity[intensity > 8]))
    return (intensity * 127).clip(0, 255).astype(np.uint8)


def test_lineart_standard_draws_dark_lines_white_and_paper_black(teapot):
    lines = lineart_standard(teapot)
    dark = teapot.min(axis=2) < 64
    assert lines[dark].mean() > 100 and np.median(lines[~dark]) == 0
    # A flat image has no line: no value passes 8, the normaliser is 16, and the map is black.
    assert not lineart_standard(np.full((64, 64, 3), 180, np.uint8)).any()
    # Brighter than the surround is no line (clipped at 0): a white line on black gives ~nothing.
    inverted = lineart_standard(255 - teapot)
    assert inverted[dark].mean() < 5


# ---- line_drawing: my own drawing ---------------------------------------------------------------
def test_line_drawing_inverts_black_lines_on_white(detectors, teapot):
    result = control_map(detectors, "line_drawing", teapot, 512)
    np.testing.assert_array_equal(result[:, :, 0], 255 - teapot.min(axis=2))
    assert np.median(result) == 0 and result.max() == 255  # white lines on black


def test_line_drawing_keeps_white_lines_on_black_and_uses_the_inked_channel(teapot):
    light_on_dark = 255 - teapot
    np.testing.assert_array_equal(line_drawing(light_on_dark), light_on_dark.max(axis=2))
    blue_ink = np.full_like(teapot, 255)
    ink = teapot.min(axis=2) < 128
    blue_ink[ink] = (30, 60, 200)  # a blue pen: its darkest channel (red) makes the line
    lines = line_drawing(blue_ink)
    assert (lines[ink] == 225).all() and not lines[~ink].any()


def test_line_drawing_differs_from_none_on_a_drawing(engine, teapot):
    drawn = engine.annotate(teapot, "line_drawing", image_resolution=256).image
    as_is = engine.annotate(teapot, "none", image_resolution=256).image
    np.testing.assert_array_equal(as_is, resize_to(teapot, 256, 256))  # none is unchanged
    np.testing.assert_array_equal(drawn, 255 - as_is.min(axis=2, keepdims=True).repeat(3, 2))


# ---- end to end on the tiny models -------------------------------------------------------------
@pytest.mark.parametrize("annotator", ANNOTATOR_NAMES)
def test_each_lineart_annotator_generates_end_to_end(engine, coffee, teapot, annotator):
    image = teapot if annotator in ("line_drawing", "none") else coffee
    result = engine.generate("lineart", image, "a teapot", annotator=annotator, **FAST)
    height, width = result.control_map.shape[:2]
    assert (height, width) == ((256, 256) if image is teapot else (256, 384))
    assert [picture.shape for picture in result.images] == [(height, width, 3)]
    assert result.images[0].std() > 0
    assert engine.cached_controlnets[-1] == LINEART_ID
    unit = result.parameters[0]["units"][0]
    assert (unit["condition"], unit["annotator"], unit["model_id"]) == (
        "lineart",
        annotator,
        LINEART_ID,
    )
    annotated = engine.annotate(image, annotator, image_resolution=256).image
    np.testing.assert_array_equal(result.control_map, annotated)


def test_the_lineart_controlnet_steers_the_image(engine, teapot):
    """The line art role loads its own ControlNet: the same map and seed give other images."""
    images = {
        name: engine.generate(name, teapot, "a teapot", annotator="none", **FAST).images[0]
        for name in ("lineart", "scribble")
    }
    assert not np.array_equal(images["lineart"], images["scribble"])


def test_v10_on_the_lineart_tab_runs_the_v11_model(engine, teapot):
    assert engine.controlnet_id("lineart", "v1.0") == LINEART_ID
    v11 = engine.generate("lineart", teapot, "a teapot", annotator="line_drawing", **FAST)
    v10 = engine.generate(
        "lineart", teapot, "a teapot", annotator="line_drawing", controlnet_version="v1.0", **FAST
    )
    np.testing.assert_array_equal(v10.images[0], v11.images[0])
    assert v10.parameters[0]["units"][0]["model_id"] == LINEART_ID


def test_lineart_composes_with_another_condition(engine, astronaut):
    result = engine.compose(
        [
            {"condition": "lineart", "image": astronaut, "annotator": "lineart_standard"},
            {"condition": "depth", "strength": 0.5},  # unit 1's image
        ],
        "a statue",
        **FAST,
    )
    assert len(result.control_maps) == 2 and len(result.images) == 1
    expected = engine.annotate(astronaut, "lineart_standard", image_resolution=256).image
    np.testing.assert_array_equal(result.control_maps[0], expected)


# ---- checks ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "message"),
    [
        (2048, "`detect_resolution` must be between 128 and 1024, got 2048."),
        (64, "`detect_resolution` must be between 128 and 1024, got 64."),
        (300.5, "`detect_resolution` must be a whole number, got 300.5."),
        ("high", "`detect_resolution` must be a number, got 'high'."),
    ],
)
@pytest.mark.parametrize("annotator", ["lineart", "lineart_coarse", "lineart_standard"])
def test_the_engine_checks_the_annotator_resolution(engine, coffee, annotator, value, message):
    with pytest.raises(InvalidRequestError) as refused:
        engine.generate(
            "lineart", coffee, "a cup", annotator=annotator, detect_resolution=value, **FAST
        )
    assert message in str(refused.value)
    with pytest.raises(InvalidRequestError) as refused:
        engine.annotate(coffee, annotator, detect_resolution=value)
    assert message in str(refused.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"low_threshold": 50}, "Unknown parameter(s): low_threshold."),
        ({"annotator": "lineart_anime"}, "The Line art condition has no annotator"),
    ],
)
def test_the_engine_refuses_what_the_lineart_tab_does_not_have(engine, coffee, options, message):
    with pytest.raises(InvalidRequestError) as refused:
        engine.generate("lineart", coffee, "a cup", **{**FAST, **options})
    assert message in str(refused.value)


# ---- availability --------------------------------------------------------------------------------
def test_availability_knows_what_the_lineart_annotators_need(models_dir, tmp_path, monkeypatch):
    from ui.status import tab_note

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = Settings(models_dir=models_dir)
    assert condition_status(CONDITIONS["lineart"], settings).ready
    copy = tmp_path / "models"
    for model_id in (DEFAULT_MODEL_IDS["base"], LINEART_ID, DEFAULT_MODEL_IDS["annotators"]):
        shutil.copytree(models_dir / model_id, copy / model_id)
    settings = Settings(models_dir=copy)
    (copy / DEFAULT_MODEL_IDS["annotators"] / LINEART_WEIGHTS).unlink()
    status = condition_status(CONDITIONS["lineart"], settings)
    assert not status.ready and status.run_missing == ()
    assert list(status.annotator_missing) == ["lineart"]  # coarse, standard, drawing, none run
    assert [need.file for need in status.default_annotator_missing] == [LINEART_WEIGHTS]
    note = tab_note(status)
    assert "python -m cli download annotators" in note and "Line art (coarse)" in note
    shutil.rmtree(copy / LINEART_ID)
    status = condition_status(CONDITIONS["lineart"], settings)
    assert [(need.role, need.model_id) for need in status.run_missing] == [("lineart", LINEART_ID)]
    assert "the line art ControlNet (`lllyasviel/control_v11p_sd15_lineart`)" in (
        status.run_missing[0].words
    )
    assert "python -m cli download lineart" in tab_note(status)


# ---- download ------------------------------------------------------------------------------------
def test_download_knows_the_lineart_files():
    assert download.rule_for("lineart") == download.CONTROLNET_RULE
    assert download.rule_for("lineart", "fp16") == download.HALF_CONTROLNET_RULE
    assert "lineart" in download.ROLES  # --all fetches it
    annotators = download.rule_for("annotators")
    assert {LINEART_WEIGHTS, LINEART_COARSE_WEIGHTS} <= set(annotators.allow)
    assert (LINEART_WEIGHTS,) in annotators.requires
    assert (LINEART_COARSE_WEIGHTS,) in annotators.requires
    # The v1.0 family has no line art model: the v1.1 repo is fetched.
    assert list(download.plan_repos(["lineart"], DEFAULT_MODEL_IDS, family="v10")) == [LINEART_ID]


CONTROLNET_LISTING = {
    "config.json": 5,
    "diffusion_pytorch_model.safetensors": 9,
    "diffusion_pytorch_model.fp16.safetensors": 4,
    "diffusion_pytorch_model.bin": 9,
    "images/input.png": 3,
}
# A listing like lllyasviel/Annotators': many annotators' files, of which the app takes some.
ANNOTATORS_LISTING = {
    name: size
    for size, name in enumerate(
        (*download.ANNOTATOR_FILES, "ZoeD_M12_N.pt", "res101.pth", "sk_model.pth.bak"),
        start=10,
    )
}


def fake_hub(monkeypatch) -> list[tuple[str, list[str]]]:
    """`hub_listing` and `snapshot_download` faked in-process: (repo, allow_patterns) per call."""
    import huggingface_hub

    calls = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def listing(repo_id):
        return ANNOTATORS_LISTING if repo_id == "lllyasviel/Annotators" else CONTROLNET_LISTING

    monkeypatch.setattr(download, "hub_listing", listing)

    def fake_snapshot(repo_id, *, local_dir, allow_patterns):
        calls.append((repo_id, sorted(allow_patterns)))
        for name in allow_patterns:
            path = Path(local_dir) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * listing(repo_id)[name])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    return calls


def test_cli_download_plans_the_lineart_files(monkeypatch, tmp_path, capsys):
    import cli

    calls = fake_hub(monkeypatch)
    argv = ["download", "lineart", "annotators", "--models-dir", str(tmp_path)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert calls[0] == (LINEART_ID, ["config.json", "diffusion_pytorch_model.safetensors"])
    repo, fetched = calls[1]
    assert repo == "lllyasviel/Annotators" and fetched == sorted(download.ANNOTATOR_FILES)
    assert {LINEART_WEIGHTS, LINEART_COARSE_WEIGHTS} <= set(fetched)
    assert "ZoeD_M12_N.pt" not in fetched and "sk_model.pth.bak" not in fetched
    folder = tmp_path / "lllyasviel/Annotators"
    assert (folder / LINEART_WEIGHTS).is_file() and (folder / LINEART_COARSE_WEIGHTS).is_file()
    out = capsys.readouterr().out
    assert f"lllyasviel/Annotators: fetched {len(download.ANNOTATOR_FILES)} file(s)" in out
    assert f"  {LINEART_COARSE_WEIGHTS} (" in out


def test_downloaded_lineart_weights_load_and_match(tmp_path, weights_dir, detectors, astronaut):
    """`download annotators --source` copies the files; the annotators then load them."""
    mirror = weights_dir  # laid out like the Hub
    for name in download.ANNOTATOR_FILES:  # the other annotators' files: stand-ins
        path = mirror / "lllyasviel/Annotators" / name
        if not path.exists():
            path.write_bytes(b"x")
    out = tmp_path / "models"
    assert download.download(["annotators"], out, source=mirror, echo=lambda line: None) == []
    context = LoadContext(out, dict(DEFAULT_MODEL_IDS), "cpu")
    for name in NETWORKS:
        detector = ANNOTATORS[name].load(context)
        copied = make_control_map(ANNOTATORS[name], detector, astronaut, 256, 256)
        np.testing.assert_array_equal(copied, control_map(detectors, name, astronaut))


# ---- through a real server ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server.url, verbose=False)


def test_the_lineart_endpoint_and_annotate_run_on_the_server(client, engine, teapot):
    drawing = handle_file(ASSETS / "lineart_teapot.png")
    gallery, seed = client.predict(
        image=drawing,
        prompt="a teapot",
        annotator="line_drawing",
        seed=5,
        steps=1,
        api_name="/lineart",
    )
    assert seed == 5 and [item["caption"] for item in gallery] == [
        "Control map",
        "Image 1 · seed 5",
    ]
    served = np.asarray(Image.open(gallery[0]["image"]).convert("RGB"))
    np.testing.assert_array_equal(
        served, engine.annotate(teapot, "line_drawing", image_resolution=256).image
    )
    for annotator in ("lineart", "lineart_coarse", "lineart_standard"):
        path, _ = client.predict(  # the map, and no pose JSON
            image=drawing,
            annotator=annotator,
            image_resolution=256,
            detect_resolution=256,
            api_name="/annotate",
        )
        annotated = np.asarray(Image.open(path).convert("RGB"))
        expected = engine.annotate(
            teapot, annotator, image_resolution=256, detect_resolution=256
        ).image
        np.testing.assert_array_equal(annotated, expected, annotator)
