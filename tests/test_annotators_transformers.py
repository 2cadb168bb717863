"""ZoeDepth, Depth Anything V2 and OneFormer annotators, loaded like their Hub repos.

Each model is a tiny but real transformers model (testkit/transformers_annotators.py: the real
architecture classes and processors, scaled down, seeded random weights) saved under its Hub id in
a temporary MODELS_DIR, with OneFormer's class lists under `shi-labs/oneformer_demo`; the
annotators load them through `load_pretrained` and `from_pretrained` unchanged, offline.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from annotators import ANNOTATORS, LoadContext, make_control_map
from annotators.ade20k import ADE20K_CLASSES, ADE20K_PALETTE
from annotators.coco_panoptic import COCO_PANOPTIC_CLASSES, COCO_PANOPTIC_PALETTE
from annotators.depth import depth_to_map
from annotators.depth_anything import load_depth_anything
from annotators.oneformer import CLASS_INFO_ROLE, load_oneformer
from annotators.util import output_size, resize_image
from annotators.zoe import load_zoe_estimator, zoe_depth_to_map
from conditions import CONDITIONS
from errors import ModelUnavailableError
from settings import DEFAULT_MODEL_IDS
from testkit.transformers_annotators import (
    CLASS_INFO_ID,
    DEPTH_ANYTHING_ID,
    ONEFORMER_ADE20K_ID,
    ONEFORMER_COCO_ID,
    ZOE_ID,
    save_class_info,
    save_tiny_depth_anything,
    save_tiny_oneformer,
    save_tiny_zoe,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SEG_VARIANTS = {  # annotator -> (its model's Hub id, the palette it paints, the class names)
    "seg_oneformer_ade20k": (ONEFORMER_ADE20K_ID, ADE20K_PALETTE, ADE20K_CLASSES),
    "seg_oneformer_coco": (ONEFORMER_COCO_ID, COCO_PANOPTIC_PALETTE, COCO_PANOPTIC_CLASSES),
}


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


def context_for(folder: Path) -> LoadContext:
    return LoadContext(folder, dict(DEFAULT_MODEL_IDS), "cpu")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("transformers_annotators")
    save_tiny_zoe(folder)
    save_tiny_depth_anything(folder)
    save_tiny_oneformer(folder, "ade20k")
    save_tiny_oneformer(folder, "coco")
    return folder


@pytest.fixture(scope="module")
def detectors(models_dir) -> dict:
    with no_network():
        return {name: ANNOTATORS[name].load(context_for(models_dir)) for name in ANNOTATOR_NAMES}


@pytest.fixture(scope="module")
def photo(astronaut) -> np.ndarray:
    """The astronaut at a 128 px short side: what the detectors see at a small detect size."""
    return resize_image(astronaut, 128)


ANNOTATOR_NAMES = ("depth_zoe", "depth_anything_v2", "seg_oneformer_ade20k", "seg_oneformer_coco")


# --- registry and tabs ------------------------------------------------------------------------


def test_the_depth_and_seg_tabs_offer_the_new_annotators_in_order():
    depth, seg = CONDITIONS["depth"], CONDITIONS["seg"]
    assert depth.annotators == ("depth_midas", "depth_zoe", "depth_anything_v2", "none")
    assert seg.annotators == ("seg_upernet", "seg_oneformer_ade20k", "seg_oneformer_coco", "none")
    for name in ("depth_zoe", "depth_anything_v2"):
        assert depth.controlnet_role_for(name) == "depth"
    for name in SEG_VARIANTS:
        assert seg.controlnet_role_for(name) == "seg"


def test_each_annotator_needs_its_own_role():
    assert ANNOTATORS["depth_zoe"].needs == (("depth_zoe", None),)
    assert ANNOTATORS["depth_anything_v2"].needs == (("depth_anything", None),)
    assert ANNOTATORS["seg_oneformer_ade20k"].needs == (
        ("segmenter_oneformer_ade20k", None),
        (CLASS_INFO_ROLE, "ade20k_panoptic.json"),
    )
    assert ANNOTATORS["seg_oneformer_coco"].needs == (
        ("segmenter_oneformer_coco", None),
        (CLASS_INFO_ROLE, "coco_panoptic.json"),
    )


def test_importing_the_annotators_does_not_import_torch_or_transformers():
    code = (
        "import sys, annotators.zoe, annotators.depth_anything, annotators.oneformer; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["False", "False"], result.stderr


# --- ZoeDepth ---------------------------------------------------------------------------------


def test_zoe_normalisation_puts_the_2nd_and_85th_percentiles_at_255_and_0():
    # Depths 0..100: the 2nd percentile is 2, the 85th is 85 (linear interpolation, exact).
    depth = np.arange(101, dtype=np.float32)[None]  # (1, 101), metres, larger = farther
    control_map = zoe_depth_to_map(depth)
    assert control_map.dtype == np.uint8 and control_map.shape == (1, 101)
    assert (control_map[0, :3] == 255).all()  # 0, 1, 2 m: at or nearer than vmin
    assert (control_map[0, 85:] == 0).all()  # 85 m and beyond: clipped at 0
    # 43.5 m is halfway between 2 and 85: 255 * 0.5 = 127.5, truncated. 44 m: 255 * 41 / 83.
    halfway = zoe_depth_to_map(np.array([[2.0, 43.5, 85.0, 44.0]] * 26, np.float32).T)
    assert halfway[1, 0] == 127 and halfway[3, 0] == int(255 * 41 / 83)


def test_zoe_normalisation_of_a_flat_depth_is_black_not_nan():
    np.testing.assert_array_equal(zoe_depth_to_map(np.full((3, 4), 2.5)), np.zeros((3, 4)))


def controlnet_aux_zoe_normalisation(depth: np.ndarray) -> np.ndarray:
    """controlnet_aux 0.0.10 `ZoeDetector.__call__`, on the model's metric depth, as written."""
    depth = depth.copy()
    vmin = np.percentile(depth, 2)
    vmax = np.percentile(depth, 85)
    depth -= vmin
    depth /= vmax - vmin
    depth = 1.0 - depth
    return (depth * 255.0).clip(0, 255).astype(np.uint8)


