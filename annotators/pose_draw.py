"""Drawing pose maps in OpenPose's format: COCO-18 body, 21-point hands, 70-point face, on black.

This is the picture the OpenPose ControlNets were trained on, drawn the same way for every pose
backend: OpenPose and MediaPipe (annotators/pose.py) and DWPose (annotators/dwpose.py) fill in the
same `PoseKeypoints`. controlnet_aux's dwpose util draws with the same code, everyone's bodies in
one pass (`draw_bodies`).

Adapted from controlnet_aux 0.0.10 `open_pose/util.py` (`draw_bodypose`, `draw_handpose`,
`draw_facepose`; Apache-2.0), itself lllyasviel/ControlNet's `annotator/openpose/util.py` after
CMU's OpenPose and Hzzone/pytorch-openpose. Ported rather than imported so that the MediaPipe
backend needs neither torch nor controlnet_aux (whose package import loads torch, timm and every
other detector) nor matplotlib. The output is pixel for pixel the same (the tests compare them);
differences: a missing point may be None anywhere (controlnet_aux: None for body
points, negative coordinates for hand and face points, which are still skipped here too), and the
hand colours come from `colorsys` instead of matplotlib (the same numbers).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

Point = tuple[float, float]  # (x, y), normalised: 0..1 across the width and the height
Points = tuple[Point | None, ...]  # None: not found
Scale = tuple[float, float]  # (x, y) factors from a point's coordinates to pixels

# OpenPose's COCO-18 body layout ("right" is the person's right).
BODY_PARTS = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
)
HAND_POINTS = 21  # wrist, then 4 joints per finger from thumb to little finger
FACE_POINTS = 70  # the 68 dlib/iBUG points, then the right and left pupils

# Limbs as pairs of BODY_PARTS indices, in OpenPose's drawing order (controlnet_aux's `limbSeq`
# minus one: it counts from 1). Limb i has colour BODY_COLOURS[i] at 60%; joint j has colour j.
BODY_LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)  # fmt: skip
BODY_COLOURS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip
LIMB_COLOURS = tuple(
    tuple(int(float(c) * 0.6) for c in colour) for colour in BODY_COLOURS[: len(BODY_LIMBS)]
)
BODY_STICK_WIDTH = 4  # half the thickness of a limb's ellipse, pixels
BODY_JOINT_RADIUS = 4

HAND_EDGES = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11),
    (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
)  # fmt: skip
# Edge i: hue i / 20 at full saturation and value, as floats (cv2 rounds them, as in the original).
HAND_EDGE_COLOURS = tuple(
    tuple(255.0 * c for c in colorsys.hsv_to_rgb(i / float(len(HAND_EDGES)), 1.0, 1.0))
    for i in range(len(HAND_EDGES))
)
HAND_LINE_THICKNESS = 2
HAND_JOINT_COLOUR = (0, 0, 255)
HAND_JOINT_RADIUS = 4
FACE_COLOUR = (255, 255, 255)
FACE_POINT_RADIUS = 3
# The original skips hand and face points whose pixel x or y is not above this (that is, 0 or
# negative: its "not found" marker is a negative coordinate).
_EPS = 0.01


@dataclass(frozen=True)
class PoseKeypoints:
    """One person: body points in BODY_PARTS order, hands of 21 points, a face of 70 points."""

    body: Points  # 18 points; all None when only hands or a face were found
    hands: tuple[Points, ...] = ()
    face: Points | None = None

    def __getitem__(self, part: str) -> Point | None:
        """A body point by name, e.g. `pose["left_wrist"]`."""
        return self.body[BODY_PARTS.index(part)]


def draw_poses(
    poses: Sequence[PoseKeypoints],
    height: int,
    width: int,
    include_hands: bool = False,
    include_face: bool = False,
    scale: Scale | None = None,
) -> np.ndarray:
    """The pose map, RGB uint8 (height, width, 3): each person's body, then hands, then face.

    `scale`: what a point's x and y are multiplied by to give pixels; by default (width, height),
    for normalised points. (1.0, 1.0) draws points given in pixels (pose JSON): x * width is
    computed once, where the JSON was written, so both ways draw the same pixels."""
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for pose in poses:
        draw_body(canvas, pose.body, scale)
        if include_hands:
            for hand in pose.hands:
                draw_hand(canvas, hand, scale)
        if include_face and pose.face is not None:
            draw_face(canvas, pose.face, scale)
    return canvas


def draw_poses_at_once(
    poses: Sequence[PoseKeypoints],
    height: int,
    width: int,
    include_hands: bool = False,
    include_face: bool = False,
    scale: Scale | None = None,
) -> np.ndarray:
    """The pose map in controlnet_aux's dwpose order: every body limb by limb across the people,
    then joint by joint (`draw_bodies`), then every left hand, every right hand, and the faces.
    For one person it is `draw_poses`'s map; they differ only where people overlap."""
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    draw_bodies(canvas, [pose.body for pose in poses], scale)
    if include_hands:
        for side in range(2):  # every left hand, then every right hand
            for pose in poses:
                if len(pose.hands) > side:
                    draw_hand(canvas, pose.hands[side], scale)
    if include_face:
        for pose in poses:
            if pose.face is not None:
                draw_face(canvas, pose.face, scale)
    return canvas


