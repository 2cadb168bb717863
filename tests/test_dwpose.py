"""DWPose: the real ONNX pipeline (letterbox, YOLOX decoding, NMS, the RTMPose crop, SimCC
decoding) on tiny ONNX models with planted outputs, the boxes and keypoints it must find (worked
out from the arithmetic), the maps against controlnet_aux's own DWposeDetector drawing the same
keypoints, the Pose tab end to end, availability and download."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

import download
from annotators import ANNOTATORS, LoadContext, make_control_map
from annotators.dwpose import (
    DETECTOR_FILE,
    POSE_FILE,
    DwposeDetector,
    Sessions,
    openpose_people,
)
from annotators.dwpose_onnx import crop, crop_matrix, decode_simcc, letterbox
from availability import command, condition_status
from conditions import CONDITIONS
from errors import ModelUnavailableError
from settings import DEFAULT_MODEL_IDS, Settings
from testkit.dwpose_models import (
    DWPOSE_ID,
    POSE_INPUT,
    PlantedBox,
    save_dwpose,
    simcc_vectors,
    standing_figure,
    write_planted_model,
    yolox_rows,
)
from testkit.paths import ASSETS, PROJECT_ROOT

FAST = {"steps": 2, "image_resolution": 256, "seed": 7}
NAMES = ("dw_openpose", "dw_openpose_full")
SCALE = 640 / 512  # the detector's input over the 512 x 512 test image


def planted(x1, y1, x2, y2, **kwargs) -> PlantedBox:
    """A box given in the 512 x 512 image's pixels, planted in the detector's 640 x 640 input."""
    return PlantedBox(x1 * SCALE, y1 * SCALE, x2 * SCALE, y2 * SCALE, **kwargs)


# Two people overlapping (IoU 0.31: both kept), a small third one, and three boxes the pipeline
# must drop: a near copy of the first with a lower score (NMS), a person scoring 0.25 (under 0.3
# after NMS) and a confident car (not a person).
PEOPLE = ((128, 64, 384, 448), (250, 100, 506, 484), (16, 200, 112, 392))
SCENE = (
    planted(*PEOPLE[0], objectness=0.9, class_scores={0: 0.9}),
    planted(*PEOPLE[1], objectness=0.9, class_scores={0: 0.85}),
    planted(*PEOPLE[2], objectness=0.8, class_scores={0: 0.9}),
    planted(130, 66, 386, 450, class_scores={0: 0.6}, stride=16),
    planted(400, 20, 480, 120, objectness=0.5, class_scores={0: 0.5}, stride=8),
    planted(20, 20, 100, 100, class_scores={2: 0.9}, stride=8),
)


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dwpose_scene")
    save_dwpose(folder, SCENE)
    return folder


@pytest.fixture(scope="module")
def detectors(scene_dir) -> dict:
    context = LoadContext(scene_dir, dict(DEFAULT_MODEL_IDS))
    return {name: ANNOTATORS[name].load(context) for name in NAMES}


def expected_points(box, figure_points) -> np.ndarray:
    """Where the figure planted in the pose model's input lands in the image, for `box`: the
    box grown by 1.25 and then to 288 : 384, the input spread over that area."""
    x1, y1, x2, y2 = box
    centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
    width, height = (x2 - x1) * 1.25, (y2 - y1) * 1.25
    size = np.array([width, width / 0.75] if width > height * 0.75 else [height * 0.75, height])
    return figure_points / np.array(POSE_INPUT) * size + centre - size / 2


# ---- the registry ------------------------------------------------------------------------------
def test_dwpose_is_on_the_pose_tab_with_its_files():
    pose = CONDITIONS["openpose"]
    assert pose.annotators == (
        "openpose",
        "dw_openpose",
        "dw_openpose_full",
        "mediapipe_pose",
        "none",
    )
    assert DEFAULT_MODEL_IDS["dwpose"] == "yzd-v/DWPose"
    for name in NAMES:
        assert ANNOTATORS[name].needs == (
            ("dwpose", "yolox_l.onnx"),
            ("dwpose", "dw-ll_ucoco_384.onnx"),
        )
        assert ANNOTATORS[name].default_detect_resolution == 512
        assert ANNOTATORS[name].params == ()
    assert ANNOTATORS["mediapipe_pose"].needs == ()  # the no-download fallback stays


# ---- the pipeline's steps ----------------------------------------------------------------------
def test_letterbox_scales_into_the_top_left_of_a_grey_640_canvas():
    image = np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    fed, ratio = letterbox(image)
    assert ratio == 640 / 300 and fed.shape == (1, 3, 640, 640) and fed.dtype == np.float32
    width = int(200 * ratio)  # 426
    scaled = cv2.resize(image, (width, 640), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(fed[0].transpose(1, 2, 0)[:, :width], scaled)
    assert (fed[0, :, :, width:] == 114).all()  # the grey canvas; 0-255, not normalised


def test_the_crop_maps_the_grown_box_onto_the_models_input():
    """Box (128, 64)-(384, 448): 256 x 384, grown by 1.25 to 320 x 480, widened to 360 x 480
    (288 : 384) about its centre (256, 256): the area (76, 16)-(436, 496), 1.25 image pixels per
    input pixel."""
    matrix = crop_matrix(np.array([256.0, 256.0]), np.array([360.0, 480.0]), POSE_INPUT)
    corners = np.array([[76, 16, 1], [436, 496, 1], [256, 256, 1]], dtype=float)
    np.testing.assert_allclose(corners @ matrix.T, [[0, 0], [288, 384], [144, 192]], atol=1e-4)
    red = np.zeros((512, 512, 3), np.uint8)
    red[..., 0] = 255
    fed, centre, size = crop(red, np.array(PEOPLE[0], dtype=float), POSE_INPUT)
    assert fed.shape == (1, 3, 384, 288) and fed.dtype == np.float32
    np.testing.assert_array_equal(centre, [256, 256])
    np.testing.assert_array_equal(size, [360, 480])
    # RGB normalised with ImageNet's mean and std: red is (255 - 123.675) / 58.395 in channel 0.
    np.testing.assert_allclose(fed[0, :, 192, 144], [2.2489, -2.0357, -1.8044], atol=1e-4)


def test_simcc_decoding_takes_the_peaks_in_half_pixels_and_the_smaller_height():
    points = np.array([[10.5, 20.0], [287.5, 383.5], [0.0, 0.0]])
    simcc_x, simcc_y = simcc_vectors(points, np.array([0.8, 0.5, 0.0]))
    simcc_y[0, 0, 40] = 0.6  # the y peak lower than the x peak: the score is the lower one
    decoded, scores = decode_simcc(simcc_x, simcc_y)
    np.testing.assert_array_equal(decoded[0, :2], points[:2])
    np.testing.assert_allclose(scores[0], [0.6, 0.5, 0.0], atol=1e-7)  # float32
    np.testing.assert_array_equal(decoded[0, 2], [-0.5, -0.5])  # no peak: -1 bins, halved


# ---- the pipeline on the planted models --------------------------------------------------------
def test_the_boxes_are_the_people_after_nms_and_the_score_filter(detectors, astronaut):
    boxes, points, scores = detectors["dw_openpose_full"].people(astronaut)
    # float32 decoding: exp(log(w / 32)) and the division by 1.25 are exact to ~1e-7 relative.
    np.testing.assert_allclose(boxes, PEOPLE, atol=1e-3)
    assert points.shape == (3, 133, 2) and scores.shape == (3, 133)


def test_the_keypoints_are_where_the_planted_bins_put_them(detectors, astronaut):
    figure_points, figure_scores = standing_figure()
    boxes, points, scores = detectors["dw_openpose_full"].people(astronaut)
    for index, box in enumerate(boxes):
        # From the found box: the same float64 arithmetic, to rounding.
        np.testing.assert_allclose(points[index], expected_points(box, figure_points), atol=1e-9)
        # From the planted box: the found box's float32 error (< 1e-4 px) times at most 1.25.
        planted_points = expected_points(PEOPLE[index], figure_points)
        np.testing.assert_allclose(points[index], planted_points, atol=1e-3)
        np.testing.assert_allclose(scores[index], figure_scores, atol=1e-7)  # float32 peaks
    # The first person's nose: input (144, 60) -> (144 * 1.25 + 76, 60 * 1.25 + 16).
    np.testing.assert_allclose(points[0, 0], [256, 91], atol=1e-3)


def test_without_a_person_box_the_whole_image_is_the_box(tmp_path, astronaut):
    save_dwpose(tmp_path, (planted(20, 20, 100, 100, class_scores={2: 0.9}),))  # a car only
    detector = ANNOTATORS["dw_openpose"].load(LoadContext(tmp_path, dict(DEFAULT_MODEL_IDS)))
    boxes, points, _ = detector.people(astronaut)
    assert boxes.shape == (0, 4) and points.shape == (1, 133, 2)
    np.testing.assert_allclose(
        points[0], expected_points((0, 0, 512, 512), standing_figure()[0]), atol=1e-9
    )


class Spy:
    """An onnxruntime session that records what it is fed."""

    def __init__(self, session):
        self.session, self.fed = session, []

    def get_inputs(self):
        return self.session.get_inputs()

    def run(self, names, feeds):
        self.fed.append(next(iter(feeds.values())))
        return self.session.run(names, feeds)


def test_the_detector_sees_bgr_and_the_pose_model_rgb(detectors, astronaut):
    """YOLOX was trained on BGR (MMDetection, no channel swap), RTMPose on RGB (MMPose swaps):
    the channel orders controlnet_aux's DWposeDetector gives them."""
    sessions = detectors["dw_openpose"].sessions
    spies = Sessions(Spy(sessions.detector), Spy(sessions.pose))
    DwposeDetector(spies, full=False)(astronaut)
    letterboxed, _ = letterbox(astronaut[:, :, ::-1])
    np.testing.assert_array_equal(spies.detector.fed[0], letterboxed)
    boxes, _, _ = detectors["dw_openpose"].people(astronaut)
    assert len(spies.pose.fed) == len(boxes) == 3  # one crop per person
    for fed, box in zip(spies.pose.fed, boxes, strict=True):
        np.testing.assert_array_equal(fed, crop(astronaut, box, POSE_INPUT)[0])
        assert not np.array_equal(fed, crop(astronaut[:, :, ::-1], box, POSE_INPUT)[0])


