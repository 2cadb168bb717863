"""PiDiNet soft edges on the soft-edge tab: pidinet and pidinet_safe against controlnet_aux's
PidiNetDetector on the same random weights of the real architecture (a checkpoint laid out like
`table5_pidinet.pth`, loaded through the app's own loading code), their shared network, the tab end
to end on the tiny models, its checks, availability and download."""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from controlnet_aux.pidi import PidiNetDetector
from controlnet_aux.pidi.model import PiDiNet, pidinet
from gradio_client import Client, handle_file
from PIL import Image

import download
from annotators import ANNOTATORS, LoadContext, make_control_map
from annotators.pidinet import PIDINET_WEIGHTS
from annotators.util import resize_to
from availability import condition_status
from conditions import CONDITIONS
from errors import InvalidRequestError, ModelUnavailableError
from pipelines.models.lru import ModelCache
from settings import DEFAULT_MODEL_IDS, Settings
from testkit.annotator_weights import save_pidinet
from testkit.paths import ASSETS, PROJECT_ROOT

FAST = {"steps": 2, "image_resolution": 256, "seed": 7}
SOFTEDGE_ID = DEFAULT_MODEL_IDS["softedge"]
NAMES = ("pidinet", "pidinet_safe")


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    """A MODELS_DIR holding `table5_pidinet.pth`: seeded random weights of the real PiDiNet,
    written by testkit as the tests' MODELS_DIR holds them."""
    folder = tmp_path_factory.mktemp("pidinet_models")
    save_pidinet(folder)
    return folder


@pytest.fixture(scope="module")
def detectors(weights_dir) -> dict:
    context = LoadContext(weights_dir, dict(DEFAULT_MODEL_IDS), "cpu")
    return {name: ANNOTATORS[name].load(context) for name in NAMES}


@pytest.fixture(scope="module")
def reference(weights_dir) -> PidiNetDetector:
    """controlnet_aux's own detector, its network loaded as its from_pretrained loads it."""
    network = pidinet()
    checkpoint = torch.load(weights_dir / DEFAULT_MODEL_IDS["annotators"] / PIDINET_WEIGHTS)
    network.load_state_dict(
        {key.replace("module.", ""): value for key, value in checkpoint["state_dict"].items()}
    )
    return PidiNetDetector(network.eval())


def control_map(detectors, name, image, resolution=256, detect_resolution=256):
    annotator = ANNOTATORS[name]
    return make_control_map(
        annotator, detectors[name], image, resolution, detect_resolution, annotator.check_params({})
    )


# ---- the registry ------------------------------------------------------------------------------
def test_pidinet_sits_beside_hed_on_the_soft_edge_tab():
    softedge = CONDITIONS["hed"]
    assert softedge.annotators == ("hed", "hed_safe", "pidinet", "pidinet_safe", "none")
    assert softedge.controlnet_role == "softedge"  # the same v1.1 soft-edge ControlNet
    assert all(softedge.controlnet_role_for(name) == "softedge" for name in NAMES)
    assert "PiDiNet" in softedge.label and "PiDiNet" in softedge.description
    for name in NAMES:
        annotator = ANNOTATORS[name]
        assert annotator.needs == (("annotators", "table5_pidinet.pth"),)
        assert annotator.default_detect_resolution == 512 and annotator.params == ()


# ---- equal to controlnet_aux's PidiNetDetector ---------------------------------------------------
@pytest.mark.parametrize(
    ("photo", "resolution", "detect_resolution"),
    [
        ("astronaut", 256, 256),
        ("astronaut", 256, 128),  # made at 128, brought to 256 with INTER_LINEAR
        ("coffee", 256, 256),  # 256 x 384
        ("coffee", 256, 128),  # made at 128 x 192
    ],
)
@pytest.mark.parametrize("name", NAMES)
def test_maps_equal_controlnet_aux_pidinet(
    detectors, reference, request, name, photo, resolution, detect_resolution
):
    image = request.getfixturevalue(photo)
    got = control_map(detectors, name, image, resolution, detect_resolution)
    expected = reference(
        image,
        detect_resolution=detect_resolution,
        image_resolution=resolution,
        safe=name == "pidinet_safe",
        output_type="np",
    )
    assert got.shape == expected.shape and got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


def test_pidinet_gives_soft_grey_edges_and_safe_quantises_them(detectors, astronaut):
    photo = resize_to(astronaut, 256, 256)
    edges = detectors["pidinet"](photo).astype(int)
    assert edges.shape == (256, 256) and len(np.unique(edges)) > 100  # seeded weights
    safe = detectors["pidinet_safe"](photo)
    # safe_step: sigmoid below 1/3 -> 0, below 2/3 -> 0.5, else 1.0; edges = floor(255 * sigmoid).
    expected = np.where(edges < 85, 0, np.where(edges < 170, 127, 255))
    np.testing.assert_array_equal(safe, expected)
    assert set(np.unique(safe)) == {0, 127, 255}


