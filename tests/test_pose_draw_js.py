"""The browser's pose drawing (ui/static/pose_draw.js) against the server's (annotators/
pose_draw.py), pixel for pixel, in headless Chromium: random people, every limb angle, the
borders, hands and faces, both drawing orders, and a real pose found by MediaPipe read back from
a <canvas>."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from playwright.sync_api import sync_playwright
from test_browser import CHROMIUM, CHROMIUM_ARGS

from annotators.pose_draw import PoseKeypoints, draw_poses, draw_poses_at_once
from annotators.pose_json import poses_from_json
from ui.pose_editor import STATIC

pytestmark = pytest.mark.browser
PIXELS = (1.0, 1.0)
# Draws each case and sends its RGBA pixels back as base64 (a few MB of JSON numbers otherwise).
DRAW_CASES = """(cases) => cases.map(([people, width, height, atOnce]) => {
  const pixels = window.PoseDraw.drawPoses(people, width, height, {atOnce});
  let text = "";
  for (let i = 0; i < pixels.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, pixels.subarray(i, i + 0x8000));
  }
  return btoa(text);
})"""


@pytest.fixture(scope="module")
def browser_page():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page()
        page.set_content("<!doctype html><html><body></body></html>")
        page.add_script_tag(path=str(STATIC / "pose_draw.js"))
        yield page
        browser.close()


def as_points(points):
    return None if points is None else [None if p is None else list(p) for p in points]


def as_person(pose: PoseKeypoints) -> dict:
    hands = list(pose.hands) + [None] * (2 - len(pose.hands))
    return {
        "body": as_points(pose.body),
        "hands": [as_points(hand) for hand in hands],
        "face": as_points(pose.face),
    }


def browser_maps(page, cases) -> list[np.ndarray]:
    """cases: (poses, height, width, at_once) -> the browser's maps, RGB."""
    sent = [
        ([as_person(pose) for pose in poses], width, height, at_once)
        for poses, height, width, at_once in cases
    ]
    maps = []
    for (_, height, width, _), data in zip(cases, page.evaluate(DRAW_CASES, sent), strict=True):
        rgba = np.frombuffer(base64.b64decode(data), np.uint8).reshape(height, width, 4)
        assert np.all(rgba[..., 3] == 255)
        maps.append(rgba[..., :3])
    return maps


def server_map(poses, height, width, at_once) -> np.ndarray:
    draw = draw_poses_at_once if at_once else draw_poses
    return draw(poses, height, width, True, True, scale=PIXELS)


def assert_equal_maps(page, cases) -> None:
    for index, (case, drawn) in enumerate(zip(cases, browser_maps(page, cases), strict=True)):
        expected = server_map(*case)
        differing = int(np.any(drawn != expected, axis=-1).sum())
        assert differing == 0, f"case {index} ({case[2]}x{case[1]}): {differing} pixels differ"


def random_points(rng, count, width, height, missing=0.2, margin=0.0):
    """Float pixel points, some missing, a few on or just past the borders."""
    points = []
    for _ in range(count):
        if rng.random() < missing:
            points.append(None)
            continue
        if rng.random() < 0.1:  # on a border or a corner exactly
            x = float(rng.choice([0.0, width, rng.uniform(0, width)]))
            y = float(rng.choice([0.0, height, rng.uniform(0, height)]))
        else:
            x = float(rng.uniform(-margin, width + margin))
            y = float(rng.uniform(-margin, height + margin))
        points.append((x, y))
    return tuple(points)


def random_pose(rng, width, height) -> PoseKeypoints:
    body = random_points(rng, 18, width, height, margin=8.0)
    hands = tuple(
        random_points(rng, 21, width, height, missing=0.1, margin=3.0)
        if rng.random() < 0.6
        else (None,) * 21
        for _ in range(int(rng.integers(0, 3)))
    )
    face = None
    if rng.random() < 0.6:
        face = random_points(rng, int(rng.choice([70, 68])), width, height, margin=3.0)
    return PoseKeypoints(body, hands, face)


