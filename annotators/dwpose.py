"""Whole-body pose maps by DWPose, in OpenPose's format, on the Pose tab beside OpenPose.

DWPose (Yang et al., ICCV 2023 workshops; IDEA-Research/DWPose, Apache-2.0) finds people with
YOLOX-L and then 133 COCO-WholeBody points per person with a distilled RTMPose-l, two ONNX files
of the Hub repo `yzd-v/DWPose` (`yolox_l.onnx`, `dw-ll_ucoco_384.onnx`) run with onnxruntime
(annotators/dwpose_onnx.py). The points become a pose map as controlnet_aux 0.0.10's
`DWposeDetector` makes one (`controlnet_aux/dwpose/__init__.py` and `wholebody.py`,
Apache-2.0), so the maps equal its maps for the same points:

- YOLOX sees the photo in BGR and the pose model in RGB (the channel orders MMDetection and
  MMPose give them in controlnet_aux);
- COCO-WholeBody -> OpenPose's 18 body points: the neck is the middle of the shoulders, drawn
  only when both shoulders score above 0.3; another body point is drawn when it scores above
  0.3; hand points (21 per hand) and the 68 face points when they score at least 0.3; the 6
  foot points are not drawn;
- the drawing is controlnet_aux's dwpose util's, which annotators/pose_draw.py already draws
  point for point, in its order: every body limb by limb across the people, then joint by joint
  (`draw_bodies`), then every left hand, every right hand, and the faces.

`dw_openpose` draws the bodies only; `dw_openpose_full` adds the hands and faces (what
controlnet_aux's DWposeDetector always draws). Both share one pair of loaded sessions. onnxruntime
is imported in `load`, never at import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from annotators.base import Annotator, LoadContext
from annotators.pose_draw import Points, PoseKeypoints, draw_poses_at_once
from annotators.pose_json import poses_to_json
from annotators.shared import shared
from annotators.weights import weights_file

ROLE = "dwpose"
DETECTOR_FILE = "yolox_l.onnx"
POSE_FILE = "dw-ll_ucoco_384.onnx"

# COCO-WholeBody's 133 points: 17 body points (COCO order), 6 feet, 68 face, 21 per hand.
WHOLEBODY_POINTS = 133
LEFT_SHOULDER, RIGHT_SHOULDER = 5, 6
NECK = None  # OpenPose's neck, which COCO lacks: the middle of the shoulders
# For each of OpenPose's 18 body points (pose_draw.BODY_PARTS), its COCO-WholeBody index.
BODY_FROM_WHOLEBODY = (0, NECK, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
FACE = slice(23, 91)
LEFT_HAND = slice(91, 112)
RIGHT_HAND = slice(112, 133)
# A body point is drawn when its score is above this; hand and face points at or above it.
SCORE_THRESHOLD = 0.3


def body_visible(score: float) -> bool:
    return score > SCORE_THRESHOLD


def part_visible(score: float) -> bool:
    return not score < SCORE_THRESHOLD


def openpose_people(
    points: np.ndarray, scores: np.ndarray, height: int, width: int
) -> list[PoseKeypoints]:
    """People in OpenPose's format from COCO-WholeBody points (n, 133, 2) in pixels of an image
    (height, width) and their scores (n, 133): normalised to 0..1, None where not drawn."""

    def normalised(point: np.ndarray) -> tuple[float, float]:
        return (float(point[0] / float(width)), float(point[1] / float(height)))

    def part(indices: slice, person_points, person_scores) -> Points:
        return tuple(
            normalised(point) if part_visible(score) else None
            for point, score in zip(person_points[indices], person_scores[indices], strict=True)
        )

    people = []
    for person_points, person_scores in zip(points, scores, strict=True):
        body = []
        for index in BODY_FROM_WHOLEBODY:
            if index is NECK:
                shoulders = person_points[[LEFT_SHOULDER, RIGHT_SHOULDER]]
                both = person_scores[[LEFT_SHOULDER, RIGHT_SHOULDER]]
                neck = np.mean(shoulders, axis=0)  # in pixels, then normalised
                body.append(normalised(neck) if all(map(body_visible, both)) else None)
            else:
                visible = body_visible(person_scores[index])
                body.append(normalised(person_points[index]) if visible else None)
        hands = (
            part(LEFT_HAND, person_points, person_scores),
            part(RIGHT_HAND, person_points, person_scores),
        )
        face = part(FACE, person_points, person_scores)
        people.append(PoseKeypoints(tuple(body), hands, face))
    return people


def draw_dwpose(people: Sequence[PoseKeypoints], height: int, width: int, full: bool) -> np.ndarray:
    """The pose map, RGB uint8 (height, width, 3), in DWPose's drawing order (module doc)."""
    return draw_poses_at_once(people, height, width, include_hands=full, include_face=full)


@dataclass(eq=False)  # eq=False: hashable by identity, and weak-referenceable for `shared`
class Sessions:
    detector: Any
    pose: Any


def _open(detector_path: Path, pose_path: Path, device: str) -> Sessions:
    from annotators.dwpose_onnx import open_session

    return Sessions(open_session(detector_path, device), open_session(pose_path, device))


class DwposeDetector:
    """image RGB uint8 (H, W, 3) -> pose map RGB uint8 (H, W, 3); `people`: what was found."""

    def __init__(self, sessions: Sessions, full: bool) -> None:
        self.sessions, self.full = sessions, full

    def people(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(person boxes (n, 4), points (m, 133, 2) in pixels, scores (m, 133)); m = n, or 1
        (the whole image) when no person box was found."""
        from annotators.dwpose_onnx import detect_people, estimate_keypoints

        image = np.ascontiguousarray(image)
        boxes = detect_people(self.sessions.detector, np.ascontiguousarray(image[:, :, ::-1]))
        points, scores = estimate_keypoints(self.sessions.pose, boxes, image)
        return boxes, points, scores

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.with_keypoints(image)[0]

    def with_keypoints(self, image: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """The map and the people drawn on it as OpenPose JSON (pixels of `image`; bodies only
        unless `full`, as drawn)."""
        height, width = image.shape[:2]
        _, points, scores = self.people(image)
        people = openpose_people(points, scores, height, width)
        drawn = draw_dwpose(people, height, width, self.full)
        if not self.full:
            people = [PoseKeypoints(person.body) for person in people]
        return drawn, poses_to_json(people, height, width)


class DwposeAnnotator(Annotator):
    """Bodies only; `DwposeFullAnnotator` adds hands and faces."""

    name = "dw_openpose"
    label = "DWPose (body)"
    needs = ((ROLE, DETECTOR_FILE), (ROLE, POSE_FILE))
    default_detect_resolution = 512
    full = False

    def load(self, context: LoadContext) -> DwposeDetector:
        detector_path = weights_file(context, DETECTOR_FILE, role=ROLE)
        pose_path = weights_file(context, POSE_FILE, role=ROLE)
        key = (ROLE, detector_path, pose_path, context.device)
        sessions = shared(key, lambda: _open(detector_path, pose_path, context.device))
        return DwposeDetector(sessions, self.full)


class DwposeFullAnnotator(DwposeAnnotator):
    name = "dw_openpose_full"
    label = "DWPose (body, hands, face)"
    full = True
