"""Pose maps in OpenPose's format: the shared drawing, MediaPipe on real photos, OpenPose's loading.

The OpenPose networks get random weights in the real files' layout (Caffe layer names for body and
hand, FaceNet's own names for the face), loaded through the app's own `load`; nothing is
downloaded. OpenPose's output on them is meaningless, so its maps are checked for format only.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from annotators import LoadContext, make_control_map
from annotators.pose import (
    BODY_WEIGHTS,
    FACE_WEIGHTS,
    HAND_WEIGHTS,
    MEDIAPIPE_FACE,
    MediapipePoseAnnotator,
    OpenposeAnnotator,
    body_from_mediapipe,
    hand_from_mediapipe,
)
from annotators.pose_draw import (
    BODY_COLOURS,
    BODY_LIMBS,
    BODY_PARTS,
    FACE_POINTS,
    LIMB_COLOURS,
    PoseKeypoints,
    draw_poses,
)
from errors import ModelUnavailableError
from settings import DEFAULT_MODEL_IDS

# Importing controlnet_aux registers its own timm models over timm's: harmless here.
pytestmark = pytest.mark.filterwarnings("ignore:Overwriting tiny_vit:UserWarning")

BLACK = (0, 0, 0)
# Straight from controlnet_aux's draw_bodypose: the nose joint (first colour) and the
# neck-to-right-shoulder limb (first limb, drawn at 60%).
NOSE_RED, NECK_TO_RIGHT_SHOULDER = (255, 0, 0), (153, 0, 0)


def colours_in(image: np.ndarray) -> set[tuple[int, int, int]]:
    return {tuple(int(c) for c in colour) for colour in np.unique(image.reshape(-1, 3), axis=0)}


def pose_map(annotator, detector, image, include_hands=False, include_face=False) -> np.ndarray:
    params = annotator.check_params({"include_hands": include_hands, "include_face": include_face})
    return make_control_map(annotator, detector, image, 512, 512, params)


@pytest.fixture(scope="module")
def mediapipe_detector():
    return MediapipePoseAnnotator().load(LoadContext(Path("/nonexistent"), DEFAULT_MODEL_IDS))


# --- drawing --------------------------------------------------------------------------------------
def test_drawing_matches_controlnet_aux_pixel_for_pixel():
    from controlnet_aux.open_pose.body import Keypoint
    from controlnet_aux.open_pose.util import draw_bodypose, draw_facepose, draw_handpose

    rng = np.random.default_rng(0)
    body = [tuple(rng.uniform(0.05, 0.95, 2)) for _ in BODY_PARTS]
    body[4] = body[13] = None  # a wrist and an ankle not found
    hand = [tuple(rng.uniform(0.05, 0.95, 2)) for _ in range(21)]
    hand[7] = (-1.0, -1.0)  # controlnet_aux's "not found" for hand and face points
    face = [tuple(rng.uniform(0.05, 0.95, 2)) for _ in range(FACE_POINTS)]
    face[3] = (-1.0, -1.0)

    def keypoints(points):
        return [None if p is None else Keypoint(*p) for p in points]

    theirs = np.zeros((384, 640, 3), np.uint8)
    draw_bodypose(theirs, keypoints(body))
    draw_handpose(theirs, keypoints(hand))
    draw_facepose(theirs, keypoints(face))
    hand[7] = None  # ours takes None too
    pose = PoseKeypoints(tuple(body), (tuple(hand),), tuple(face))
    ours = draw_poses([pose], 384, 640, include_hands=True, include_face=True)

    np.testing.assert_array_equal(ours, theirs)


def test_hands_and_face_are_drawn_only_when_asked():
    hand = hand_from_mediapipe(
        [SimpleNamespace(x=0.5 + 0.01 * i, y=0.8 - 0.015 * (i % 5)) for i in range(21)]
    )
    face = tuple((0.3 + 0.005 * i, 0.3) for i in range(FACE_POINTS))
    pose = PoseKeypoints((None,) * len(BODY_PARTS), (hand,), face)

    assert not draw_poses([pose], 256, 256).any()
    with_hand = draw_poses([pose], 256, 256, include_hands=True)
    assert (0, 0, 255) in colours_in(with_hand)  # OpenPose's blue hand joints
    assert len(colours_in(with_hand)) > 5  # and its bones in several hues
    with_face = draw_poses([pose], 256, 256, include_face=True)
    assert colours_in(with_face) == {BLACK, (255, 255, 255)}


# --- MediaPipe -> OpenPose keypoints --------------------------------------------------------------
def test_mediapipe_landmarks_map_to_openpose_order():
    # Landmark i sits at x = i / 40; the right side is hidden from the hips down.
    marks = [SimpleNamespace(x=i / 40, y=0.5, visibility=0.9) for i in range(33)]
    for i in (24, 26, 28):  # right hip, knee, ankle
        marks[i].visibility = 0.2
    marks[27].y = 1.2  # left ankle below the frame

    body = dict(zip(BODY_PARTS, body_from_mediapipe(marks), strict=True))

    def index(part: str) -> int:
        return round(body[part][0] * 40)

    assert index("nose") == 0
    assert body["neck"] == pytest.approx(((11 + 12) / 80, 0.5))  # mid-shoulders
    assert [index(p) for p in ("right_shoulder", "right_elbow", "right_wrist")] == [12, 14, 16]
    assert [index(p) for p in ("left_shoulder", "left_elbow", "left_wrist")] == [11, 13, 15]
    assert [index(p) for p in ("left_hip", "left_knee")] == [23, 25]
    assert [index(p) for p in ("right_eye", "left_eye", "right_ear", "left_ear")] == [5, 2, 8, 7]
    assert body["right_hip"] is body["right_knee"] is body["right_ankle"] is None
    assert body["left_ankle"] is None
    assert len(MEDIAPIPE_FACE) == FACE_POINTS and max(MEDIAPIPE_FACE) < 478


def test_mediapipe_finds_the_astronauts_upper_body(astronaut, mediapipe_detector):
    """Geometry of what the portrait shows: head, shoulders, the right upper arm.

    The photo ends at the chest: hips, knees and ankles are out of the frame, the left hand is
    hidden behind the helmet and the right glove is cut by the bottom edge, so MediaPipe rates
    both wrists under its visibility threshold: they must be missing, not guessed.
    """
    (pose,) = mediapipe_detector.poses(astronaut)
    head = ("nose", "right_eye", "left_eye", "right_ear", "left_ear")
    assert all(pose[part] is not None for part in head + ("neck", "right_elbow"))

    def y(part: str) -> float:
        return pose[part][1]

    def x(part: str) -> float:
        return pose[part][0]

    assert max(y(part) for part in head) < y("neck")  # image y grows downwards
    assert y("neck") < y("right_elbow")
    assert abs(y("right_shoulder") - y("left_shoulder")) < 0.1
    # The person faces the camera: her right side is on the image's left.
    assert x("right_shoulder") < x("right_ear") < x("nose") < x("left_ear") < x("left_shoulder")
    assert x("right_eye") < x("left_eye")
    assert x("left_shoulder") - x("right_shoulder") > 2 * (x("left_ear") - x("right_ear"))
    for part in ("right_wrist", "left_wrist", "right_hip", "left_hip", "right_ankle", "left_ankle"):
        assert pose[part] is None, part


def test_mediapipe_finds_hips_and_wrists_on_a_full_torso(mediapipe_detector):
    """skimage's cameraman (bundled with scikit-image): hips and both hands on the camera show."""
    from skimage import data

    (pose,) = mediapipe_detector.poses(np.repeat(data.camera()[:, :, None], 3, axis=2))
    parts = (
        "right_shoulder",
        "left_shoulder",
        "right_wrist",
        "left_wrist",
        "right_hip",
        "left_hip",
    )
    assert all(pose[part] is not None for part in parts)
    shoulders = min(pose["right_shoulder"][1], pose["left_shoulder"][1])
    hips = min(pose["right_hip"][1], pose["left_hip"][1])
    wrists = max(pose["right_wrist"][1], pose["left_wrist"][1])
    assert shoulders < hips and wrists < hips  # hands held up at the camera, above the hips