def draw_body(canvas: np.ndarray, keypoints: Points, scale: Scale | None = None) -> np.ndarray:
    """Limbs as ellipses at 60% colour, then joints as discs at full colour (in place)."""
    return draw_bodies(canvas, [keypoints], scale)


def _scale(canvas: np.ndarray, scale: Scale | None) -> Scale:
    return scale or (canvas.shape[1], canvas.shape[0])


def draw_bodies(
    canvas: np.ndarray, bodies: Sequence[Points], scale: Scale | None = None
) -> np.ndarray:
    """Several people's bodies in one pass, limb by limb across them and then joint by joint (in
    place): the order of controlnet_aux's dwpose `draw_bodypose`, which draws everyone at once.
    Where people overlap, that order decides which colour stays; for one body it is `draw_body`."""
    width, height = _scale(canvas, scale)
    for (first, second), colour in zip(BODY_LIMBS, LIMB_COLOURS, strict=True):
        for keypoints in bodies:
            start, end = keypoints[first], keypoints[second]
            if start is not None and end is not None:
                _draw_limb(canvas, start, end, colour, width, height)
    for index, colour in enumerate(BODY_COLOURS):
        for keypoints in bodies:
            point = keypoints[index]
            if point is not None:
                centre = (int(point[0] * width), int(point[1] * height))
                cv2.circle(canvas, centre, BODY_JOINT_RADIUS, colour, thickness=-1)
    return canvas


def _draw_limb(canvas, start: Point, end: Point, colour, width: float, height: float) -> None:
    xs = np.array([start[0], end[0]]) * float(width)
    ys = np.array([start[1], end[1]]) * float(height)
    length = ((ys[0] - ys[1]) ** 2 + (xs[0] - xs[1]) ** 2) ** 0.5
    angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
    polygon = cv2.ellipse2Poly(
        (int(np.mean(xs)), int(np.mean(ys))),
        (int(length / 2), BODY_STICK_WIDTH),
        int(angle),
        0,
        360,
        1,
    )
    cv2.fillConvexPoly(canvas, polygon, colour)


def draw_hand(canvas: np.ndarray, keypoints: Points, scale: Scale | None = None) -> np.ndarray:
    """Bones as lines in 20 hues, then joints as blue discs (in place)."""
    width, height = _scale(canvas, scale)
    pixels = [_pixel(point, width, height) for point in keypoints]
    for (first, second), colour in zip(HAND_EDGES, HAND_EDGE_COLOURS, strict=True):
        start, end = pixels[first], pixels[second]
        if start is not None and end is not None:
            cv2.line(canvas, start, end, colour, thickness=HAND_LINE_THICKNESS)
    for pixel in pixels:
        if pixel is not None:
            cv2.circle(canvas, pixel, HAND_JOINT_RADIUS, HAND_JOINT_COLOUR, thickness=-1)
    return canvas


def draw_face(canvas: np.ndarray, keypoints: Points, scale: Scale | None = None) -> np.ndarray:
    """Face points as small white discs (in place)."""
    width, height = _scale(canvas, scale)
    for point in keypoints:
        pixel = _pixel(point, width, height)
        if pixel is not None:
            cv2.circle(canvas, pixel, FACE_POINT_RADIUS, FACE_COLOUR, thickness=-1)
    return canvas


def _pixel(point: Point | None, width: float, height: float) -> tuple[int, int] | None:
    if point is None:
        return None
    x, y = int(point[0] * width), int(point[1] * height)
    return (x, y) if x > _EPS and y > _EPS else None