def test_zoe_map_is_controlnet_aux_normalisation_of_the_models_own_depth(
    models_dir, detectors, photo
):
    depth = load_zoe_estimator(context_for(models_dir))(photo)
    assert depth.shape == photo.shape[:2] and depth.dtype == np.float32
    control_map = detectors["depth_zoe"](photo)
    np.testing.assert_array_equal(control_map, controlnet_aux_zoe_normalisation(depth))
    # Enough range that the check means something: both ends and the grey in between occur.
    assert control_map.min() == 0 and control_map.max() == 255
    assert len(np.unique(control_map)) > 64


def test_zoe_map_is_near_bright(models_dir, detectors, photo):
    """Metric depth grows with distance; the map must fall as it grows (255 nearest, 0 farthest)."""
    depth = load_zoe_estimator(context_for(models_dir))(photo).ravel()
    control_map = detectors["depth_zoe"](photo).ravel()
    order = np.argsort(depth, kind="stable")
    assert (np.diff(control_map[order].astype(int)) <= 0).all()
    assert control_map[depth.argmin()] == 255 and control_map[depth.argmax()] == 0


def test_zoe_depth_is_transformers_recipe_with_padding_and_flip_averaged(
    models_dir, detectors, photo
):
    """The estimate is the documented ZoeDepth recipe: the processor pads and resizes, and the
    post-processing removes the padding and averages in the mirrored image's prediction."""
    from transformers import ZoeDepthForDepthEstimation, ZoeDepthImageProcessor

    folder = models_dir / ZOE_ID
    model = ZoeDepthForDepthEstimation.from_pretrained(folder, local_files_only=True).eval()
    processor = ZoeDepthImageProcessor.from_pretrained(folder, local_files_only=True)
    pixel_values = processor(images=photo, return_tensors="pt").pixel_values
    assert pixel_values.shape[-2] % 32 == 0 and pixel_values.shape[-1] % 32 == 0
    with torch.inference_mode():
        outputs = model(pixel_values=pixel_values)
        flipped = model(pixel_values=torch.flip(pixel_values, dims=[3]))
    size = [photo.shape[:2]]
    averaged = processor.post_process_depth_estimation(
        outputs, source_sizes=size, outputs_flipped=flipped
    )[0]["predicted_depth"]
    unflipped = processor.post_process_depth_estimation(outputs, source_sizes=size)[0]
    depth = load_zoe_estimator(context_for(models_dir))(photo)
    np.testing.assert_array_equal(depth, averaged.numpy())
    assert not np.array_equal(depth, unflipped["predicted_depth"].numpy())


# --- Depth Anything V2 ------------------------------------------------------------------------