def test_mediapipe_map_is_openpose_colours_on_black(astronaut, mediapipe_detector):
    annotator = MediapipePoseAnnotator()
    control_map = pose_map(annotator, mediapipe_detector, astronaut)

    assert control_map.shape == (512, 512, 3) and control_map.dtype == np.uint8
    assert (control_map == 0).all(axis=2).mean() > 0.9
    (pose,) = mediapipe_detector.poses(astronaut)
    found = [i for i, point in enumerate(pose.body) if point is not None]
    drawn_limbs = [i for i, (a, b) in enumerate(BODY_LIMBS) if a in found and b in found]
    expected = {BODY_COLOURS[i] for i in found} | {LIMB_COLOURS[i] for i in drawn_limbs}
    assert colours_in(control_map) == {BLACK} | expected  # exactly OpenPose's colours, nothing else
    assert {NOSE_RED, NECK_TO_RIGHT_SHOULDER} <= colours_in(control_map)
    x, y = pose["nose"]
    assert tuple(control_map[int(y * 512), int(x * 512)]) == NOSE_RED


def test_mediapipe_face_adds_white_points_and_hands_keep_the_map_valid(
    astronaut, mediapipe_detector
):
    """No bundled photo shows a bare hand (the astronaut wears gloves): hands are drawn from
    synthetic points above; here the hand flag must only run cleanly."""
    annotator = MediapipePoseAnnotator()
    body_only = pose_map(annotator, mediapipe_detector, astronaut)
    with_face = pose_map(annotator, mediapipe_detector, astronaut, include_face=True)
    with_hands = pose_map(annotator, mediapipe_detector, astronaut, include_hands=True)

    assert (with_face > 0).any(axis=2).sum() > (body_only > 0).any(axis=2).sum() + 500
    white = (with_face == 255).all(axis=2)
    assert white.sum() > 300 and not (body_only == 255).all(axis=2).any()
    rows, columns = np.nonzero(white)
    (pose,) = mediapipe_detector.poses(astronaut, include_face=True)
    assert pose.face is not None and sum(p is not None for p in pose.face) == FACE_POINTS
    # The face points surround the nose and lie above the neck.
    nose_x, nose_y = pose["nose"]
    assert columns.min() < nose_x * 512 < columns.max() and rows.min() < nose_y * 512 < rows.max()
    assert rows.max() < pose["neck"][1] * 512
    assert with_hands.shape == (512, 512, 3) and with_hands.dtype == np.uint8


