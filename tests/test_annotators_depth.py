"""Depth and normal maps: MiDaS depth, v1.0 normals from depth, NormalBAE.

The MiDaS model is a tiny but real DPT-Hybrid (`DPTConfig(is_hybrid=True)`, BiT backbone) with
random weights, saved like the Hub repo `Intel/dpt-hybrid-midas` (config.json, model.safetensors,
preprocessor_config.json) under MODELS_DIR, so it loads through the app's `pretrained_source`.
NormalBAE's architecture is fixed by controlnet_aux, so its test weights are the full-size NNET's
(random, 72 M parameters, a 291 MB `scannet.pt` like the real one): built once per module.
depth_midas and normal_midas share one loaded DPT model, freed with the last detector holding it.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import shutil
import socket
import weakref
from unittest import mock

import numpy as np
import pytest
import torch
from transformers import DPTForDepthEstimation

from annotators import LoadContext, make_control_map
from annotators.depth import MidasDepthAnnotator, depth_to_map, load_depth_estimator
from annotators.normal import (
    MIDAS_NORMAL_A,
    MidasNormalAnnotator,
    NormalBaeAnnotator,
    normals_from_depth,
)
from annotators.util import output_size, resize_image
from errors import ModelUnavailableError
from settings import DEFAULT_MODEL_IDS
from testkit.annotator_weights import save_random_normal_bae, save_tiny_dpt_hybrid
from testkit.tolerances import report

DPT_ID = DEFAULT_MODEL_IDS["depth_estimator"]
ANNOTATORS_ID = DEFAULT_MODEL_IDS["annotators"]


# ---------------------------------------------------------------------------------------------
# Tiny models in a MODELS_DIR tree
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def no_network():
    """Fail any socket connection made inside the block."""

    def refuse(sock, address, *args):
        raise AssertionError(f"network connection attempted to {address!r}")

    with (
        mock.patch.object(socket.socket, "connect", refuse),
        mock.patch.object(socket.socket, "connect_ex", refuse),
    ):
        yield


def test_no_network_guard_refuses_connections():
    with no_network(), pytest.raises(AssertionError, match="network connection"):
        socket.create_connection(("127.0.0.1", 9), timeout=1)


@pytest.fixture(scope="module")
def dpt_context(tmp_path_factory) -> LoadContext:
    folder = tmp_path_factory.mktemp("depth_models")
    save_tiny_dpt_hybrid(folder)
    return LoadContext(folder, dict(DEFAULT_MODEL_IDS), "cpu")


@pytest.fixture(scope="module")
def bae_context(tmp_path_factory) -> LoadContext:
    folder = tmp_path_factory.mktemp("bae_models")
    save_random_normal_bae(folder)
    return LoadContext(folder, dict(DEFAULT_MODEL_IDS), "cpu")


@pytest.fixture(scope="module")
def bae_detector(bae_context):
    with no_network():  # controlnet_aux builds EfficientNet through torch.hub (source="local")
        return NormalBaeAnnotator().load(bae_context)


def decoded_lengths(normal_map: np.ndarray) -> np.ndarray:
    """|v| of each pixel's normal, decoded from 0-255 to [-1, 1]."""
    vectors = normal_map.astype(np.float64) / 127.5 - 1.0
    return np.linalg.norm(vectors, axis=2)


# The maps floor each component of a unit vector onto a grid of step 1 / 127.5 (`* 127.5 + 127.5`,
# then uint8): the decoded vector is off by less than sqrt(3) / 127.5, and so is its length; the
# float32 normalisation and encoding before it round by a few 1e-7 more.
QUANTIZED_UNIT_LENGTH_ERROR = 3**0.5 / 127.5 + 1e-6


def assert_unit_lengths(normal_map: np.ndarray, label: str) -> None:
    error = float(np.abs(decoded_lengths(normal_map) - 1).max())
    report(label, error, QUANTIZED_UNIT_LENGTH_ERROR)
    assert error < QUANTIZED_UNIT_LENGTH_ERROR, error


# ---------------------------------------------------------------------------------------------
# Pure functions: exact values
# ---------------------------------------------------------------------------------------------


def test_depth_to_map_is_min_max_truncated_and_near_is_bright():
    inverse_depth = np.array([[10.0, 11.0], [12.0, 14.0]], np.float32)  # larger = nearer
    np.testing.assert_array_equal(depth_to_map(inverse_depth), [[0, 63], [127, 255]])
    assert depth_to_map(inverse_depth).dtype == np.uint8


def test_depth_to_map_of_a_constant_depth_is_black_not_nan():
    np.testing.assert_array_equal(depth_to_map(np.full((4, 5), 3.0)), np.zeros((4, 5), np.uint8))