def test_depth_anything_map_is_min_max_of_its_inverse_depth_near_bright(
    models_dir, detectors, photo
):
    inverse_depth = load_depth_anything(context_for(models_dir))(photo)
    assert inverse_depth.shape == photo.shape[:2] and inverse_depth.dtype == np.float32
    control_map = detectors["depth_anything_v2"](photo)
    assert control_map.dtype == np.uint8 and control_map.shape == photo.shape[:2]
    np.testing.assert_array_equal(control_map, depth_to_map(inverse_depth))
    # Inverse depth: larger = nearer, so the map rises with it, from 0 to 255.
    flat, values = inverse_depth.ravel(), control_map.ravel()
    order = np.argsort(flat, kind="stable")
    assert (np.diff(values[order].astype(int)) >= 0).all()
    assert values[flat.argmax()] == 255 and values[flat.argmin()] == 0
    assert len(np.unique(control_map)) > 64


def test_depth_anything_resizes_its_prediction_back_with_aligned_corners(models_dir, photo):
    """infer_image's bilinear resize with align_corners=True keeps the prediction's four corner
    values exactly at the image's corners (each is the one sample there, weight 1)."""
    from transformers import AutoImageProcessor, DepthAnythingForDepthEstimation

    folder = models_dir / DEPTH_ANYTHING_ID
    model = DepthAnythingForDepthEstimation.from_pretrained(folder, local_files_only=True).eval()
    processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    pixel_values = processor(images=photo, return_tensors="pt").pixel_values
    assert pixel_values.shape[-2] % 14 == 0 and pixel_values.shape[-1] % 14 == 0
    with torch.inference_mode():
        prediction = model(pixel_values=pixel_values).predicted_depth[0].numpy()
    estimate = load_depth_anything(context_for(models_dir))(photo)
    for row, col in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
        assert estimate[row, col] == prediction[row, col]


# --- OneFormer --------------------------------------------------------------------------------


def palette_colours(palette: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(colour) for colour in palette.tolist()}


def map_colours(control_map: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(colour) for colour in np.unique(control_map.reshape(-1, 3), axis=0).tolist()}


def test_coco_palette_is_detectron2s_133_panoptic_colours():
    assert COCO_PANOPTIC_PALETTE.shape == (133, 3) and COCO_PANOPTIC_PALETTE.dtype == np.uint8
    assert len(COCO_PANOPTIC_CLASSES) == 133
    # The 80 things first (person first), then the stuff classes (banner first, rug last).
    assert COCO_PANOPTIC_CLASSES[0] == "person" and COCO_PANOPTIC_CLASSES[80] == "banner"
    assert COCO_PANOPTIC_CLASSES[-1] == "rug-merged"
    assert COCO_PANOPTIC_PALETTE[0].tolist() == [220, 20, 60]  # person
    assert COCO_PANOPTIC_PALETTE[80].tolist() == [255, 255, 128]  # banner
    assert COCO_PANOPTIC_PALETTE[-1].tolist() == [250, 141, 255]  # rug-merged
    assert len(palette_colours(COCO_PANOPTIC_PALETTE)) == 133  # one colour per class


@pytest.mark.parametrize("name", list(SEG_VARIANTS))
def test_oneformer_map_is_the_palette_at_the_processors_semantic_argmax(
    name, models_dir, detectors, photo
):
    from transformers import OneFormerForUniversalSegmentation, OneFormerProcessor

    repo_id, palette, _ = SEG_VARIANTS[name]
    folder = models_dir / repo_id
    model = OneFormerForUniversalSegmentation.from_pretrained(folder, local_files_only=True)
    processor = OneFormerProcessor.from_pretrained(
        folder, local_files_only=True, repo_path=str(models_dir / CLASS_INFO_ID)
    )
    inputs = processor(images=photo, task_inputs=["semantic"], return_tensors="pt")
    with torch.inference_mode():
        outputs = model.eval()(**inputs)
    labels = processor.post_process_semantic_segmentation(outputs, target_sizes=[photo.shape[:2]])[
        0
    ].numpy()
    control_map = detectors[name](photo)
    assert control_map.shape == (*photo.shape[:2], 3) and control_map.dtype == np.uint8
    np.testing.assert_array_equal(control_map, palette[labels])
    assert map_colours(control_map) <= palette_colours(palette)
    assert len(np.unique(labels)) >= 2  # several classes, so the colours are really looked up


@pytest.mark.parametrize("name", list(SEG_VARIANTS))
def test_oneformer_map_at_the_output_size_keeps_palette_colours(name, detectors, astronaut):
    """Made at a lower detect resolution and resized to the output with nearest neighbour."""
    _, palette, _ = SEG_VARIANTS[name]
    control_map = make_control_map(
        ANNOTATORS[name], detectors[name], astronaut, 256, detect_resolution=128
    )
    assert control_map.shape == (*output_size(*astronaut.shape[:2], 256), 3)
    assert map_colours(control_map) <= palette_colours(palette)


