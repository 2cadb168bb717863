"""HED, HED safe, fake scribble and M-LSD: real architectures, random weights, the app's load path.

The weights are the real controlnet_aux networks, seeded and saved as `MODELS_DIR/lllyasviel/
Annotators/<file>.pth`; the annotators load them through `load(LoadContext(...))` like the engine.
Maps are compared pixel for pixel with controlnet_aux's own detectors on the same weights, and the
fake-scribble post-processing is checked on hand-made edge maps. The three HED annotators share
one loaded network, freed with the last detector that holds it.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import weakref
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from controlnet_aux.hed import ControlNetHED_Apache2, HEDdetector
from controlnet_aux.mlsd import MLSDdetector
from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

from annotators import LoadContext, make_control_map
from annotators.hed import (
    HED_WEIGHTS,
    FakeScribbleAnnotator,
    HedAnnotator,
    HedSafeAnnotator,
    fake_scribble_from_edges,
)
from annotators.mlsd import MLSD_WEIGHTS, MlsdAnnotator
from annotators.scribble import ScribbleAnnotator
from annotators.util import HWC3, output_size
from errors import ModelUnavailableError
from pipelines.models.lru import ModelCache
from settings import DEFAULT_MODEL_IDS
from testkit.annotator_weights import save_hed_and_mlsd

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ANNOTATORS = {
    annotator.name: annotator
    for annotator in (HedAnnotator(), HedSafeAnnotator(), FakeScribbleAnnotator(), MlsdAnnotator())
}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """A MODELS_DIR holding the two annotator files, real architectures with seeded weights."""
    models_dir = tmp_path_factory.mktemp("annotator_models")
    save_hed_and_mlsd(models_dir)
    return models_dir


@pytest.fixture(scope="module")
def detectors(models_dir) -> dict:
    context = LoadContext(models_dir, dict(DEFAULT_MODEL_IDS), "cpu")
    return {name: annotator.load(context) for name, annotator in ANNOTATORS.items()}


def control_map(detectors, name, image, resolution=256, detect_resolution=256, **params):
    annotator = ANNOTATORS[name]
    checked = annotator.check_params(params)
    return make_control_map(
        annotator, detectors[name], image, resolution, detect_resolution, checked
    )


@pytest.fixture(scope="module")
def photo(astronaut) -> np.ndarray:
    """The astronaut at 256 x 256: CPU-friendly, and a multiple of 64 (no resizing in the path)."""
    return cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def maps(detectors, photo) -> dict[str, np.ndarray]:
    """Each annotator's map of `photo` at 256 (detect and output), (256, 256) uint8."""
    return {name: control_map(detectors, name, photo)[:, :, 0] for name in ANNOTATORS}


@pytest.mark.parametrize("name", list(ANNOTATORS))
@pytest.mark.parametrize("detect_resolution", [256, 128])
def test_maps_have_the_output_size(detectors, coffee, name, detect_resolution):
    result = control_map(detectors, name, coffee, 256, detect_resolution)
    assert result.shape == (*output_size(*coffee.shape[:2], 256), 3) == (256, 384, 3)
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result[:, :, 0], result[:, :, 2])  # grey
    if name in ("fake_scribble", "mlsd"):  # nearest-neighbour resizing keeps them binary
        assert set(np.unique(result)) <= {0, 255}


def test_hed_gives_soft_grey_edges(maps):
    assert len(np.unique(maps["hed"])) > 50  # soft values, not a binary map (seeded weights)


def test_hed_safe_quantises_hed_to_thirds(maps):
    edges = maps["hed"].astype(int)
    # safe_step: sigmoid below 1/3 -> 0, below 2/3 -> 0.5, else 1.0; edges = floor(255 * sigmoid).
    expected = np.where(edges < 85, 0, np.where(edges < 170, 127, 255))
    np.testing.assert_array_equal(maps["hed_safe"], expected)
    assert len(np.unique(maps["hed_safe"])) >= 2


def test_fake_scribble_is_binary_and_comes_from_hed(maps):
    assert set(np.unique(maps["fake_scribble"])) == {0, 255}
    np.testing.assert_array_equal(maps["fake_scribble"], fake_scribble_from_edges(maps["hed"]))