# ---- the maps: equal to controlnet_aux's DWposeDetector on the same keypoints --------------------
class _Fields(dict):
    """What MMDetection's and MMPose's result objects offer: fields as attributes and `in`."""

    __getattr__ = dict.__getitem__

    def cpu(self):
        return self

    def numpy(self):
        return self


@pytest.fixture
def controlnet_aux_dwpose(monkeypatch, detectors):
    """controlnet_aux 0.0.10's DWposeDetector (its Wholebody conversion, thresholds, drawing
    and resizing), with MMDetection's and MMPose's inference calls answered by our pipeline: the
    boxes and 133 keypoints it finds on the image controlnet_aux hands them (BGR, at the
    annotator resolution)."""
    from controlnet_aux.dwpose import DWposeDetector

    with warnings.catch_warnings():  # mmcv, mmpose and mmdet are not installed: their fakes are
        warnings.simplefilter("ignore", UserWarning)
        from controlnet_aux.dwpose import wholebody as aux_wholebody

    ours = detectors["dw_openpose_full"]

    def inference_detector(model, bgr):
        boxes, _, _ = ours.people(bgr[:, :, ::-1])
        found = _Fields(bboxes=boxes, scores=np.ones(len(boxes)), labels=np.zeros(len(boxes)))
        return SimpleNamespace(pred_instances=found)

    def inference_topdown(model, bgr, bboxes=None):
        boxes, points, scores = ours.people(bgr[:, :, ::-1])
        assert (bboxes is None) == (len(boxes) == 0)
        return (points, scores)

    def merge_data_samples(results):
        points, scores = results
        return SimpleNamespace(pred_instances=_Fields(keypoints=points, keypoint_scores=scores))

    for name, fake in {
        "inference_detector": inference_detector,
        "inference_topdown": inference_topdown,
        "merge_data_samples": merge_data_samples,
        "nms": lambda boxes, threshold: list(range(len(boxes))),
    }.items():
        monkeypatch.setattr(aux_wholebody, name, fake, raising=False)
    wholebody = aux_wholebody.Wholebody.__new__(aux_wholebody.Wholebody)
    wholebody.detector = wholebody.pose_estimator = None  # the fakes above stand for them
    detector = DWposeDetector.__new__(DWposeDetector)
    detector.pose_estimation = wholebody
    return detector