@pytest.mark.parametrize("name", list(SEG_VARIANTS))
def test_oneformer_reads_its_class_list_from_models_dir_offline(name, models_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    annotator = ANNOTATORS[name]
    _, _, classes = SEG_VARIANTS[name]
    with no_network():
        processor, model = load_oneformer(
            context_for(models_dir), annotator.role, annotator.class_info_file
        )
    image_processor = processor.image_processor
    assert Path(image_processor.repo_path) == models_dir / CLASS_INFO_ID
    assert image_processor.metadata["class_names"] == list(classes)
    assert [model.config.id2label[i] for i in range(len(classes))] == list(classes)


def test_a_oneformer_that_predicts_other_classes_is_refused(tmp_path):
    """A COCO model under the ADE20K role would paint COCO ids in ADE20K colours: refused."""
    folder = tmp_path / "models"
    save_tiny_oneformer(folder, "coco")
    (folder / ONEFORMER_COCO_ID).rename(folder / "wrong")
    ids = {**DEFAULT_MODEL_IDS, "segmenter_oneformer_ade20k": str(folder / "wrong")}
    with pytest.raises(ModelUnavailableError, match="predicts 133 classes"):
        ANNOTATORS["seg_oneformer_ade20k"].load(LoadContext(folder, ids, "cpu"))


# --- missing models ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("depth_zoe", "depth_zoe"),
        ("depth_anything_v2", "depth_anything"),
        ("seg_oneformer_ade20k", "segmenter_oneformer_ade20k"),
        ("seg_oneformer_coco", "segmenter_oneformer_coco"),
    ],
)
def test_a_missing_model_names_the_download_command(name, role, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    save_class_info(tmp_path)  # OneFormer's class lists are here; its model is not
    with no_network(), pytest.raises(ModelUnavailableError) as caught:
        ANNOTATORS[name].load(context_for(tmp_path))
    message = str(caught.value)
    assert f"python -m cli download {role}" in message
    assert str(tmp_path / DEFAULT_MODEL_IDS[role]) in message


@pytest.mark.parametrize("name", list(SEG_VARIANTS))
def test_a_missing_class_list_names_its_download_command(name, models_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo_id, _, _ = SEG_VARIANTS[name]
    (tmp_path / repo_id).parent.mkdir(parents=True)
    (tmp_path / repo_id).symlink_to(models_dir / repo_id)  # the model, without the class lists
    with no_network(), pytest.raises(ModelUnavailableError) as caught:
        ANNOTATORS[name].load(context_for(tmp_path))
    message = str(caught.value)
    assert f"python -m cli download {CLASS_INFO_ROLE}" in message
    assert ANNOTATORS[name].class_info_file in message


# --- download and availability ----------------------------------------------------------------

NEW_ROLES = [
    "depth_zoe",
    "depth_anything",
    "segmenter_oneformer_ade20k",
    "segmenter_oneformer_coco",
    CLASS_INFO_ROLE,
]


def test_downloaded_roles_load_and_annotate_offline(models_dir, tmp_path, monkeypatch, photo):
    import download

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "models"
    assert download.download(NEW_ROLES, out, source=models_dir, echo=lambda line: None) == []
    with no_network():
        for name in ANNOTATOR_NAMES:
            control_map = ANNOTATORS[name].load(context_for(out))(photo)
            assert control_map.shape[:2] == photo.shape[:2] and control_map.dtype == np.uint8


def test_the_page_knows_which_new_annotators_are_here(models_dir, tmp_path, monkeypatch):
    from availability import command, condition_status
    from settings import Settings

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for tab in ("depth", "seg"):
        here = condition_status(CONDITIONS[tab], Settings(models_dir=models_dir))
        # Only the tab's first annotator (MiDaS, UperNet) lacks its model in this folder.
        assert set(here.annotator_missing) == {CONDITIONS[tab].annotators[0]}
        empty = condition_status(CONDITIONS[tab], Settings(models_dir=tmp_path))
        missing = {name: command(needs) for name, needs in empty.annotator_missing.items()}
        if tab == "depth":
            assert missing["depth_zoe"] == "python -m cli download depth_zoe"
            assert missing["depth_anything_v2"] == "python -m cli download depth_anything"
        else:
            assert missing["seg_oneformer_coco"] == (
                f"python -m cli download segmenter_oneformer_coco {CLASS_INFO_ROLE}"
            )
