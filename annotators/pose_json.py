"""Poses as OpenPose JSON, in and out: the format ControlNet's tools exchange.

The layout is CMU OpenPose's `--write_json` output as the ControlNet extensions write it
(sd-webui-controlnet's `encode_poses_as_json`, comfyui_controlnet_aux's `encode_poses_as_dict`)
and huchenlei/sd-webui-openpose-editor reads and writes it:

    {"people": [{"pose_keypoints_2d": [x, y, c, ...],      # 18 COCO points (pose_draw.BODY_PARTS)
                 "face_keypoints_2d": [...] | null,          # 70 points (68: DWPose, no pupils)
                 "hand_left_keypoints_2d": [...] | null,     # 21 points
                 "hand_right_keypoints_2d": [...] | null}],
     "canvas_height": H, "canvas_width": W}

Written: x and y in pixels of the canvas (the image the pose was found on: the annotator's
detect-resolution image), c 1.0 for a point found and [0, 0, 0] for one missing, a part not found
as null; keys in the writers' order. Read:

- a point counts when its c is above 0 (CMU's confidences are below 1; 0 marks a missing point);
- coordinates are pixels, unless every point that counts has x and y within 0..1: then they are
  normalised (what sd-webui-controlnet's own JSON holds) and multiplied by the canvas size. A
  pixel pose whose every point lies in the canvas's top-left pixel is the one case read wrongly;
- a point outside the canvas is dropped (not drawn), as the annotators drop them;
- non-finite numbers, wrong counts or types, too many people: `InvalidRequestError` naming the key;
- `animals` (the editor's animal poses) are not drawn by the human OpenPose ControlNet: refused
  when not empty.

Hands: `PoseKeypoints.hands[0]` is written as the left hand, `[1]` as the right one (OpenPose's
order; MediaPipe's hands in the order it found them); a hand whose points are all missing is null.

Drawing from JSON (`PoseCanvas.draw`) multiplies nothing: points stay in the pixels written, so the
map equals the annotator's own drawing of the same keypoints at the canvas size pixel for pixel,
in the unit's annotator's order (DWPose draws every body before the hands, OpenPose and MediaPipe
person by person).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from annotators.base import Annotator
from annotators.pose_draw import (
    BODY_PARTS,
    FACE_POINTS,
    HAND_POINTS,
    Point,
    Points,
    PoseKeypoints,
    draw_poses,
    draw_poses_at_once,
)
from errors import InvalidRequestError

BODY_KEY = "pose_keypoints_2d"
FACE_KEY = "face_keypoints_2d"
HAND_KEYS = ("hand_left_keypoints_2d", "hand_right_keypoints_2d")
FACE_SIZES = (FACE_POINTS, FACE_POINTS - 2)  # OpenPose's 70, or the 68 without pupils (DWPose)
MAX_CANVAS_SIDE = 4096  # the editor's largest canvas
MIN_CANVAS_SIDE = 8
PIXELS = (1.0, 1.0)  # draw_poses' scale for points in pixels
# The annotators whose maps are poses: they give JSON, and a unit on them may take JSON instead.
POSE_ANNOTATORS = ("openpose", "dw_openpose", "dw_openpose_full", "mediapipe_pose")
DRAWN_AT_ONCE = ("dw_openpose", "dw_openpose_full")  # DWPose's order: every body first


@dataclass(frozen=True)
class PoseCanvas:
    """People read from pose JSON, points in pixels of a (height, width) canvas."""

    poses: tuple[PoseKeypoints, ...]
    height: int
    width: int

    def draw(self, at_once: bool = False) -> np.ndarray:
        """The pose map at the canvas size, RGB uint8, bodies, hands and faces as given; person
        by person (OpenPose's order), or `at_once` (DWPose's: every body first)."""
        draw = draw_poses_at_once if at_once else draw_poses
        return draw(self.poses, self.height, self.width, True, True, scale=PIXELS)

    def normalised(self) -> list[PoseKeypoints]:
        """The poses with coordinates 0..1, as the detectors give them."""
        return [_map(pose, lambda x, y: (x / self.width, y / self.height)) for pose in self.poses]

    def to_json(self) -> dict[str, Any]:
        return _document(self.poses, self.height, self.width, PIXELS)


def poses_to_json(poses: Sequence[PoseKeypoints], height: int, width: int) -> dict[str, Any]:
    """The JSON of normalised `poses` found on a (height, width) image, coordinates in pixels."""
    return _document(poses, height, width, (float(width), float(height)))


def _document(poses, height: int, width: int, scale) -> dict[str, Any]:
    def flat(points: Points | None) -> list[float] | None:
        if points is None or all(point is None for point in points):
            return None
        return [
            value
            for point in points
            for value in (
                (0.0, 0.0, 0.0)
                if point is None
                else (float(point[0] * scale[0]), float(point[1] * scale[1]), 1.0)
            )
        ]

    def person(pose: PoseKeypoints) -> dict[str, Any]:
        hands = list(pose.hands[:2]) + [None] * (2 - len(pose.hands[:2]))
        body = flat(pose.body) or [0.0] * (3 * len(BODY_PARTS))
        return {
            BODY_KEY: body,
            FACE_KEY: flat(pose.face),
            HAND_KEYS[0]: flat(hands[0]),
            HAND_KEYS[1]: flat(hands[1]),
        }

    return {
        "people": [person(pose) for pose in poses],
        "canvas_height": int(height),
        "canvas_width": int(width),
    }


def poses_from_json(
    data: Any, max_people: int, max_aspect_ratio: float = 3.0, name: str = "pose_json"
) -> PoseCanvas:
    """Checked people from pose JSON: a dict, or its text (str or bytes). Raises
    `InvalidRequestError` with the offending key (`name`: the keyword it came in)."""
    if isinstance(data, bytes | bytearray):
        data = data.decode("utf-8", errors="replace")
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as error:
            raise InvalidRequestError(
                f"`{name}` is not JSON ({error.msg} at line {error.lineno}, column "
                f'{error.colno}): give OpenPose JSON, {{"people": [...], "canvas_width": W, '
                '"canvas_height": H}.'
            ) from None
    if not isinstance(data, Mapping):
        raise InvalidRequestError(
            f"`{name}` must be an object with `people`, `canvas_width` and `canvas_height`."
        )
    height, width = _side(data, "canvas_height", name), _side(data, "canvas_width", name)
    if max(height, width) / min(height, width) > max_aspect_ratio:
        raise InvalidRequestError(
            f"`{name}`'s canvas is {width}x{height}: its aspect ratio is over "
            f"{max_aspect_ratio:g}:1."
        )
    if data.get("animals"):
        raise InvalidRequestError(
            f"`{name}.animals`: animal poses are not drawn here (the OpenPose ControlNet "
            "knows people only); remove them."
        )
    people = data.get("people")
    if not isinstance(people, list):
        raise InvalidRequestError(f"`{name}.people` must be a list of people.")
    if len(people) > max_people:
        raise InvalidRequestError(
            f"`{name}.people` holds {len(people)} people; at most {max_people} are drawn."
        )
    raw = [_person(person, f"{name}.people[{number}]") for number, person in enumerate(people)]
    normalised = all(
        0.0 <= value <= 1.0
        for person in raw
        for part in person
        if part is not None
        for point in part
        if point is not None
        for value in point
    )
    scale = (float(width), float(height)) if normalised else PIXELS
    poses = tuple(_pose(person, height, width, scale) for person in raw)
    return PoseCanvas(poses, height, width)


def _side(data: Mapping[str, Any], key: str, name: str) -> int:
    value = data.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequestError(f"`{name}.{key}` must be a whole number of pixels.")
    if not MIN_CANVAS_SIDE <= value <= MAX_CANVAS_SIDE:
        raise InvalidRequestError(
            f"`{name}.{key}` is {value}; it must be between {MIN_CANVAS_SIDE} and "
            f"{MAX_CANVAS_SIDE} pixels."
        )
    return value


Raw = tuple[Point | None, ...]


def _person(person: Any, where: str) -> tuple[Raw | None, ...]:
    """(body, left hand, right hand, face), points (x, y) as given, None where c is 0."""
    if not isinstance(person, Mapping):
        raise InvalidRequestError(f"`{where}` must be an object of keypoint lists.")
    body = _points(person.get(BODY_KEY), f"{where}.{BODY_KEY}", (len(BODY_PARTS),))
    hands = [_points(person.get(key), f"{where}.{key}", (HAND_POINTS,)) for key in HAND_KEYS]
    face = _points(person.get(FACE_KEY), f"{where}.{FACE_KEY}", FACE_SIZES)
    return (body, *hands, face)


def _points(values: Any, where: str, sizes: tuple[int, ...]) -> Raw | None:
    if values is None or (isinstance(values, list) and not values):
        return None
    if not isinstance(values, list):
        raise InvalidRequestError(f"`{where}` must be a list of numbers x, y, c, ...")
    if len(values) not in tuple(3 * size for size in sizes):
        expected = " or ".join(f"{3 * size} ({size} points)" for size in sizes)
        raise InvalidRequestError(f"`{where}` holds {len(values)} numbers; it needs {expected}.")
    for index, value in enumerate(values):
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise InvalidRequestError(f"`{where}[{index}]` is {value!r}, not a number.")
        if not math.isfinite(value):
            raise InvalidRequestError(f"`{where}[{index}]` is {value}: numbers must be finite.")
    return tuple(
        (float(values[i]), float(values[i + 1])) if values[i + 2] > 0 else None
        for i in range(0, len(values), 3)
    )


def _pose(person: tuple[Raw | None, ...], height: int, width: int, scale) -> PoseKeypoints:
    def inside(points: Raw | None) -> Points | None:
        if points is None:
            return None
        pixels = [None if p is None else (p[0] * scale[0], p[1] * scale[1]) for p in points]
        return tuple(
            p if p is not None and 0.0 <= p[0] <= width and 0.0 <= p[1] <= height else None
            for p in pixels
        )

    body, left, right, face = (inside(part) for part in person)
    hands = [hand or (None,) * HAND_POINTS for hand in (left, right)]
    while hands and all(point is None for point in hands[-1]):
        hands.pop()
    return PoseKeypoints(body or (None,) * len(BODY_PARTS), tuple(hands), face)


def _map(pose: PoseKeypoints, change) -> PoseKeypoints:
    def moved(points: Points | None) -> Points | None:
        if points is None:
            return None
        return tuple(None if p is None else change(*p) for p in points)

    return PoseKeypoints(
        moved(pose.body), tuple(moved(hand) for hand in pose.hands), moved(pose.face)
    )


class PoseJsonMap(Annotator):
    """Not registered: how a map drawn from JSON at its canvas size reaches the output size, as
    the pose annotators' maps do (`fit_map`, linear)."""

    name = "pose_json"
    label = "Pose from OpenPose JSON"
    detects_at_image_size = True

    def detect(self, image: np.ndarray) -> np.ndarray:
        return image


POSE_JSON_MAP = PoseJsonMap()