def test_maps_equal_controlnet_aux_on_the_same_weights(models_dir, detectors, maps, photo):
    folder = models_dir / DEFAULT_MODEL_IDS["annotators"]
    network = ControlNetHED_Apache2()
    network.load_state_dict(torch.load(folder / HED_WEIGHTS, weights_only=True))
    hed = HEDdetector(network.float().eval())
    model = MobileV2_MLSD_Large()
    model.load_state_dict(torch.load(folder / MLSD_WEIGHTS, weights_only=True))
    mlsd = MLSDdetector(model.eval())
    sizes = {"detect_resolution": 256, "image_resolution": 256, "output_type": "np"}

    references = {
        "hed": hed(photo, **sizes),
        "hed_safe": hed(photo, safe=True, **sizes),
        "fake_scribble": hed(photo, scribble=True, **sizes),
        "mlsd": mlsd(photo, 0.1, 0.1, **sizes),
    }
    for name, reference in references.items():  # (256, 256, 3), grey
        np.testing.assert_array_equal(HWC3(maps[name]), reference, name)
    strict = mlsd(photo, 0.5, 5.0, **sizes)
    got = control_map(detectors, "mlsd", photo, value_threshold=0.5, distance_threshold=5.0)
    np.testing.assert_array_equal(got, strict)


def test_mlsd_draws_white_lines_and_thresholds_prune_them(detectors, maps, photo):
    lines = maps["mlsd"]
    assert set(np.unique(lines)) == {0, 255} and 0 < (lines > 0).mean() < 0.2
    fewer = detectors["mlsd"](photo, value_threshold=0.1, distance_threshold=8.0)
    assert (fewer > 0).sum() < (lines > 0).sum()
    # Scores are sigmoids (at most 1): no segment passes 2.0, and the map is black, not an error.
    none = detectors["mlsd"](photo, value_threshold=2.0, distance_threshold=0.1)
    assert none.shape == (256, 256) and not none.any()


@pytest.mark.parametrize(
    ("name", "filename"),
    [("hed", HED_WEIGHTS), ("hed_safe", HED_WEIGHTS), ("fake_scribble", HED_WEIGHTS)]
    + [("mlsd", MLSD_WEIGHTS)],
)
def test_missing_weights_name_the_file(tmp_path, name, filename):
    (tmp_path / DEFAULT_MODEL_IDS["annotators"]).mkdir(parents=True)  # the folder, not the file
    with pytest.raises(ModelUnavailableError, match=filename):
        ANNOTATORS[name].load(LoadContext(tmp_path, dict(DEFAULT_MODEL_IDS), "cpu"))
    # Not in MODELS_DIR at all: offline, the Hub cache is asked and the error names the file too.
    elsewhere = LoadContext(tmp_path, {"annotators": "no-such-org/no-such-annotators"}, "cpu")
    with pytest.raises(ModelUnavailableError, match=filename):
        ANNOTATORS[name].load(elsewhere)


def hed_network(detector) -> torch.nn.Module:
    """The HED network a detector runs (the `network` its closure holds)."""
    return inspect.getclosurevars(detector).nonlocals["network"]


def test_hed_annotators_share_one_network(models_dir, detectors):
    hed = hed_network(detectors["hed"])
    assert isinstance(hed, ControlNetHED_Apache2)
    assert hed_network(detectors["fake_scribble"]) is hed
    assert hed_network(detectors["hed_safe"]) is hed
    # Loaded again while the module's detectors hold it: still the same object.
    context = LoadContext(models_dir, dict(DEFAULT_MODEL_IDS), "cpu")
    assert hed_network(HedSafeAnnotator().load(context)) is hed


def test_hed_network_is_freed_when_the_cache_evicts_its_last_detector(tmp_path, detectors):
    """Through the engine's ModelCache (2 slots): the network lives while any HED detector is
    cached and is garbage-collected with the last one; other weights get their own network."""
    save_hed_and_mlsd(tmp_path)  # another file than the module's: its own network
    context = LoadContext(tmp_path, dict(DEFAULT_MODEL_IDS), "cpu")
    cache = ModelCache(2)  # frees with gc.collect() on eviction, like the engine's

    def cached(name: str):
        return cache.get_or_load(name, lambda: ANNOTATORS[name].load(context))

    network = weakref.ref(hed_network(cached("hed")))
    assert network() is not hed_network(detectors["hed"])  # keyed by the weights file
    assert hed_network(cached("fake_scribble")) is network()
    cached("mlsd")  # evicts hed; fake_scribble still holds the network
    assert network() is not None
    assert hed_network(cached("hed_safe")) is network()  # evicts fake_scribble; reused
    cached("mlsd")
    cache.get_or_load("scribble", lambda: ScribbleAnnotator().detect)  # evicts hed_safe
    assert cache.keys() == ["mlsd", "scribble"]
    assert network() is None  # the last HED detector is gone: so is the network

    reloaded = hed_network(cached("hed"))  # a fresh load works after the free
    assert isinstance(reloaded, ControlNetHED_Apache2)