@pytest.mark.parametrize(("resolution", "detect_resolution"), [(512, 512), (256, 512), (384, 256)])
def test_the_full_map_equals_controlnet_aux(
    controlnet_aux_dwpose, detectors, astronaut, resolution, detect_resolution
):
    annotator = ANNOTATORS["dw_openpose_full"]
    got = make_control_map(
        annotator, detectors[annotator.name], astronaut, resolution, detect_resolution, {}
    )
    expected = controlnet_aux_dwpose(
        astronaut,
        detect_resolution=detect_resolution,
        image_resolution=resolution,
        output_type="np",
    )
    assert got.shape == expected.shape == (resolution, resolution, 3) and got.any()
    np.testing.assert_array_equal(got, expected)


def test_the_body_map_equals_controlnet_aux_without_hands_and_faces(
    controlnet_aux_dwpose, detectors, astronaut, monkeypatch
):
    from controlnet_aux.dwpose import util

    monkeypatch.setattr(util, "draw_handpose", lambda canvas, hands: canvas)
    monkeypatch.setattr(util, "draw_facepose", lambda canvas, faces: canvas)
    annotator = ANNOTATORS["dw_openpose"]
    got = make_control_map(annotator, detectors[annotator.name], astronaut, 512, 512, {})
    expected = controlnet_aux_dwpose(
        astronaut, detect_resolution=512, image_resolution=512, output_type="np"
    )
    np.testing.assert_array_equal(got, expected)
    full = make_control_map(
        ANNOTATORS["dw_openpose_full"], detectors["dw_openpose_full"], astronaut, 512, 512, {}
    )
    white = (full == 255).all(axis=2)  # face points are white; no body colour is
    assert white.sum() > 100 and not (got == 255).all(axis=2).any()