# Slope of a depth ramp whose Sobel derivative (8 x slope inside) is a * sqrt(3): the normal is
# (sqrt(3) / 2, 0, 1 / 2) -> 127.5 + 127.5 * (0.866, 0, 0.5) = (237.9, 127.5, 191.25) -> truncated.
RAMP = MIDAS_NORMAL_A * np.sqrt(3.0) / 8.0


def ramp(rows: int, cols: int, along: str, slope: float = RAMP) -> np.ndarray:
    grid_rows, grid_cols = np.mgrid[0:rows, 0:cols].astype(np.float32)
    return 5.0 + slope * (grid_cols if along == "x" else grid_rows)


def test_plane_along_x_gives_a_constant_normal_in_z_y_x_order():
    normals = normals_from_depth(ramp(8, 10, "x"), bg_threshold=0.0)
    assert normals.shape == (8, 10, 3) and normals.dtype == np.uint8
    # Inside: (z, y, x) = (191, 127, 237). The first and last columns have no x gradient
    # (Sobel's reflected border), so they face the camera: (255, 127, 127).
    np.testing.assert_array_equal(normals[:, 1:-1], np.broadcast_to([191, 127, 237], (8, 8, 3)))
    np.testing.assert_array_equal(normals[:, [0, -1]], np.broadcast_to([255, 127, 127], (8, 2, 3)))


def test_plane_along_y_puts_its_gradient_in_the_middle_channel():
    normals = normals_from_depth(ramp(10, 8, "y"), bg_threshold=0.0)
    np.testing.assert_array_equal(normals[1:-1], np.broadcast_to([191, 237, 127], (8, 8, 3)))


def test_descending_plane_flips_the_sign():
    normals = normals_from_depth(ramp(8, 10, "x", slope=-RAMP), bg_threshold=0.0)
    # 127.5 - 127.5 * 0.866 = 17.1
    np.testing.assert_array_equal(normals[:, 1:-1], np.broadcast_to([191, 127, 17], (8, 8, 3)))


def test_background_below_threshold_faces_the_camera():
    depth = ramp(6, 11, "x")  # normalised depth = column / 10
    normals = normals_from_depth(depth, bg_threshold=0.5)
    np.testing.assert_array_equal(normals[:, :5], np.broadcast_to([255, 127, 127], (6, 5, 3)))
    np.testing.assert_array_equal(normals[:, 5:-1], np.broadcast_to([191, 127, 237], (6, 5, 3)))
    everything_background = normals_from_depth(depth, bg_threshold=1.01)
    np.testing.assert_array_equal(
        everything_background, np.broadcast_to([255, 127, 127], (6, 11, 3))
    )


def reference_apply_midas_normals(depth: np.ndarray, bg_th: float, a: float = np.pi * 2.0):
    """lllyasviel/ControlNet annotator/midas/__init__.py, the normal half, as it reads (numpy for
    torch), then the `[:, :, ::-1]` that gradio_normal2image.py applies before the ControlNet."""
    import cv2

    depth_np = depth.astype(np.float32)
    depth_pt = depth_np.copy()
    depth_pt -= np.min(depth_pt)
    depth_pt /= np.max(depth_pt)
    x = cv2.Sobel(depth_np, cv2.CV_32F, 1, 0, ksize=3)
    y = cv2.Sobel(depth_np, cv2.CV_32F, 0, 1, ksize=3)
    z = np.ones_like(x) * a
    x[depth_pt < bg_th] = 0
    y[depth_pt < bg_th] = 0
    normal = np.stack([x, y, z], axis=2)
    normal /= np.sum(normal**2.0, axis=2, keepdims=True) ** 0.5
    normal_image = (normal * 127.5 + 127.5).clip(0, 255).astype(np.uint8)
    return normal_image[:, :, ::-1]


@pytest.mark.parametrize("bg_threshold", [0.0, 0.1, 0.4, 0.9])
def test_normals_equal_the_reference_on_a_smooth_random_depth(bg_threshold):
    rng = np.random.default_rng(0)
    import cv2

    depth = cv2.GaussianBlur(rng.random((96, 128)).astype(np.float32) * 50, (0, 0), 4) + 1.0
    np.testing.assert_array_equal(
        normals_from_depth(depth, bg_threshold), reference_apply_midas_normals(depth, bg_threshold)
    )
    assert_unit_lengths(
        normals_from_depth(depth, bg_threshold), f"normals:random_depth {bg_threshold}"
    )


# ---------------------------------------------------------------------------------------------
# MiDaS depth and normals on the tiny DPT-Hybrid
# ---------------------------------------------------------------------------------------------


