"""OpenPose JSON in and out: the format, its checks, the drawing from it, the engine, the server
and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from annotators.pose_draw import BODY_PARTS, FACE_POINTS, HAND_POINTS, PoseKeypoints, draw_poses
from annotators.pose_json import PoseCanvas, poses_from_json, poses_to_json
from errors import InvalidRequestError
from png_info import read_parameters
from testkit.paths import ASSETS

MAX_PEOPLE = 20
FAST = {"steps": 2, "image_resolution": 256}


def person(shift: float = 0.0, hands: int = 2, face: bool = True) -> PoseKeypoints:
    """A standing person, normalised coordinates, some points missing (None)."""
    rng = np.random.default_rng(int(shift * 100))
    body = tuple(
        None if index in (16, 17) else (0.3 + shift + 0.01 * index, 0.1 + 0.04 * index)
        for index in range(len(BODY_PARTS))
    )
    hand = tuple((float(x), float(y)) for x, y in rng.uniform(0.2, 0.8, size=(HAND_POINTS, 2)))
    missing_hand = (None,) * HAND_POINTS
    face_points = tuple(
        (float(x), float(y)) for x, y in rng.uniform(0.3, 0.5, size=(FACE_POINTS, 2))
    )
    hand_parts = {0: (), 1: (hand,), 2: (missing_hand, hand)}[hands]
    return PoseKeypoints(body, hand_parts, face_points if face else None)


# The writer the ControlNet tools share: sd-webui-controlnet's `encode_poses_as_json`
# (Mikubill/sd-webui-controlnet, annotator/openpose/__init__.py) and comfyui_controlnet_aux's
# `encode_poses_as_dict`, restated: each point x, y, 1.0, a missing point 0, 0, 0, a part not
# found null, in this key order. Fed keypoints in pixels (what the JSON holds).
def reference_writer(people, canvas_height, canvas_width):
    def compress(keypoints):
        if not keypoints:
            return None
        return [
            value
            for keypoint in keypoints
            for value in (
                [float(keypoint[0]), float(keypoint[1]), 1.0]
                if keypoint is not None
                else [0.0, 0.0, 0.0]
            )
        ]

    return {
        "people": [
            {
                "pose_keypoints_2d": compress(body),
                "face_keypoints_2d": compress(face),
                "hand_left_keypoints_2d": compress(left),
                "hand_right_keypoints_2d": compress(right),
            }
            for body, left, right, face in people
        ],
        "canvas_height": canvas_height,
        "canvas_width": canvas_width,
    }


def in_pixels(points, width, height):
    if points is None:
        return None
    return [None if p is None else (p[0] * width, p[1] * height) for p in points]


def test_json_is_what_the_controlnet_writers_write():
    height, width = 384, 640
    poses = [person(0.0, hands=1), person(0.2, hands=0, face=False)]
    written = poses_to_json(poses, height, width)
    expected = reference_writer(
        [
            (
                in_pixels(pose.body, width, height),
                in_pixels(pose.hands[0], width, height) if pose.hands else None,
                None,
                in_pixels(pose.face, width, height),
            )
            for pose in poses
        ],
        height,
        width,
    )
    assert written == expected
    assert json.dumps(written) == json.dumps(expected)  # the same key order too
    body = written["people"][0]["pose_keypoints_2d"]
    assert len(body) == 3 * 18 and body[16 * 3 : 18 * 3] == [0.0] * 6  # the two ears: missing


def test_round_trip_is_exact_and_keeps_each_hands_side():
    height, width = 512, 1024  # powers of two: x * width / width is x again, exactly
    poses = [person(0.0, hands=2), person(0.1, hands=1), person(0.2, hands=0, face=False)]
    data = poses_to_json(poses, height, width)
    assert data["people"][0]["hand_left_keypoints_2d"] is None  # only the right hand was found
    canvas = poses_from_json(json.dumps(data), MAX_PEOPLE)
    assert (canvas.height, canvas.width) == (height, width)
    assert canvas.normalised() == poses
    assert canvas.to_json() == data
    # Any canvas size: JSON -> poses -> JSON is exact (pixels stay as written).
    odd = poses_to_json(poses, 337, 509)
    assert poses_from_json(odd, MAX_PEOPLE).to_json() == odd


def test_drawing_from_json_equals_drawing_the_keypoints_at_any_canvas_size():
    poses = [person(0.0), person(0.15, hands=1)]
    for height, width in ((512, 512), (337, 509), (768, 448)):
        drawn = draw_poses(poses, height, width, include_hands=True, include_face=True)
        from_json = poses_from_json(poses_to_json(poses, height, width), MAX_PEOPLE).draw()
        assert drawn.any()
        np.testing.assert_array_equal(from_json, drawn)


def test_normalised_coordinates_are_read_too_and_drawn_the_same():
    # sd-webui-controlnet's JSON holds the detectors' 0..1 coordinates.
    poses = [person(0.0)]
    height, width = 337, 509
    data = poses_to_json(poses, 1, 1)  # x * 1: the normalised numbers themselves
    data.update(canvas_height=height, canvas_width=width)
    canvas = poses_from_json(data, MAX_PEOPLE)
    drawn = draw_poses(poses, height, width, include_hands=True, include_face=True)
    np.testing.assert_array_equal(canvas.draw(), drawn)
    assert canvas.to_json() == poses_to_json(poses, height, width)


def test_points_outside_the_canvas_or_with_no_confidence_are_dropped():
    body = [0.0] * 54
    body[0:3] = [100.0, 50.0, 1.0]  # nose: kept
    body[3:6] = [700.0, 50.0, 1.0]  # neck: right of a 640-wide canvas, dropped
    body[6:9] = [-1.0, 50.0, 1.0]  # right shoulder: left of it, dropped
    body[9:12] = [100.0, 60.0, 0.0]  # right elbow: c = 0, missing
    body[12:15] = [100.0, 70.0, 0.4]  # right wrist: CMU's confidence below 1, kept
    data = {"people": [{"pose_keypoints_2d": body}], "canvas_width": 640, "canvas_height": 480}
    (pose,) = poses_from_json(data, MAX_PEOPLE).poses
    assert pose.body[:5] == ((100.0, 50.0), None, None, None, (100.0, 70.0))
    assert pose.hands == () and pose.face is None


GOOD = {"people": [{"pose_keypoints_2d": [10.0, 10.0, 1.0] * 18}], "canvas_width": 64}
GOOD = {**GOOD, "canvas_height": 64}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", r"`pose_json` is not JSON \(Expecting property name"),
        ("[1, 2]", "`pose_json` must be an object with `people`"),
        ({**GOOD, "canvas_width": "wide"}, "`pose_json.canvas_width` must be a whole number"),
        ({**GOOD, "canvas_height": 10**6}, r"`pose_json.canvas_height` is 1000000; it must be"),
        ({**GOOD, "people": "me"}, "`pose_json.people` must be a list of people"),
        ({**GOOD, "people": [GOOD["people"][0]] * 21}, "holds 21 people; at most 20"),
        ({**GOOD, "people": [3]}, r"`pose_json.people\[0\]` must be an object"),
        (
            {**GOOD, "people": [{"pose_keypoints_2d": [1.0] * 51}]},
            r"`pose_json.people\[0\].pose_keypoints_2d` holds 51 numbers; it needs 54",
        ),
        (
            {**GOOD, "people": [{"pose_keypoints_2d": ["x"] * 54}]},
            r"`pose_json.people\[0\].pose_keypoints_2d\[0\]` is 'x', not a number",
        ),
        (
            '{"people": [{"pose_keypoints_2d": [NaN' + ", 1.0" * 53 + ']}], "canvas_width": 64,'
            ' "canvas_height": 64}',
            r"`pose_json.people\[0\].pose_keypoints_2d\[0\]` is nan: numbers must be finite",
        ),
        (
            {**GOOD, "people": [{**GOOD["people"][0], "face_keypoints_2d": [1.0] * 30}]},
            r"face_keypoints_2d` holds 30 numbers; it needs 210 \(70 points\) or 204",
        ),
        ({**GOOD, "canvas_width": 512, "canvas_height": 64}, "aspect ratio is over 3:1"),
        ({**GOOD, "animals": [[1.0, 1.0, 1.0]]}, "animal poses are not drawn here"),
    ],
)
def test_bad_json_gets_a_message_naming_the_key(data, message):
    with pytest.raises(InvalidRequestError, match=message):
        poses_from_json(data, MAX_PEOPLE)


def test_dwpose_faces_of_68_points_are_read():
    data = {**GOOD, "people": [{**GOOD["people"][0], "face_keypoints_2d": [20.0, 20.0, 1.0] * 68}]}
    (pose,) = poses_from_json(data, MAX_PEOPLE).poses
    assert len(pose.face) == 68


# ---- the engine: the annotator's JSON, drawn back -----------------------------------------------
@pytest.fixture(scope="module")
def astronaut_pose(engine, astronaut):
    """MediaPipe on the astronaut (it ships in the wheel): its map and its JSON."""
    control = engine.annotate(
        astronaut, "mediapipe_pose", image_resolution=256, include_hands=True, include_face=True
    )
    assert control.pose is not None
    return control


def test_annotate_gives_the_pose_json_of_pose_annotators_only(engine, astronaut, astronaut_pose):
    pose = astronaut_pose.pose
    # MediaPipe runs at its detect resolution (512): the JSON's canvas.
    assert (pose["canvas_height"], pose["canvas_width"]) == (512, 512)
    (found,) = pose["people"]
    assert found["pose_keypoints_2d"][2] == 1.0  # the nose was found
    assert found["face_keypoints_2d"] is not None and len(found["face_keypoints_2d"]) == 210
    assert engine.annotate(astronaut, "canny", image_resolution=256).pose is None


def test_the_map_from_the_annotators_json_equals_the_annotators_map(engine, astronaut_pose):
    canvas = poses_from_json(astronaut_pose.pose, MAX_PEOPLE)
    from annotators.pose import MediapipePoseDetector
    from annotators.util import resize_image

    photo = resize_image(np.asarray(Image.open(ASSETS / "astronaut.png").convert("RGB")), 512)
    own = MediapipePoseDetector()(photo, include_hands=True, include_face=True)
    assert own.any()
    np.testing.assert_array_equal(canvas.draw(), own)  # at the canvas size
    # And at the output size, through a generation (no image, the JSON instead).
    result = engine.generate(
        "openpose",
        None,
        "an astronaut",
        annotator="mediapipe_pose",
        pose_json=json.dumps(astronaut_pose.pose),
        seed=1,
        **FAST,
    )
    np.testing.assert_array_equal(result.control_map, astronaut_pose.image)
    unit = result.parameters[0]["units"][0]
    assert unit["pose_source"] == "pose_json" and "people" not in json.dumps(unit)


def test_a_generation_gives_the_pose_it_drew(engine, astronaut, astronaut_pose):
    options = {"annotator": "mediapipe_pose", "include_hands": True, "include_face": True}
    found = engine.generate("openpose", astronaut, "an astronaut", seed=1, **options, **FAST)
    assert found.pose == astronaut_pose.pose  # the annotator's people, as /annotate gives them
    np.testing.assert_array_equal(found.control_map, astronaut_pose.image)
    moved = json.loads(json.dumps(astronaut_pose.pose))
    moved["people"][0]["pose_keypoints_2d"][0] += 10  # an edited pose: the nose 10 px right
    edited = engine.generate("openpose", None, "x", pose_json=json.dumps(moved), **options, **FAST)
    assert edited.pose == poses_from_json(moved, MAX_PEOPLE).to_json() != found.pose
    assert engine.generate("canny", astronaut, "x", **FAST).pose is None


def test_engine_refuses_bad_pose_json_and_pose_json_on_other_annotators(engine, astronaut):
    with pytest.raises(InvalidRequestError, match="`pose_json` is not JSON"):
        engine.generate("openpose", None, "x", pose_json="{oops", **FAST)
    with pytest.raises(InvalidRequestError, match="`pose_json` is for the pose annotators"):
        engine.generate("openpose", astronaut, "x", annotator="none", pose_json=GOOD, **FAST)
    with pytest.raises(InvalidRequestError, match="No image given"):
        engine.generate("openpose", None, "x", pose_json="", **FAST)


def test_compose_units_take_pose_json(engine, astronaut, astronaut_pose):
    pose = astronaut_pose.pose
    units = [
        {"condition": "openpose", "annotator": "openpose", "pose_json": pose},
        {"condition": "canny", "image": astronaut},
    ]
    result = engine.compose(units, "an astronaut", seed=1, **FAST)
    np.testing.assert_array_equal(result.control_maps[0], astronaut_pose.image)
    with pytest.raises(InvalidRequestError, match=r"`pose_json_1.people` must be a list|people"):
        engine.compose([{"condition": "openpose", "pose_json": {**pose, "people": 1}}], "x")


def test_pose_canvas_is_frozen_data():
    canvas = poses_from_json(GOOD, MAX_PEOPLE)
    assert isinstance(canvas, PoseCanvas) and canvas.draw().shape == (64, 64, 3)
    assert all(math.isfinite(v) for v in canvas.to_json()["people"][0]["pose_keypoints_2d"])


# ---- the server, through gradio_client ----------------------------------------------------------
@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server.url, verbose=False)


def test_server_annotate_returns_the_json_and_openpose_takes_it(client, tmp_path):
    path, pose = client.predict(
        image=handle_file(ASSETS / "astronaut.png"),
        annotator="mediapipe_pose",
        image_resolution=256,
        api_name="/annotate",
    )
    assert np.asarray(Image.open(path)).shape[:2] == (256, 256)
    assert pose["canvas_width"] == 512 and len(pose["people"]) == 1
    gallery, _ = client.predict(
        image=None,
        prompt="an astronaut",
        annotator="mediapipe_pose",
        pose_json=json.dumps(pose),
        api_name="/openpose",
        **FAST,
    )
    control_map = np.asarray(Image.open(gallery[0]["image"]))
    np.testing.assert_array_equal(control_map, np.asarray(Image.open(path).convert("RGB")))
    assert read_parameters(gallery[1]["image"])["units"][0]["pose_source"] == "pose_json"
    _, no_pose = client.predict(
        image=handle_file(ASSETS / "astronaut.png"), annotator="canny", api_name="/annotate"
    )
    assert no_pose is None


def test_server_refuses_bad_pose_json_and_keeps_serving(client):
    bad = {**GOOD, "people": [GOOD["people"][0]] * 21}
    for text, message in (
        ("{oops", "`pose_json` is not JSON"),
        (json.dumps(bad), "holds 21 people; at most 20"),
        (json.dumps({**GOOD, "canvas_width": 4.5}), "`pose_json.canvas_width` must be a whole"),
    ):
        with pytest.raises(AppError, match=message):
            client.predict(image=None, prompt="x", pose_json=text, api_name="/openpose", **FAST)
    gallery, _ = client.predict(
        image=None, prompt="still here", pose_json=json.dumps(GOOD), api_name="/openpose", **FAST
    )
    assert len(gallery) == 2


# ---- the CLI ------------------------------------------------------------------------------------
def test_cli_writes_pose_json_and_generates_from_it(models_dir, tmp_path):
    from tests.test_cli import run_cli

    maps = tmp_path / "maps"
    args = ["annotate", "--annotator", "mediapipe_pose", "--image", ASSETS / "astronaut.png"]
    result = run_cli(models_dir, *args, "--out", maps, "--image-resolution", "256")
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.splitlines()[0] == "astronaut.png -> astronaut_map.png, astronaut_pose.json"
    )
    pose = json.loads((maps / "astronaut_pose.json").read_text())
    assert pose["canvas_width"] == 512 and len(pose["people"]) == 1
    out = tmp_path / "out"
    args = ["generate", "--condition", "openpose", "--annotator", "mediapipe_pose"]
    args += ["--pose-json", maps / "astronaut_pose.json", "--out", out]
    result = run_cli(models_dir, *args, "--steps", "2", "--image-resolution", "256")
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(
        np.asarray(Image.open(out / "astronaut_pose_map.png")),
        np.asarray(Image.open(maps / "astronaut_map.png").convert("RGB")),
    )
    (maps / "bad.json").write_text('{"people": 3, "canvas_width": 64, "canvas_height": 64}')
    args = ["generate", "--condition", "openpose", "--pose-json", maps / "bad.json", "--out", out]
    result = run_cli(models_dir, *args)
    assert result.returncode == 2 and "`pose_json.people` must be a list" in result.stderr
    assert "Traceback" not in result.stderr


def test_json_for_dwpose_units_is_drawn_in_dwposes_order(engine):
    import cv2

    from annotators.pose_draw import draw_poses_at_once
    from annotators.util import resize_to

    # Two people one over the other: which colour stays where they overlap depends on the order.
    poses = [person(0.0, hands=2), person(0.02, hands=2)]
    data = poses_to_json(poses, 512, 512)
    at_once = draw_poses_at_once(poses, 512, 512, include_hands=True, include_face=True)
    by_person = draw_poses(poses, 512, 512, include_hands=True, include_face=True)
    assert (at_once != by_person).any()
    np.testing.assert_array_equal(poses_from_json(data, MAX_PEOPLE).draw(at_once=True), at_once)
    maps = {
        annotator: engine.generate(
            "openpose", None, "x", annotator=annotator, pose_json=data, seed=1, **FAST
        ).control_map
        for annotator in ("dw_openpose_full", "openpose")
    }
    linear = cv2.INTER_LINEAR  # how pose maps reach the output size
    np.testing.assert_array_equal(maps["dw_openpose_full"], resize_to(at_once, 256, 256, linear))
    np.testing.assert_array_equal(maps["openpose"], resize_to(by_person, 256, 256, linear))


def test_the_pages_upload_and_download_of_pose_json(tmp_path):
    from ui.controls import pose_json_file
    from ui.pose_editor import _read_text

    data = poses_to_json([person(0.0)], 512, 512)
    path = pose_json_file(data)
    assert path.endswith("pose.json") and json.loads(_read_text(path)) == data
    assert pose_json_file(None) is None and _read_text(None) == ""