def test_the_thresholds_and_the_neck():
    """A body point is drawn above 0.3, a hand or face point at 0.3 too; the neck is the middle
    of the shoulders (in pixels), drawn when both shoulders are above 0.3."""
    points = np.tile(np.arange(133, dtype=float)[:, None] * [2.0, 1.0], (2, 1, 1))  # (2, 133, 2)
    scores = np.full((2, 133), 0.9)
    scores[0, 0], scores[0, 91], scores[0, 23] = 0.3, 0.3, 0.29
    scores[1, 6] = 0.3  # the second person's right shoulder
    first, second = openpose_people(points, scores, height=200, width=400)
    assert first.body[0] is None  # the nose at 0.3
    assert first.hands[0][0] == (91 * 2 / 400, 91 / 200)  # the left wrist of the hand at 0.3
    assert first.face[0] is None  # under 0.3
    assert first.body[1] == ((10 + 12) / 2 / 400, (5 + 6) / 2 / 200)  # shoulders 5 and 6
    assert first.body[2] == (12 / 400, 6 / 200)  # OpenPose's right shoulder: COCO's 6
    assert second.body[1] is None and second.body[2] is None
    assert len(first.face) == 68 and [len(hand) for hand in first.hands] == [21, 21]


def test_overlapping_people_are_drawn_limb_by_limb_across_them(detectors, astronaut):
    """The two overlapping people: each limb of everyone before the next limb (controlnet_aux's
    order), which is not person after person where they cross."""
    from annotators.pose_draw import draw_body

    _, points, scores = detectors["dw_openpose"].people(astronaut)
    people = openpose_people(points, scores, 512, 512)
    person_by_person = np.zeros((512, 512, 3), np.uint8)
    for person in people:
        draw_body(person_by_person, person.body)
    ours = detectors["dw_openpose"](astronaut)
    assert not np.array_equal(ours, person_by_person)
    assert (ours.any(axis=2) == person_by_person.any(axis=2)).all()  # the same pixels drawn


