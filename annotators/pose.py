"""Human pose maps in OpenPose's format, from OpenPose or from MediaPipe.

Both backends find `PoseKeypoints` (COCO-18 body, 21-point hands, 70-point face) and draw them
with one function (annotators/pose_draw.py), so their maps look alike to the OpenPose ControlNet:

- "openpose": CMU's OpenPose as packaged by controlnet_aux (body, hand and face networks; weights
  `body_pose_model.pth`, `hand_pose_model.pth`, `facenet.pth` from `lllyasviel/Annotators`, found
  through `weights_file`: MODELS_DIR first). Multi-person. Without the body weights it falls back
  to MediaPipe and says so in `detector.notice`. CMU licenses OpenPose for non-commercial use.
- "mediapipe_pose": MediaPipe's legacy `solutions` (pose, hands, face mesh), whose models ship
  inside the wheel: nothing to download. One person (the legacy pose solution is single-person),
  up to two hands, one face.

torch, controlnet_aux and mediapipe are imported in `load()` only: the UI imports this module.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from annotators.base import Annotator, LoadContext, Param
from annotators.pose_draw import (
    BODY_PARTS,
    HAND_POINTS,
    Point,
    Points,
    PoseKeypoints,
    draw_poses,
)
from annotators.pose_json import poses_to_json
from annotators.weights import load_state_dict, weights_file
from errors import ModelUnavailableError

BODY_WEIGHTS = "body_pose_model.pth"
HAND_WEIGHTS = "hand_pose_model.pth"
FACE_WEIGHTS = "facenet.pth"

POSE_PARAMS = (
    Param.flag("include_hands", "Hands", False, info="Also draw 21 points per hand"),
    Param.flag("include_face", "Face", False, info="Also draw 70 face points"),
)

# --- MediaPipe -> OpenPose keypoints -------------------------------------------------------------
# MediaPipe Pose's 33 landmarks (left/right = the person's) for each COCO-18 part; the neck, which
# MediaPipe lacks, is the middle of the shoulders.
MEDIAPIPE_BODY = {
    "nose": 0,
    "right_shoulder": 12,
    "right_elbow": 14,
    "right_wrist": 16,
    "left_shoulder": 11,
    "left_elbow": 13,
    "left_wrist": 15,
    "right_hip": 24,
    "right_knee": 26,
    "right_ankle": 28,
    "left_hip": 23,
    "left_knee": 25,
    "left_ankle": 27,
    "right_eye": 5,
    "left_eye": 2,
    "right_ear": 8,
    "left_ear": 7,
}
# A body landmark counts when MediaPipe rates it at least this visible (its own drawing_utils'
# threshold) and it lies inside the image: occluded or out-of-frame joints are guesses, which
# OpenPose would not draw either.
VISIBILITY_THRESHOLD = 0.5
# MediaPipe Hands' 21 landmarks are OpenPose's 21 hand points in the same order.
# The 70 OpenPose face points from the 478-point face mesh (with iris refinement): the 68 dlib/iBUG
# points, one mesh vertex each, after the correspondence of Peizhi Yan's Mediapipe_2_Dlib_Landmarks
# (where it averages two vertices, one is taken), then the two iris centres as pupils.
MEDIAPIPE_FACE = (
    # 0-16 jaw, from the person's right ear to the left one, through the chin (8)
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,
    70, 63, 105, 66, 107,  # 17-21 right eyebrow, outer to inner
    336, 296, 334, 293, 300,  # 22-26 left eyebrow, inner to outer
    168, 197, 5, 4,  # 27-30 nose bridge, top to tip
    75, 97, 2, 326, 305,  # 31-35 nostrils, right to left
    33, 160, 158, 133, 153, 144,  # 36-41 right eye, outer corner, upper lid, inner corner, lower
    362, 385, 387, 263, 373, 380,  # 42-47 left eye, inner corner, upper lid, outer corner, lower
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,  # 48-59 outer lips from the right corner
    78, 82, 13, 312, 308, 317, 14, 87,  # 60-67 inner lips from the right corner
    468, 473,  # 68-69 right and left pupil (iris centres)
)  # fmt: skip
MEDIAPIPE_POSE_COMPLEXITY = 1  # "full": the only pose model in the wheel (0 and 2 are downloaded)


def body_from_mediapipe(landmarks: Sequence[Any]) -> Points:
    """The 18 COCO body points (BODY_PARTS order) from MediaPipe Pose's 33 landmarks.

    `landmarks`: objects with normalised `x`, `y` and a `visibility` score, e.g.
    `results.pose_landmarks.landmark`. A point is None when not visible enough or outside the image.
    """

    def visible(index: int) -> Point | None:
        mark = landmarks[index]
        if mark.visibility < VISIBILITY_THRESHOLD:
            return None
        return _inside(mark.x, mark.y)

    points = {part: visible(index) for part, index in MEDIAPIPE_BODY.items()}
    right, left = points["right_shoulder"], points["left_shoulder"]
    if right is not None and left is not None:
        points["neck"] = ((right[0] + left[0]) / 2, (right[1] + left[1]) / 2)
    return tuple(points.get(part) for part in BODY_PARTS)


def hand_from_mediapipe(landmarks: Sequence[Any]) -> Points:
    """OpenPose's 21 hand points from MediaPipe Hands' 21 landmarks (the same order)."""
    return tuple(_inside(mark.x, mark.y) for mark in landmarks[:HAND_POINTS])


def face_from_mediapipe(landmarks: Sequence[Any]) -> Points:
    """OpenPose's 70 face points from the 478-point face mesh (see MEDIAPIPE_FACE)."""
    return tuple(_inside(landmarks[index].x, landmarks[index].y) for index in MEDIAPIPE_FACE)