def test_the_network_reads_the_photo_in_bgr_order(detectors, astronaut):
    """As lllyasviel's annotator and controlnet_aux do: swapping R and B changes the map."""
    photo = resize_to(astronaut, 256, 256)
    swapped = np.ascontiguousarray(photo[:, :, ::-1])
    assert not np.array_equal(detectors["pidinet"](photo), detectors["pidinet"](swapped))


def test_the_checkpoint_is_laid_out_like_table5_pidinet(weights_dir):
    from annotators.weights import load_state_dict

    path = weights_dir / DEFAULT_MODEL_IDS["annotators"] / PIDINET_WEIGHTS
    checkpoint = torch.load(path, weights_only=True)
    assert list(checkpoint) == ["state_dict"]
    assert all(key.startswith("module.") for key in checkpoint["state_dict"])
    state = load_state_dict(path)  # the app's loader unwraps `state_dict`
    assert {key.removeprefix("module.") for key in state} == set(pidinet().state_dict())
    parameters = sum(value.numel() for value in state.values())
    assert 600_000 < parameters < 800_000  # ~0.7 M, the real file's ~2.9 MB


def pidinet_network(detector) -> torch.nn.Module:
    return inspect.getclosurevars(detector).nonlocals["network"]


def test_pidinet_and_pidinet_safe_share_one_network(weights_dir, detectors):
    network = pidinet_network(detectors["pidinet"])
    assert isinstance(network, PiDiNet)
    assert pidinet_network(detectors["pidinet_safe"]) is network
    context = LoadContext(weights_dir, dict(DEFAULT_MODEL_IDS), "cpu")
    assert pidinet_network(ANNOTATORS["pidinet"].load(context)) is network


def test_the_network_is_freed_with_its_last_detector(tmp_path):
    save_pidinet(tmp_path)  # another file than the module's: its own network
    context = LoadContext(tmp_path, dict(DEFAULT_MODEL_IDS), "cpu")
    cache = ModelCache(1)

    def cached(name: str):
        return cache.get_or_load(name, lambda: ANNOTATORS[name].load(context))

    network = weakref.ref(pidinet_network(cached("pidinet")))
    assert pidinet_network(cached("pidinet_safe")) is network()  # evicts pidinet; reused
    cache.get_or_load("none", lambda: ANNOTATORS["none"].detect)  # evicts pidinet_safe
    assert network() is None


@pytest.mark.parametrize("name", NAMES)
def test_missing_weights_name_the_file(tmp_path, name):
    (tmp_path / DEFAULT_MODEL_IDS["annotators"]).mkdir(parents=True)
    with pytest.raises(ModelUnavailableError, match=PIDINET_WEIGHTS) as missing:
        ANNOTATORS[name].load(LoadContext(tmp_path, dict(DEFAULT_MODEL_IDS), "cpu"))
    assert "python -m cli download annotators" in str(missing.value)
    elsewhere = LoadContext(tmp_path, {"annotators": "no-such-org/no-such-annotators"}, "cpu")
    with pytest.raises(ModelUnavailableError, match=PIDINET_WEIGHTS):
        ANNOTATORS[name].load(elsewhere)


def test_the_module_does_not_import_torch():
    code = (
        "import sys; import annotators.pidinet; "
        "assert 'torch' not in sys.modules and 'controlnet_aux' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True)


# ---- end to end on the tiny models -------------------------------------------------------------
@pytest.mark.parametrize("annotator", NAMES)
def test_pidinet_generates_end_to_end_on_the_soft_edge_tab(engine, coffee, annotator):
    result = engine.generate("hed", coffee, "a cup", annotator=annotator, **FAST)
    assert result.control_map.shape == (256, 384, 3)
    assert [image.shape for image in result.images] == [(256, 384, 3)]
    assert result.images[0].std() > 0
    assert engine.cached_controlnets[-1] == SOFTEDGE_ID
    unit = result.parameters[0]["units"][0]
    assert (unit["condition"], unit["annotator"], unit["model_id"]) == (
        "hed",
        annotator,
        SOFTEDGE_ID,
    )
    annotated = engine.annotate(coffee, annotator, image_resolution=256).image
    np.testing.assert_array_equal(result.control_map, annotated)


def test_pidinet_and_hed_give_other_maps_and_images(engine, coffee):
    runs = {
        name: engine.generate("hed", coffee, "a cup", annotator=name, **FAST)
        for name in ("hed", "pidinet")
    }
    assert not np.array_equal(runs["hed"].control_map, runs["pidinet"].control_map)
    assert not np.array_equal(runs["hed"].images[0], runs["pidinet"].images[0])


def test_v10_runs_pidinet_maps_on_the_papers_hed_model(engine):
    assert engine.controlnet_id("softedge", "v1.0") == "lllyasviel/sd-controlnet-hed"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (2048, "`detect_resolution` must be between 128 and 1024, got 2048."),
        (100, "`detect_resolution` must be between 128 and 1024, got 100."),
        ("fine", "`detect_resolution` must be a number, got 'fine'."),
    ],
)
@pytest.mark.parametrize("annotator", NAMES)
def test_the_engine_checks_the_annotator_resolution(engine, coffee, annotator, value, message):
    with pytest.raises(InvalidRequestError) as refused:
        engine.generate(
            "hed", coffee, "a cup", annotator=annotator, detect_resolution=value, **FAST
        )
    assert message in str(refused.value)
    with pytest.raises(InvalidRequestError) as refused:
        engine.annotate(coffee, annotator, detect_resolution=value)
    assert message in str(refused.value)