# ---- loading -----------------------------------------------------------------------------------
@pytest.mark.parametrize("missing", [DETECTOR_FILE, POSE_FILE])
def test_missing_files_name_the_file_and_the_download_command(tmp_path, scene_dir, missing):
    for name in (DETECTOR_FILE, POSE_FILE):
        if name != missing:
            target = tmp_path / DWPOSE_ID / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((scene_dir / DWPOSE_ID / name).read_bytes())
    with pytest.raises(ModelUnavailableError, match=missing) as refused:
        ANNOTATORS["dw_openpose"].load(LoadContext(tmp_path, dict(DEFAULT_MODEL_IDS)))
    assert "python -m cli download dwpose" in str(refused.value)


def test_a_file_that_is_no_onnx_model_is_refused_with_its_name(tmp_path, scene_dir):
    folder = tmp_path / DWPOSE_ID
    folder.mkdir(parents=True)
    (folder / DETECTOR_FILE).write_bytes(b"not a model")
    (folder / POSE_FILE).write_bytes((scene_dir / DWPOSE_ID / POSE_FILE).read_bytes())
    with pytest.raises(ModelUnavailableError, match="yolox_l.onnx.*yzd-v/DWPose"):
        ANNOTATORS["dw_openpose_full"].load(LoadContext(tmp_path, dict(DEFAULT_MODEL_IDS)))