def test_random_people_are_drawn_alike(browser_page):
    rng = np.random.default_rng(20261202)
    sizes = [(512, 512), (37, 53), (768, 512), (512, 768), (64, 200), (301, 299)]
    cases = []
    for number in range(48):
        height, width = sizes[number % len(sizes)]
        people = tuple(random_pose(rng, width, height) for _ in range(int(rng.integers(1, 4))))
        cases.append((people, height, width, bool(number % 2)))
    assert_equal_maps(browser_page, cases)


def test_every_limb_angle_and_length(browser_page):
    """Limbs at every whole degree and in between, from zero length to across the canvas."""
    cases = []
    for length in (0.0, 0.4, 1.0, 3.5, 9.0, 40.0, 180.0):
        bodies = []
        for degrees in np.arange(0.0, 360.0, 7.5):
            angle = np.radians(degrees)
            start = (256.0 + 0.3 * degrees / 7.5, 256.0)
            end = (start[0] + length * np.cos(angle), start[1] + length * np.sin(angle))
            body = [None] * 18
            body[1], body[2] = start, end  # the neck-right shoulder limb
            bodies.append(PoseKeypoints(tuple(body)))
        cases.extend(((pose,), 512, 512, False) for pose in bodies)
    assert_equal_maps(browser_page, cases)


def test_a_pose_found_by_mediapipe_on_a_canvas(browser_page, engine, astronaut):
    """The astronaut's pose (body, hands, face) as the server's JSON, read by the browser's
    reader and drawn on a real <canvas>, read back with getImageData."""
    found = engine.annotate(
        astronaut, "mediapipe_pose", image_resolution=256, include_hands=True, include_face=True
    ).pose
    canvas = poses_from_json(found, 20)
    data = browser_page.evaluate(
        """(pose) => {
          const {people, width, height} = window.PoseDraw.peopleFromJson(pose);
          const canvas = document.createElement("canvas");
          document.body.appendChild(canvas);
          window.PoseDraw.drawToCanvas(canvas, people, width, height, {});
          return canvas.toDataURL("image/png");
        }""",
        found,
    )
    from io import BytesIO

    from PIL import Image

    png = base64.b64decode(data.split(",", 1)[1])
    drawn = np.asarray(Image.open(BytesIO(png)).convert("RGB"))
    expected = canvas.draw()
    assert expected.any()
    assert drawn.shape == expected.shape
    assert int(np.any(drawn != expected, axis=-1).sum()) == 0


def test_the_browsers_reader_reads_as_the_servers(browser_page):
    """Normalised and pixel coordinates, missing points (c = 0), points outside the canvas."""
    rng = np.random.default_rng(7)
    documents = []
    for normalised in (False, True, False):
        width, height = (320, 200) if normalised else (256, 384)
        scale = (width, height) if normalised else (1, 1)

        def flat(count, scale=scale, width=width, height=height):
            values = []
            for _ in range(count):
                x, y = rng.uniform(-20, width + 20), rng.uniform(-20, height + 20)
                found = rng.random() > 0.2
                values += [x / scale[0], y / scale[1], 1.0 if found else 0.0]
            return values

        people = [
            {
                "pose_keypoints_2d": flat(18),
                "hand_left_keypoints_2d": flat(21) if rng.random() < 0.7 else None,
                "hand_right_keypoints_2d": flat(21),
                "face_keypoints_2d": flat(70) if rng.random() < 0.5 else None,
            }
            for _ in range(2)
        ]
        if normalised:  # every counted value within 0..1, as normalised JSON is
            for person in people:
                for key, values in person.items():
                    if values:
                        person[key] = [min(max(v, 0.0), 1.0) for v in values]
        documents.append({"people": people, "canvas_width": width, "canvas_height": height})
    read = browser_page.evaluate(
        "(documents) => documents.map((d) => window.PoseDraw.peopleFromJson(d))", documents
    )
    for document, mine in zip(documents, read, strict=True):
        theirs = poses_from_json(json.dumps(document), 20)
        assert (mine["width"], mine["height"]) == (theirs.width, theirs.height)
        for person, pose in zip(mine["people"], theirs.poses, strict=True):
            expected = as_person(pose)
            assert person["body"] == expected["body"]
            assert person["face"] == expected["face"]
            hands = [hand if hand and any(hand) else None for hand in person["hands"]]
            wanted = [hand if hand and any(hand) else None for hand in expected["hands"]]
            assert hands == wanted