def test_depth_estimator_returns_raw_depth_at_the_input_size(dpt_context, coffee):
    estimate = load_depth_estimator(dpt_context)
    image = coffee[:200, :300]  # not a multiple of 32: resized to the net and back
    depth = estimate(image)
    assert depth.shape == (200, 300) and depth.dtype == np.float32
    assert np.isfinite(depth).all() and depth.max() > depth.min()
    np.testing.assert_array_equal(estimate(image), depth)  # deterministic (eval mode)


def net_input_sizes(estimate, image) -> list[tuple[int, int]]:
    """The (H, W) the DPT model was run at while estimating `image`."""
    from transformers.models.dpt.modeling_dpt import DPTViTHybridEmbeddings

    sizes = []

    def record(module, args):
        if isinstance(module, DPTViTHybridEmbeddings):
            sizes.append(tuple(args[0].shape[-2:]))  # pixel_values (1, 3, H, W)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        estimate(image)
    finally:
        handle.remove()
    return sizes


def test_dpt_hybrid_runs_at_the_detect_resolution_as_a_square(dpt_context, coffee):
    estimate = load_depth_estimator(dpt_context)
    assert net_input_sizes(estimate, resize_image(coffee, 512)) == [(512, 512)]  # short side
    assert net_input_sizes(estimate, resize_image(coffee, 384)) == [(384, 384)]


def test_without_position_interpolation_the_net_runs_at_its_config_size(
    dpt_context, coffee, monkeypatch, tmp_path
):
    monkeypatch.setattr("annotators.depth._accept_any_square", lambda model: False)
    # A copy of the model: its own load, whatever estimator of the module's folder still lives.
    shutil.copytree(dpt_context.models_dir, tmp_path, dirs_exist_ok=True)
    estimate = load_depth_estimator(LoadContext(tmp_path, dict(DEFAULT_MODEL_IDS), "cpu"))
    image = resize_image(coffee, 512)
    assert net_input_sizes(estimate, image) == [(384, 384)]  # config.image_size
    assert estimate(image).shape == (512, 768)


@pytest.mark.parametrize(("fixture", "resolution"), [("astronaut", 512), ("coffee", 512)])
def test_depth_map_is_grey_at_the_output_size(dpt_context, request, fixture, resolution):
    image = request.getfixturevalue(fixture)
    annotator = MidasDepthAnnotator()
    detector = annotator.load(dpt_context)

    detected = detector(resize_image(image, 384))
    assert detected.ndim == 2 and detected.dtype == np.uint8
    assert detected.min() == 0 and detected.max() == 255  # min-max uses both ends

    control_map = make_control_map(annotator, detector, image, resolution, detect_resolution=384)
    assert control_map.shape == (*output_size(*image.shape[:2], resolution), 3)
    assert control_map.dtype == np.uint8
    np.testing.assert_array_equal(control_map[:, :, 0], control_map[:, :, 1])
    np.testing.assert_array_equal(control_map[:, :, 0], control_map[:, :, 2])
    assert control_map.max() > 200 and control_map.min() < 55


def test_midas_normals_come_from_the_same_depth(dpt_context, coffee):
    annotator = MidasNormalAnnotator()
    params = annotator.check_params({})
    assert params == {"bg_threshold": 0.4}
    detector = annotator.load(dpt_context)
    image = resize_image(coffee, 384)  # (384, 576)

    normals = detector(image, **params)
    depth = load_depth_estimator(dpt_context)(image)
    np.testing.assert_array_equal(normals, normals_from_depth(depth, 0.4))
    assert normals.shape == (384, 576, 3) and normals.dtype == np.uint8
    assert_unit_lengths(normals, "normals:midas")
    assert (normals == [255, 127, 127]).all(axis=2).any()  # some background

    control_map = make_control_map(annotator, detector, coffee, 512, 384, params)
    assert control_map.shape == (512, 768, 3) and control_map.dtype == np.uint8


def held(function, name: str):
    """What a detector's or estimator's closure holds under `name`."""
    return inspect.getclosurevars(function).nonlocals[name]


def test_midas_depth_and_normals_share_one_model_until_both_are_dropped(dpt_context, tmp_path):
    shutil.copytree(dpt_context.models_dir, tmp_path, dirs_exist_ok=True)  # a model of its own
    context = LoadContext(tmp_path, dict(DEFAULT_MODEL_IDS), "cpu")
    depth = MidasDepthAnnotator().load(context)
    normals = MidasNormalAnnotator().load(context)
    estimate = held(depth, "estimate")
    assert held(normals, "estimate") is estimate
    assert isinstance(held(estimate, "model"), DPTForDepthEstimation)
    assert load_depth_estimator(context) is estimate
    assert load_depth_estimator(dpt_context) is not estimate  # another folder, another model

    model = weakref.ref(held(estimate, "model"))
    del estimate, depth
    gc.collect()
    assert model() is not None  # the normal detector still holds it
    del normals
    gc.collect()
    assert model() is None  # the last holder is gone: so is the model

    again = held(held(MidasNormalAnnotator().load(context), "estimate"), "model")
    assert isinstance(again, DPTForDepthEstimation)  # loads afresh after the free