def test_annotator_modules_do_not_import_torch():
    code = (
        "import sys; import annotators.hed, annotators.mlsd; "
        "assert 'torch' not in sys.modules and 'controlnet_aux' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True)


# Fake-scribble post-processing on hand-made edge maps. The steps: sigma-3 blur, keep pixels
# that are a maximum along any of 4 directions and above 127 (nms), sigma-3 blur, keep > 4.


def test_fake_scribble_of_flat_maps():
    assert not fake_scribble_from_edges(np.zeros((64, 64), np.uint8)).any()
    # A flat map is a maximum everywhere; it survives where it is above 127.
    assert not fake_scribble_from_edges(np.full((64, 64), 100, np.uint8)).any()
    assert (fake_scribble_from_edges(np.full((64, 64), 200, np.uint8)) == 255).all()


def test_fake_scribble_drops_one_pixel_lines():
    # The first blur spreads a 1-px line of 255 to a peak of 255 * 0.133 = 34 < 127.
    edges = np.zeros((64, 64), np.uint8)
    edges[:, 32] = 255
    assert not fake_scribble_from_edges(edges).any()


def test_fake_scribble_widens_a_band_by_six_pixels():
    # A 16-px band of 255: after the first blur its inside is above 127 and its outside below,
    # and along the band every pixel is a maximum, so nms returns the band itself. The second
    # blur's tail 6 px out is 255 * P(Z > 5.5 / 3) = 8.5 (kept), 7 px out 3.9 (dropped).
    edges = np.zeros((64, 64), np.uint8)
    edges[:, 24:40] = 255
    expected = np.zeros((64, 64), np.uint8)
    expected[:, 24 - 6 : 40 + 6] = 255
    np.testing.assert_array_equal(fake_scribble_from_edges(edges), expected)
    np.testing.assert_array_equal(fake_scribble_from_edges(edges.T.copy()), expected.T)
    # A 3-channel map (the reference works on HWC3) gives the same map in every channel.
    coloured = fake_scribble_from_edges(np.repeat(edges[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(coloured, np.repeat(expected[:, :, None], 3, axis=2))


def test_fake_scribble_thins_a_soft_ridge_to_its_crest():
    # A soft vertical ridge (Gaussian profile, sigma 4, crest at column 32), growing brighter
    # downwards: each pixel off the crest has a brighter neighbour in all 4 directions, so nms
    # keeps the 1-px crest; the second blur widens it to 11 px (5 px out: 255 * 0.033 = 8.5, kept;
    # 6 px out: 4.59, which cv2's fixed-point uint8 blur, the reference's, rounds to 4: dropped).
    # Rows within 10 of the top and bottom are left out: with the blur's reflected border the
    # last row is a vertical maximum, so nms keeps more of it.
    columns = np.arange(64)
    profile = 255 * np.exp(-((columns - 32) ** 2) / (2 * 4.0**2))
    brightness = np.linspace(0.8, 1.0, 64)
    edges = (profile[None, :] * brightness[:, None]).round().astype(np.uint8)
    scribble = fake_scribble_from_edges(edges)
    expected_row = np.zeros(64, np.uint8)
    expected_row[32 - 5 : 32 + 6] = 255
    np.testing.assert_array_equal(scribble[10:54], np.tile(expected_row, (44, 1)))

    # The same ridge without the gradient is flat along its length: nms keeps every column above
    # 127 (28 to 36), and the map is 9 + 2 * 6 = 21 px wide.
    flat = np.repeat(profile.round().astype(np.uint8)[None, :], 64, axis=0)
    flat_row = np.zeros(64, np.uint8)
    flat_row[28 - 6 : 36 + 7] = 255
    np.testing.assert_array_equal(fake_scribble_from_edges(flat), np.tile(flat_row, (64, 1)))


def test_fake_scribble_is_made_at_the_output_size(detectors, photo):
    # As the reference: HED at the detect size, resized (linear) to the output size, then thinned.
    result = control_map(detectors, "fake_scribble", photo, 512, 256)
    hed = control_map(detectors, "hed", photo, 256, 256)[:, :, 0]
    expected = fake_scribble_from_edges(cv2.resize(hed, (512, 512), interpolation=cv2.INTER_LINEAR))
    assert result.shape == (512, 512, 3) and set(np.unique(result)) == {0, 255}
    np.testing.assert_array_equal(result[:, :, 0], expected)
