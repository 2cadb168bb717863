"""Segmentation maps: ControlNet's ADE20K palette, and UperNet loaded like the real Hub repo.

The segmenter is a tiny but real `UperNetForSemanticSegmentation` (ConvNeXt backbone, 150
classes, random weights) saved as `MODELS_DIR/openmmlab/upernet-convnext-small` with
model.safetensors and the SegformerImageProcessor config the Hub repo has, so the annotator
loads it through `pretrained_source` and `from_pretrained` unchanged.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from annotators import make_control_map
from annotators.ade20k import ADE20K_CLASSES, ADE20K_PALETTE, NUM_CLASSES, colorize
from annotators.base import LoadContext
from annotators.seg import UpernetSegAnnotator
from annotators.util import output_size
from errors import ModelUnavailableError
from settings import DEFAULT_MODEL_IDS
from testkit.annotator_weights import save_tiny_upernet, save_upernet_processor, tiny_upernet

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SEGMENTER_ID = DEFAULT_MODEL_IDS["segmenter"]  # openmmlab/upernet-convnext-small
# sha256 of ADE20K_PALETTE.tobytes(), the table checked row for row against mmsegmentation 0.x
# `ade_palette()` (what ControlNet's `get_palette('ade')` returns) and the 151-row copy on the
# control_v11p_sd15_seg model card with its leading [0, 0, 0] dropped.
PALETTE_SHA256 = "ce475c9151035eff51f4cf27fd7d906959b1480f6d15b9423ae2417c1b23a0ed"


def _palette_set() -> set[tuple[int, int, int]]:
    return {tuple(colour) for colour in ADE20K_PALETTE.tolist()}


def _colours(control_map: np.ndarray) -> set[tuple[int, int, int]]:
    rgb = control_map.reshape(-1, 3).astype(np.int32)
    packed = np.unique((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2])  # 1-D: fast unique
    return {(int(v >> 16), int(v >> 8 & 255), int(v & 255)) for v in packed}


@pytest.fixture(scope="module")
def seg_models_dir(tmp_path_factory) -> Path:
    models_dir = tmp_path_factory.mktemp("seg_models")
    save_tiny_upernet(models_dir)
    return models_dir


@pytest.fixture(scope="module")
def seg_detector(seg_models_dir):
    context = LoadContext(seg_models_dir, dict(DEFAULT_MODEL_IDS), device="cpu")
    return UpernetSegAnnotator().load(context)


# --- palette ---------------------------------------------------------------------------------


def test_palette_is_controlnets_150_ade20k_colours():
    assert ADE20K_PALETTE.shape == (150, 3) and ADE20K_PALETTE.dtype == np.uint8
    assert NUM_CLASSES == len(ADE20K_CLASSES) == 150
    first = [[120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50], [4, 200, 3]]
    np.testing.assert_array_equal(ADE20K_PALETTE[:5], first)
    np.testing.assert_array_equal(ADE20K_PALETTE[12], [150, 5, 61])  # person
    np.testing.assert_array_equal(ADE20K_PALETTE[-2:], [[102, 255, 0], [92, 0, 255]])
    assert hashlib.sha256(ADE20K_PALETTE.tobytes()).hexdigest() == PALETTE_SHA256


def test_palette_colours_are_distinct_except_the_reference_duplicate():
    # The reference palette gives road (6) and skyscraper (48) the same grey; every other
    # class has its own colour.
    distinct, counts = np.unique(ADE20K_PALETTE, axis=0, return_counts=True)
    assert len(distinct) == 149
    np.testing.assert_array_equal(distinct[counts > 1], [[140, 140, 140]])
    assert np.flatnonzero((ADE20K_PALETTE == 140).all(axis=1)).tolist() == [6, 48]
    assert (ADE20K_CLASSES[6], ADE20K_CLASSES[48]) == ("road", "skyscraper")
    assert [0, 0, 0] not in ADE20K_PALETTE.tolist()  # black is no class


def test_class_names_follow_ade20k_order():
    assert ADE20K_CLASSES[:4] == ("wall", "building", "sky", "floor")
    assert ADE20K_CLASSES[12] == "person" and ADE20K_CLASSES[-1] == "flag"
    assert len(set(ADE20K_CLASSES)) == 150
    assert all(name == name.strip() for name in ADE20K_CLASSES)


def test_colorize_paints_each_class_id_with_its_palette_row():
    labels = np.array([[0, 1, 2], [12, 148, 149]], dtype=np.int64)
    expected = np.array(
        [
            [[120, 120, 120], [180, 120, 120], [6, 230, 230]],
            [[150, 5, 61], [102, 255, 0], [92, 0, 255]],
        ],
        dtype=np.uint8,
    )
    painted = colorize(labels)
    assert painted.shape == (2, 3, 3) and painted.dtype == np.uint8
    np.testing.assert_array_equal(painted, expected)
    np.testing.assert_array_equal(colorize(labels.astype(np.uint8)), expected)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([[0, 150]]), "0 to 149"),
        (np.array([[-1, 3]]), "0 to 149"),
        (np.zeros((2, 2), np.float32), "integer"),
        (np.zeros((2, 2, 1), np.int64), "2-D"),
    ],
)
def test_colorize_rejects_what_is_not_an_ade20k_label_map(labels, message):
    with pytest.raises(ValueError, match=message):
        colorize(labels)


# --- UperNet annotator -------------------------------------------------------------------------


def test_annotator_description():
    annotator = UpernetSegAnnotator()
    assert annotator.name == "seg_upernet"
    assert annotator.label == "Segmentation (UperNet ConvNeXt, ADE20K)"
    assert annotator.default_detect_resolution == 512
    assert annotator.map_interpolation == cv2.INTER_NEAREST
    assert annotator.params == () and annotator.check_params({"low_threshold": 5}) == {}


def test_detector_returns_a_palette_map_at_the_input_size(seg_detector):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (192, 320, 3), dtype=np.uint8)
    control_map = seg_detector(image)
    assert control_map.shape == (192, 320, 3) and control_map.dtype == np.uint8
    assert _colours(control_map) <= _palette_set()


def test_detector_equals_the_transformers_recipe(seg_models_dir, seg_detector, astronaut):
    # The diffusers docs' recipe: processor -> model -> post_process at the image size ->
    # palette; here at the detect size the annotator is given (no 512x512 squash).
    import torch
    from transformers import AutoImageProcessor, UperNetForSemanticSegmentation

    folder = seg_models_dir / SEGMENTER_ID
    processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    model = UperNetForSemanticSegmentation.from_pretrained(folder, local_files_only=True).eval()
    image = np.ascontiguousarray(astronaut[64:384, :448])  # (320, 448)
    pixel_values = processor(images=image, do_resize=False, return_tensors="pt").pixel_values
    with torch.inference_mode():
        outputs = model(pixel_values=pixel_values)
    labels = processor.post_process_semantic_segmentation(outputs, target_sizes=[(320, 448)])[0]

    np.testing.assert_array_equal(seg_detector(image), colorize(labels.numpy()))


def test_seg_map_of_a_real_photo_has_the_output_size_and_only_palette_colours(seg_detector, coffee):
    annotator = UpernetSegAnnotator()
    control_map = make_control_map(annotator, seg_detector, coffee, 512, 512)

    assert control_map.shape == (*output_size(*coffee.shape[:2], 512), 3) == (512, 768, 3)
    assert control_map.dtype == np.uint8
    colours = _colours(control_map)
    assert colours <= _palette_set()
    assert len(colours) > 1  # random weights still vary over a real photo


def test_map_made_at_a_lower_detect_resolution_keeps_palette_colours(seg_detector, astronaut):
    annotator = UpernetSegAnnotator()
    control_map = make_control_map(annotator, seg_detector, astronaut, 512, 256)

    assert control_map.shape == (512, 512, 3)
    assert _colours(control_map) <= _palette_set()
    # Why nearest neighbour: a linear resize of the same 256 px map blends class colours
    # into colours that belong to no class.
    small = seg_detector(cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA))
    blended = cv2.resize(small, (512, 512), interpolation=cv2.INTER_LINEAR)
    assert not _colours(blended) <= _palette_set()


def test_missing_segmenter_raises_model_unavailable_with_what_to_do(tmp_path):
    context = LoadContext(tmp_path, {"segmenter": "test-org/no-such-segmenter"})
    with pytest.raises(ModelUnavailableError) as caught:
        UpernetSegAnnotator().load(context)
    message = str(caught.value)
    assert "segmenter model `test-org/no-such-segmenter` is not available" in message
    assert str(tmp_path / "test-org/no-such-segmenter") in message
    assert "MODEL_SEGMENTER" in message


def test_folder_with_pytorch_bin_weights_loads_tensors_only(tmp_path, astronaut):
    # Like the Hub repo's main branch: pytorch_model.bin and no model.safetensors. transformers
    # reads it with torch.load(weights_only=True), so no pickled code can run.
    import torch

    folder = tmp_path / SEGMENTER_ID
    model = tiny_upernet()
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # save_pretrained: safetensors
    save_upernet_processor(folder)

    detector = UpernetSegAnnotator().load(LoadContext(tmp_path, dict(DEFAULT_MODEL_IDS)))
    assert _colours(detector(astronaut[:128, :128].copy())) <= _palette_set()


def test_broken_local_folder_names_the_folder(tmp_path):
    folder = tmp_path / SEGMENTER_ID
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    with pytest.raises(ModelUnavailableError) as caught:
        UpernetSegAnnotator().load(LoadContext(tmp_path, dict(DEFAULT_MODEL_IDS)))
    assert str(folder) in str(caught.value)


def test_importing_the_annotator_does_not_import_torch():
    code = (
        "import sys; import annotators.seg, annotators.ade20k; "
        "heavy = sorted({'torch', 'transformers'} & set(sys.modules)); "
        "assert not heavy, heavy"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