def test_the_soft_edge_tab_refuses_other_annotators_parameters(engine, coffee):
    with pytest.raises(InvalidRequestError, match=r"Unknown parameter\(s\): value_threshold"):
        engine.generate("hed", coffee, "a cup", annotator="pidinet", value_threshold=0.2, **FAST)


# ---- availability --------------------------------------------------------------------------------
def test_availability_knows_what_pidinet_needs(models_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert condition_status(CONDITIONS["hed"], Settings(models_dir=models_dir)).ready
    copy = tmp_path / "models"
    for model_id in (DEFAULT_MODEL_IDS["base"], SOFTEDGE_ID, DEFAULT_MODEL_IDS["annotators"]):
        shutil.copytree(models_dir / model_id, copy / model_id)
    (copy / DEFAULT_MODEL_IDS["annotators"] / PIDINET_WEIGHTS).unlink()
    status = condition_status(CONDITIONS["hed"], Settings(models_dir=copy))
    assert status.ready  # HED, the tab's default, is here
    assert sorted(status.annotator_missing) == ["pidinet", "pidinet_safe"]
    assert [need.file for need in status.annotator_missing["pidinet"]] == [PIDINET_WEIGHTS]


# ---- download ------------------------------------------------------------------------------------
def test_download_fetches_table5_pidinet_with_the_annotators(tmp_path):
    rule = download.rule_for("annotators")
    assert PIDINET_WEIGHTS in rule.allow and (PIDINET_WEIGHTS,) in rule.requires
    mirror = tmp_path / "hub"
    save_pidinet(mirror)
    folder = mirror / DEFAULT_MODEL_IDS["annotators"]
    for name in download.ANNOTATOR_FILES:
        if not (folder / name).exists():
            (folder / name).write_bytes(b"x")
    (folder / "table5_pidinet.pth.old").write_bytes(b"x")
    out = tmp_path / "models"
    result = subprocess.run(
        [sys.executable, "-m", "cli", "download", "annotators", "--source", mirror]
        + ["--models-dir", out],
        cwd=PROJECT_ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"  {PIDINET_WEIGHTS} (" in result.stdout
    copied = out / DEFAULT_MODEL_IDS["annotators"]
    assert sorted(path.name for path in copied.iterdir()) == sorted(download.ANNOTATOR_FILES)
    context = LoadContext(out, dict(DEFAULT_MODEL_IDS), "cpu")
    detector = ANNOTATORS["pidinet"].load(context)  # the copy loads
    assert detector(np.zeros((64, 64, 3), np.uint8)).shape == (64, 64)


# ---- through a real server ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server.url, verbose=False)


def test_pidinet_runs_on_the_server(client, engine, coffee):
    photo = handle_file(ASSETS / "coffee.jpg")
    gallery, seed = client.predict(
        image=photo, prompt="a cup", annotator="pidinet", seed=3, steps=1, api_name="/hed"
    )
    assert seed == 3 and len(gallery) == 2
    served = np.asarray(Image.open(gallery[0]["image"]).convert("RGB"))
    expected = engine.annotate(coffee, "pidinet", image_resolution=256).image  # the server's
    np.testing.assert_array_equal(served, expected)
    sizes = {"image_resolution": 256, "detect_resolution": 256}  # no resize after the network
    path, _ = client.predict(image=photo, annotator="pidinet_safe", **sizes, api_name="/annotate")
    annotated = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(annotated, engine.annotate(coffee, "pidinet_safe", **sizes).image)
    assert set(np.unique(annotated)) == {0, 127, 255}