# --- OpenPose -------------------------------------------------------------------------------------
def save_random_weights(folder: Path, *filenames: str) -> None:
    """Random tensors with the real files' names, shapes and dtype, saved like the real files.

    Every tensor is a view of one random buffer, so a file holds ~9 MB, not 140-200 MB (torch.save
    stores a shared storage once). Scaled small, the networks find no one and stay fast.
    """
    import torch
    from controlnet_aux.open_pose.face import FaceNet
    from controlnet_aux.open_pose.model import bodypose_model, handpose_model

    # body/hand: Caffe layer names without the torch model's stage prefix ("conv1_1.weight").
    models = {
        BODY_WEIGHTS: (bodypose_model, True),
        HAND_WEIGHTS: (handpose_model, True),
        FACE_WEIGHTS: (FaceNet, False),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for filename in filenames:
        build, caffe_names = models[filename]
        state = build().state_dict()
        size = max(tensor.numel() for tensor in state.values())
        buffer = torch.randn(size, generator=torch.Generator().manual_seed(0)) * 0.01
        torch.save(
            {
                (name.split(".", 1)[1] if caffe_names else name): buffer[: t.numel()].view(t.shape)
                for name, t in state.items()
            },
            folder / filename,
        )


def annotators_folder(models_dir: Path) -> Path:
    return models_dir / DEFAULT_MODEL_IDS["annotators"]


def test_openpose_loads_the_real_file_layout_and_draws_a_map(tmp_path, coffee):
    save_random_weights(annotators_folder(tmp_path), BODY_WEIGHTS, HAND_WEIGHTS, FACE_WEIGHTS)
    annotator = OpenposeAnnotator()
    detector = annotator.load(LoadContext(tmp_path, DEFAULT_MODEL_IDS))

    assert detector.notice is None
    control_map = pose_map(annotator, detector, coffee)
    assert control_map.shape == (512, 768, 3) and control_map.dtype == np.uint8
    assert not control_map.any()  # random weights find no one: a black map


def test_openpose_loads_hand_and_face_weights_only_when_asked(tmp_path, astronaut, monkeypatch):
    """With the body network's output stubbed to one person (random weights find no one), the
    whole path runs: hand and face weights are read on first request, the face network runs on
    the face box, and the map is the shared drawing of the body found."""
    from controlnet_aux.open_pose.body import Body

    # Pixel coordinates on the 512x512 image: no wrists, so no hand box (the hand network at four
    # scales takes tens of seconds on CPU) but the hand weights are still loaded when asked.
    people = {
        "nose": (256, 120), "neck": (256, 200), "right_shoulder": (180, 205),
        "right_elbow": (150, 300), "left_shoulder": (332, 205), "left_elbow": (360, 300),
        "right_eye": (240, 105), "left_eye": (272, 105), "right_ear": (220, 112),
        "left_ear": (292, 112),
    }  # fmt: skip
    candidate = np.array([[x, y, 0.9, i] for i, (x, y) in enumerate(people.values())])
    row = [list(people).index(p) if p in people else -1 for p in BODY_PARTS] + [9.0, len(people)]
    monkeypatch.setattr(Body, "__call__", lambda self, image: (candidate, np.array([row], float)))

    folder = annotators_folder(tmp_path)
    save_random_weights(folder, BODY_WEIGHTS)
    annotator = OpenposeAnnotator()
    detector = annotator.load(LoadContext(tmp_path, DEFAULT_MODEL_IDS))
    body_only = pose_map(annotator, detector, astronaut)  # needs no hand or face weights
    with pytest.raises(ModelUnavailableError, match=HAND_WEIGHTS):
        pose_map(annotator, detector, astronaut, include_hands=True)

    save_random_weights(folder, HAND_WEIGHTS, FACE_WEIGHTS)
    both = pose_map(annotator, detector, astronaut, include_hands=True, include_face=True)
    (pose,) = detector.poses(astronaut, include_hands=True, include_face=True)

    expected = {p: (x / 512, y / 512) for p, (x, y) in people.items()}
    assert {p: point for p, point in zip(BODY_PARTS, pose.body, strict=True) if point} == expected
    np.testing.assert_array_equal(body_only, draw_poses([pose], 512, 512))
    np.testing.assert_array_equal(both, draw_poses([pose], 512, 512, True, True))
    assert NOSE_RED in colours_in(body_only)


def test_openpose_without_weights_falls_back_to_mediapipe_with_a_notice(tmp_path, astronaut):
    annotators_folder(tmp_path).mkdir(parents=True)  # the repo folder, without the weights
    annotator = OpenposeAnnotator()
    detector = annotator.load(LoadContext(tmp_path, DEFAULT_MODEL_IDS))

    assert "OpenPose weights not found" in detector.notice and "MediaPipe" in detector.notice
    assert BODY_WEIGHTS in detector.notice
    mediapipe = MediapipePoseAnnotator()
    np.testing.assert_array_equal(
        pose_map(annotator, detector, astronaut),
        pose_map(mediapipe, mediapipe.load(LoadContext(tmp_path, DEFAULT_MODEL_IDS)), astronaut),
    )


def test_annotators_describe_the_same_flags():
    for annotator in (OpenposeAnnotator(), MediapipePoseAnnotator()):
        assert [(p.name, p.default, p.is_flag) for p in annotator.params] == [
            ("include_hands", False, True),
            ("include_face", False, True),
        ]
        assert annotator.default_detect_resolution == 512
    assert OpenposeAnnotator().check_params({"include_face": 1}) == {
        "include_hands": False,
        "include_face": True,
    }


def test_importing_the_pose_module_loads_no_heavy_library():
    code = (
        "import sys, annotators.pose; "
        "print(sorted({'torch', 'mediapipe', 'controlnet_aux', 'matplotlib'} & set(sys.modules)))"
    )
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