def _inside(x: float, y: float) -> Point | None:
    return (float(x), float(y)) if 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0 else None


# --- detectors -----------------------------------------------------------------------------------
class PoseDetector:
    """image RGB uint8 (H, W, 3) -> OpenPose-style map, RGB uint8 (H, W, 3); `poses`: the points.

    Calls are serialised: neither MediaPipe graphs nor lazy weight loading are thread-safe.
    """

    notice: str | None = None  # shown by the engine as a warning, e.g. after a fallback

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __call__(
        self, image: np.ndarray, include_hands: bool = False, include_face: bool = False
    ) -> np.ndarray:
        poses = self.poses(image, include_hands=include_hands, include_face=include_face)
        height, width = image.shape[:2]
        return draw_poses(poses, height, width, include_hands, include_face)

    def with_keypoints(
        self, image: np.ndarray, include_hands: bool = False, include_face: bool = False
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """The map and the people drawn on it as OpenPose JSON (pixels of `image`)."""
        poses = self.poses(image, include_hands=include_hands, include_face=include_face)
        height, width = image.shape[:2]
        drawn = draw_poses(poses, height, width, include_hands, include_face)
        return drawn, poses_to_json(poses, height, width)

    def poses(
        self, image: np.ndarray, include_hands: bool = False, include_face: bool = False
    ) -> list[PoseKeypoints]:
        """The people found, coordinates normalised to the image (0..1)."""
        image = np.ascontiguousarray(image)
        with self._lock:
            return self._find(image, include_hands, include_face)

    def _find(
        self, image: np.ndarray, include_hands: bool, include_face: bool
    ) -> list[PoseKeypoints]:
        raise NotImplementedError


class MediapipePoseDetector(PoseDetector):
    """MediaPipe Pose, Hands and Face Mesh (hands and face built on first request)."""

    def __init__(self) -> None:
        super().__init__()
        from mediapipe.python.solutions import pose

        self._pose = pose.Pose(static_image_mode=True, model_complexity=MEDIAPIPE_POSE_COMPLEXITY)
        self._hands: Any = None
        self._face_mesh: Any = None

    def _find(
        self, image: np.ndarray, include_hands: bool, include_face: bool
    ) -> list[PoseKeypoints]:
        # 1. Body (one person)
        found = self._pose.process(image).pose_landmarks
        body = body_from_mediapipe(found.landmark) if found else (None,) * len(BODY_PARTS)
        # 2. Hands and face, found on the whole image: they show even when the body is not found
        hands: tuple[Points, ...] = ()
        if include_hands:
            if self._hands is None:
                from mediapipe.python.solutions import hands as mp_hands

                self._hands = mp_hands.Hands(static_image_mode=True, max_num_hands=2)
            found_hands = self._hands.process(image).multi_hand_landmarks or []
            hands = tuple(hand_from_mediapipe(hand.landmark) for hand in found_hands)
        face = None
        if include_face:
            if self._face_mesh is None:
                from mediapipe.python.solutions import face_mesh

                self._face_mesh = face_mesh.FaceMesh(
                    static_image_mode=True, max_num_faces=1, refine_landmarks=True
                )
            found_faces = self._face_mesh.process(image).multi_face_landmarks
            face = face_from_mediapipe(found_faces[0].landmark) if found_faces else None
        if all(point is None for point in body) and not hands and face is None:
            return []
        return [PoseKeypoints(body, hands, face)]


class OpenposeDetector(PoseDetector):
    """controlnet_aux's OpenPose networks, weights from `weights_file` (hand, face: on request)."""

    def __init__(self, context: LoadContext, body_path: Path) -> None:
        super().__init__()
        from controlnet_aux.open_pose import OpenposeDetector as AuxOpenposeDetector

        self._context = context
        self._openpose = AuxOpenposeDetector(_openpose_body(body_path, context.device))

    def _find(
        self, image: np.ndarray, include_hands: bool, include_face: bool
    ) -> list[PoseKeypoints]:
        # 1. Weights asked for the first time (a missing file raises ModelUnavailableError)
        openpose, device = self._openpose, self._context.device
        if include_hands and openpose.hand_estimation is None:
            openpose.hand_estimation = _openpose_hand(
                weights_file(self._context, HAND_WEIGHTS), device
            )
        if include_face and openpose.face_estimation is None:
            openpose.face_estimation = _openpose_face(
                weights_file(self._context, FACE_WEIGHTS), device
            )
        # 2. Detect (RGB in; controlnet_aux flips to BGR itself), coordinates normalised
        results = openpose.detect_poses(image, include_hands, include_face)
        return [
            PoseKeypoints(
                body=_points(result.body.keypoints),
                hands=_hands(result.left_hand, result.right_hand),
                face=_points(result.face) if result.face else None,
            )
            for result in results
        ]


def _hands(left: Sequence[Any] | None, right: Sequence[Any] | None) -> tuple[Points, ...]:
    """(left, right) as found; a missing left hand before a right one is 21 missing points
    (drawn as nothing), so the JSON keeps each hand's side."""
    if not right:
        return (_points(left),) if left else ()
    return (_points(left) if left else (None,) * HAND_POINTS, _points(right))


def _points(keypoints: Sequence[Any]) -> Points:
    # controlnet_aux marks a missing body point with None and a missing hand/face point with
    # negative coordinates.
    return tuple(
        None if point is None or point.x < 0 or point.y < 0 else (float(point.x), float(point.y))
        for point in keypoints
    )


# The three networks are built here and filled from our `load_state_dict` (tensors only), instead of
# controlnet_aux's constructors, which take a path and call torch.load themselves.
def _openpose_body(path: Path, device: str) -> Any:
    from controlnet_aux.open_pose.body import Body
    from controlnet_aux.open_pose.model import bodypose_model

    return _estimator(Body, bodypose_model(), path, device, caffe_names=True)


def _openpose_hand(path: Path, device: str) -> Any:
    from controlnet_aux.open_pose.hand import Hand
    from controlnet_aux.open_pose.model import handpose_model

    return _estimator(Hand, handpose_model(), path, device, caffe_names=True)


def _openpose_face(path: Path, device: str) -> Any:
    from controlnet_aux.open_pose.face import Face, FaceNet
    from controlnet_aux.open_pose.face import params as face_params

    face = _estimator(Face, FaceNet(), path, device, caffe_names=False)
    face.inference_size = face_params["inference_img_size"]
    face.sigma = face_params["gaussian_sigma"]
    face.threshold = face_params["heatmap_peak_thresh"]
    return face


def _estimator(kind: type, model: Any, path: Path, device: str, caffe_names: bool) -> Any:
    """A controlnet_aux estimator (`Body`, `Hand`, `Face`) made without its constructor, holding
    `model` with the tensors of `path`, on `device`."""
    estimator = kind.__new__(kind)
    estimator.model = _loaded(model, path, caffe_names=caffe_names).to(device)
    return estimator


def _loaded(model: Any, path: Path, caffe_names: bool) -> Any:
    """`model` in eval mode with the tensors of `path`.

    The body and hand files keep the original Caffe layer names (`conv1_1.weight`); the torch
    models nest them in stages (`model0.conv1_1.weight`): controlnet_aux's `transfer` maps them.
    """
    from controlnet_aux.open_pose.util import transfer

    state = load_state_dict(path)
    try:
        model.load_state_dict(transfer(model, state) if caffe_names else state)
    except (KeyError, RuntimeError) as error:
        raise ModelUnavailableError(
            f"`{path}` does not hold the OpenPose weights expected there ({error}). Replace it "
            f"with `{path.name}` from the Hub repo `lllyasviel/Annotators`."
        ) from error
    return model.eval()


# --- annotators ----------------------------------------------------------------------------------
class PoseAnnotator(Annotator):
    """What both backends share: the hands and face switches, detection at 512 px."""

    params = POSE_PARAMS
    default_detect_resolution = 512


class MediapipePoseAnnotator(PoseAnnotator):
    name = "mediapipe_pose"
    label = "Pose (MediaPipe, no download)"

    def load(self, context: LoadContext) -> MediapipePoseDetector:
        return MediapipePoseDetector()


class OpenposeAnnotator(PoseAnnotator):
    name = "openpose"
    label = "OpenPose"

    def load(self, context: LoadContext) -> PoseDetector:
        try:
            body_path = weights_file(context, BODY_WEIGHTS)
        except ModelUnavailableError:
            detector = MediapipePoseDetector()
            detector.notice = (
                f"OpenPose weights not found (`{BODY_WEIGHTS}` from "
                f"`{context.model_ids['annotators']}`, looked for in MODELS_DIR, the Hugging "
                "Face cache and the Hub); drew the pose with MediaPipe instead."
            )
            return detector
        return OpenposeDetector(context, body_path)