def test_sessions_run_on_the_cpu_and_on_cuda_where_onnxruntime_has_it(scene_dir, monkeypatch):
    import onnxruntime

    from annotators.dwpose_onnx import open_session

    path = scene_dir / DWPOSE_ID / POSE_FILE
    assert open_session(path, "cpu").get_providers() == ["CPUExecutionProvider"]
    asked = []
    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPU"]
    )
    monkeypatch.setattr(
        onnxruntime, "InferenceSession", lambda path, providers: asked.append(providers)
    )
    open_session(path, "cuda:0")
    open_session(path, "cpu")
    assert asked == [["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]]


def test_the_two_annotators_share_one_pair_of_sessions(detectors):
    assert detectors["dw_openpose"].sessions is detectors["dw_openpose_full"].sessions


def test_the_planted_models_have_the_real_models_shapes(scene_dir):
    import onnxruntime

    def shapes(session, kind):
        return [(port.name, port.shape) for port in getattr(session, kind)()]

    folder = scene_dir / DWPOSE_ID
    yolox = onnxruntime.InferenceSession(str(folder / DETECTOR_FILE))
    pose = onnxruntime.InferenceSession(str(folder / POSE_FILE))
    assert shapes(yolox, "get_inputs") == [("images", [1, 3, 640, 640])]
    assert shapes(yolox, "get_outputs") == [("output", [1, 8400, 85])]
    assert shapes(pose, "get_inputs") == [("input", [1, 3, 384, 288])]
    assert shapes(pose, "get_outputs") == [("simcc_x", [1, 133, 576]), ("simcc_y", [1, 133, 768])]
    rows = yolox_rows(SCENE)
    assert np.count_nonzero(rows[0, :, 4]) == len(SCENE)


def test_the_planted_model_reads_its_input(tmp_path):
    """onnxruntime checks the input's shape: the pipeline must feed the real model's."""
    import onnxruntime

    path = write_planted_model(
        tmp_path / "m.onnx", "x", (1, 3, 8, 8), {"y": np.ones((2,), np.float32)}
    )
    session = onnxruntime.InferenceSession(str(path))
    assert session.run(None, {"x": np.zeros((1, 3, 8, 8), np.float32)})[0].tolist() == [1, 1]
    with pytest.raises(Exception, match="(?i)dimensions|shape"):
        session.run(None, {"x": np.zeros((1, 3, 8, 9), np.float32)})


def test_the_modules_do_not_import_onnxruntime_or_torch():
    code = (
        "import sys; import annotators.dwpose, annotators.dwpose_onnx; "
        "assert 'onnxruntime' not in sys.modules and 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True)


# ---- the Pose tab end to end (the tests' MODELS_DIR holds the default planted scene) -------------
@pytest.mark.parametrize("annotator", NAMES)
def test_dwpose_generates_on_the_pose_tab(engine, astronaut, annotator):
    result = engine.generate("openpose", astronaut, "a dancer", annotator=annotator, **FAST)
    assert result.control_map.shape == (256, 256, 3) and result.control_map.max() > 0
    assert not any("MediaPipe" in warning for warning in result.warnings)
    assert engine.cached_controlnets[-1] == DEFAULT_MODEL_IDS["openpose"]
    assert result.parameters[0]["units"][0]["annotator"] == annotator
    annotated = engine.annotate(astronaut, annotator, image_resolution=256).image
    np.testing.assert_array_equal(result.control_map, annotated)


def test_availability_knows_what_dwpose_needs(models_dir, tmp_path, monkeypatch):
    import shutil

    from ui.status import tab_note

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    status = condition_status(CONDITIONS["openpose"], Settings(models_dir=models_dir))
    assert status.ready and not set(NAMES) & set(status.annotator_missing)
    copy = tmp_path / "models"
    for model_id in (DEFAULT_MODEL_IDS["base"], DEFAULT_MODEL_IDS["openpose"]):
        shutil.copytree(models_dir / model_id, copy / model_id)
    status = condition_status(CONDITIONS["openpose"], Settings(models_dir=copy))
    assert status.ready  # OpenPose falls back to MediaPipe
    assert set(NAMES) <= set(status.annotator_missing)
    words = [need.words for need in status.annotator_missing["dw_openpose"]]
    assert words == [
        "the DWPose models (`yolox_l.onnx` of `yzd-v/DWPose`)",
        "the DWPose models (`dw-ll_ucoco_384.onnx` of `yzd-v/DWPose`)",
    ]
    assert tab_note(status) == ""  # the tab is ready: its first annotator runs
    assert command(status.annotator_missing["dw_openpose_full"]) == "python -m cli download dwpose"


def test_download_fetches_exactly_the_two_onnx_files(tmp_path, scene_dir):
    rule = download.rule_for("dwpose")
    assert rule == download.rule_for("dwpose", "fp16") == download.DWPOSE_RULE
    assert set(rule.allow) == {DETECTOR_FILE, POSE_FILE}
    assert "dwpose" in download.ROLES  # --all fetches it
    (scene_dir / DWPOSE_ID / "dw-ll_ucoco_384.pth").write_bytes(b"a checkpoint not read")
    out = tmp_path / "models"
    assert download.download(["dwpose"], out, source=scene_dir, echo=lambda line: None) == []
    assert sorted(path.name for path in (out / DWPOSE_ID).iterdir()) == sorted(rule.allow)
    detector = ANNOTATORS["dw_openpose"].load(LoadContext(out, dict(DEFAULT_MODEL_IDS)))
    assert detector.people(np.zeros((64, 64, 3), np.uint8))[1].shape[1] == 133


# ---- through a real server ---------------------------------------------------------------------
def test_annotate_runs_dwpose_on_the_server(server, engine, astronaut):
    client = Client(server.url, verbose=False)
    path, pose = client.predict(
        image=handle_file(ASSETS / "astronaut.png"),
        annotator="dw_openpose_full",
        image_resolution=256,
        api_name="/annotate",
    )
    served = np.asarray(Image.open(path).convert("RGB"))
    expected = engine.annotate(astronaut, "dw_openpose_full", image_resolution=256)
    np.testing.assert_array_equal(served, expected.image)
    assert pose == expected.pose  # the people drawn, as OpenPose JSON