def test_bg_threshold_is_checked_like_the_reference_slider():
    (param,) = MidasNormalAnnotator().params
    assert (param.name, param.default, param.minimum, param.maximum, param.step) == (
        "bg_threshold",
        0.4,
        0.0,
        1.0,
        0.01,
    )
    assert MidasNormalAnnotator().check_params({"bg_threshold": 1}) == {"bg_threshold": 1.0}


def test_missing_depth_model_is_a_model_unavailable_error(tmp_path):
    context = LoadContext(tmp_path, dict(DEFAULT_MODEL_IDS), "cpu")
    for annotator in (MidasDepthAnnotator(), MidasNormalAnnotator()):
        with pytest.raises(ModelUnavailableError, match="dpt-hybrid-midas"):
            annotator.load(context)


def test_depth_model_folder_with_pytorch_bin_only_loads_tensors(dpt_context, tmp_path, coffee):
    """The Hub repo's main branch holds pytorch_model.bin only: it is read tensors-only
    (transformers' torch.load(weights_only=True)) and gives the same map as the safetensors."""
    from safetensors.torch import load_file

    source = dpt_context.models_dir / DPT_ID
    target = tmp_path / DPT_ID
    target.mkdir(parents=True)
    for name in ("config.json", "preprocessor_config.json"):
        (target / name).write_bytes((source / name).read_bytes())
    torch.save(load_file(source / "model.safetensors"), target / "pytorch_model.bin")
    from_bin = MidasDepthAnnotator().load(LoadContext(tmp_path, dict(DEFAULT_MODEL_IDS), "cpu"))
    from_safetensors = MidasDepthAnnotator().load(dpt_context)
    image = coffee[:128, :128].copy()
    np.testing.assert_array_equal(from_bin(image), from_safetensors(image))


# ---------------------------------------------------------------------------------------------
# NormalBAE on random full-size weights
# ---------------------------------------------------------------------------------------------


def test_normal_bae_map_is_rgb_at_the_output_size(bae_detector, coffee):
    annotator = NormalBaeAnnotator()
    assert annotator.params == () and annotator.default_detect_resolution == 512
    # Detect at 128 (the net is full size and slow on CPU), output at 256.
    control_map = make_control_map(annotator, bae_detector, coffee, 256, detect_resolution=128)
    assert control_map.shape == (*output_size(400, 600, 256), 3) == (256, 384, 3)
    assert control_map.dtype == np.uint8
    assert not np.array_equal(control_map[:, :, 0], control_map[:, :, 2])  # colour, not grey


def test_normal_bae_equals_controlnet_aux_and_has_unit_normals(
    bae_context, bae_detector, astronaut
):
    from controlnet_aux.normalbae import NormalBaeDetector

    image = resize_image(astronaut, 128)  # already at the detect size: no resize on either side
    detected = bae_detector(image)
    assert detected.shape == (128, 128, 3) and detected.dtype == np.uint8
    assert_unit_lengths(detected, "normals:bae")  # the net outputs unit vectors

    with no_network():
        reference = NormalBaeDetector.from_pretrained(str(bae_context.models_dir / ANNOTATORS_ID))
    expected = reference(image, detect_resolution=128, image_resolution=128, output_type="np")
    np.testing.assert_array_equal(detected, expected)


def test_normal_bae_odd_size_comes_back_at_its_size(bae_detector):
    image = np.random.default_rng(1).integers(0, 256, (40, 70, 3), dtype=np.uint8)  # net: 32 x 64
    assert bae_detector(image).shape == (40, 70, 3)


def test_missing_or_wrong_scannet_weights_are_model_unavailable(tmp_path):
    context = LoadContext(tmp_path, dict(DEFAULT_MODEL_IDS), "cpu")
    folder = tmp_path / ANNOTATORS_ID
    folder.mkdir(parents=True)
    with pytest.raises(ModelUnavailableError, match="scannet.pt"):
        NormalBaeAnnotator().load(context)
    torch.save({"model": {"not.a.key": torch.zeros(1)}}, folder / "scannet.pt")
    with pytest.raises(ModelUnavailableError, match="NormalBAE weights"):
        NormalBaeAnnotator().load(context)
