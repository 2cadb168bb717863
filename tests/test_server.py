"""A real `python app.py` server on tiny models, driven through its API with gradio_client."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from annotators import ANNOTATORS
from conditions import CONDITIONS
from png_info import read_parameters
from testkit.paths import ASSETS, PROJECT_ROOT
from ui.compose import UNIT_SETTINGS

FAST = {"steps": 2, "image_resolution": 256}
GEOMETRY = ["aspect_ratio", "resize_mode"]
OPTIONS = [
    "num_images",
    "image_resolution",
    *GEOMETRY,
    "strength",
    "control_start",
    "control_end",
    "control_mode",
    "resolution_weighting",
    "scheduler",
    "steps",
    "guidance_scale",
    "seed",
    "eta",
    "added_prompt",
    "negative_prompt",
]
MODELS = ["base_model", "controlnet_version"]
SPEED = ["cache_interval"]  # added after the others: positional callers are not shifted
# Image to image and inpainting, added after those in turn: the images, then their options.
START = ["init_image", "mask", "denoising_strength", "mask_blur", "keep_unmasked"]
START += [f"outpaint_{side}" for side in ("left", "right", "top", "bottom")] + ["outpaint_fill"]
CLIP = ["clip_skip"]  # added after all of those
POSE_JSON = ["pose_json"]  # pose conditions: OpenPose JSON instead of the image, after all
SHARED_KEYWORDS = [*OPTIONS, *MODELS, "annotator"]
UNIT_KEYWORDS = ["enabled", "condition", "annotator", "image", "strength", "control_start"]


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server.url, verbose=False)


def read(item) -> np.ndarray:
    return np.asarray(Image.open(item["image"]))


def test_help_lists_the_launch_flags():
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "app.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    for flag in ("--host", "--port", "--share"):
        assert flag in result.stdout


def test_api_names_and_keywords_follow_the_contract(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    others = {"/compose", "/upscale", "/annotate"}
    assert {f"/{name}" for name in CONDITIONS} | others == set(endpoints)
    for name, condition in CONDITIONS.items():
        parameters = endpoints[f"/{name}"]["parameters"]
        names = [parameter["parameter_name"] for parameter in parameters]
        detect = ["detect_resolution"] if condition.default_detect_resolution else []
        own = [param.name for param in condition.params]
        auto = ["pixel_perfect"] if detect else []  # added last: positional callers not shifted
        pose = POSE_JSON if "mediapipe_pose" in condition.annotators else []
        expected = [
            "image", "prompt", *SHARED_KEYWORDS, *detect, *own, *SPEED, *START, *auto, *CLIP,
            *pose,
        ]  # fmt: skip
        assert names == expected, name
        assert all(parameter["parameter_has_default"] for parameter in parameters[2:])
    annotate = [p["parameter_name"] for p in endpoints["/annotate"]["parameters"]]
    every_param = {param.name for annotator in ANNOTATORS.values() for param in annotator.params}
    geometry = {"image_resolution", "detect_resolution", "pixel_perfect", *GEOMETRY}
    assert set(annotate) == {"image", "annotator", *geometry} | every_param
    compose = [p["parameter_name"] for p in endpoints["/compose"]["parameters"]]
    units = [
        f"{name}_{number}"
        for number in (1, 2, 3)
        for name in [*UNIT_KEYWORDS, "control_end"]
        if (name, number) != ("image", 1)
    ]
    unit_options = ("strength", "control_start", "control_end")
    assert compose == [
        "image",
        "prompt",
        *units,
        *(name for name in OPTIONS if name not in unit_options),
        *MODELS,
        *(f"{name}_{number}" for number in (1, 2, 3) for name in UNIT_SETTINGS),
        *SPEED,
        *START,
        *CLIP,
        *(f"pose_json_{number}" for number in (1, 2, 3)),
    ]


def test_canny_endpoint_returns_map_first_then_images_and_the_seed(client):
    def canny():
        return client.predict(
            image=handle_file(ASSETS / "coffee.jpg"),
            prompt="a cup of coffee",
            num_images=2,
            seed=42,
            low_threshold=50,
            api_name="/canny",
            **FAST,
        )

    gallery, seed = canny()
    assert seed == 42
    captions = ["Control map", "Image 1 · seed 42", "Image 2 · seed 43"]
    assert [item["caption"] for item in gallery] == captions
    assert all(item["image"].endswith(".png") for item in gallery)
    # Each image's PNG, as served, carries its parameters.
    parameters = [read_parameters(item["image"]) for item in gallery[1:]]
    assert [p["seed"] for p in parameters] == [42, 43]
    assert parameters[0]["prompt"] == "a cup of coffee"
    assert parameters[0]["units"][0]["params"]["low_threshold"] == 50
    control_map, *images = (read(item) for item in gallery)
    assert control_map.shape == (256, 384, 3) and set(np.unique(control_map)) <= {0, 255}
    assert all(image.shape == (256, 384, 3) for image in images)
    # Same request, same seed: the same pixels.
    again, _ = canny()
    np.testing.assert_array_equal(read(again[1]), images[0])


def test_scribble_endpoint_converts_a_drawing(client, tmp_path):
    drawing = np.full((320, 256, 3), 250, np.uint8)
    drawing[150:160, 30:220] = 0
    path = tmp_path / "drawing.png"
    Image.fromarray(drawing).save(path)
    gallery, seed = client.predict(
        image=handle_file(path), prompt="a bridge", api_name="/scribble", **FAST
    )
    control_map = read(gallery[0])
    assert control_map.shape == (320, 256, 3)
    assert control_map[155, 100].tolist() == [255, 255, 255] and control_map[50, 50].max() == 0
    assert len(gallery) == 2 and 0 <= seed < 2**31


def test_annotate_endpoint_returns_the_map_and_no_pose_for_other_annotators(client):
    path, pose = client.predict(
        image=handle_file(ASSETS / "astronaut.png"),
        annotator="canny",
        image_resolution=256,
        api_name="/annotate",
    )
    control_map = np.asarray(Image.open(path))
    assert control_map.shape[:2] == (256, 256) and control_map.max() == 255
    assert pose is None  # pose annotators only (tests/test_pose_json.py)


def test_bad_requests_get_clear_messages_and_the_server_keeps_serving(client, tmp_path):
    # Gradio's slider bound or the engine's own check, whichever comes first, names the limit.
    with pytest.raises(AppError, match=r"`steps` \(Steps\): Value 1000000 is greater than maximum"):
        client.predict(
            image=handle_file(ASSETS / "coffee.jpg"), prompt="x", steps=10**6, api_name="/canny"
        )
    with pytest.raises(AppError, match="LMS.*(UniPC|choose one of)"):
        client.predict(
            image=handle_file(ASSETS / "coffee.jpg"),
            prompt="x",
            scheduler="LMS",
            api_name="/canny",
        )
    text_file = tmp_path / "notes.png"
    text_file.write_text("this is not an image")
    with pytest.raises(AppError, match="Could not read the file as an image"):
        client.predict(image=handle_file(text_file), prompt="x", api_name="/canny", **FAST)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(AppError, match="Could not read the file as an image"):
        client.predict(image=handle_file(empty), annotator="canny", api_name="/annotate")
    gallery, _ = client.predict(
        image=handle_file(ASSETS / "coffee.jpg"), prompt="still here", api_name="/canny", **FAST
    )
    assert len(gallery) == 2


def test_upscale_endpoint_returns_the_larger_image_and_refuses_bad_strengths(client, tmp_path):
    source = tmp_path / "small.png"
    Image.open(ASSETS / "coffee.jpg").convert("RGB").resize((192, 128)).save(source)
    options = {"prompt": "a cup of coffee", "steps": 2, "seed": 5, "api_name": "/upscale"}
    # The slider's bound or the engine's own check, whichever comes first.
    with pytest.raises(AppError, match="strength below 1|Value 1 is greater than maximum"):
        client.predict(image=handle_file(source), denoising_strength=1, **options)
    gallery, seed = client.predict(
        image=handle_file(source),
        factor=2,
        tile_size=256,
        tile_overlap=64,
        denoising_strength=0.5,
        **options,
    )
    assert seed == 5 and [item["caption"] for item in gallery] == ["Image 1 · seed 5"]
    assert read(gallery[0]).shape == (256, 384, 3)  # 128 x 192, twice as large
    parameters = read_parameters(gallery[0]["image"])
    assert parameters["upscale"]["tiles"] == 2  # 384 wide in tiles of 256 overlapping by 64+
    assert parameters["steps_run"] == 2 * int(2 * 0.5)


def test_drawn_scribble_endpoint_takes_the_canvas_composite(client, tmp_path):
    canvas = np.zeros((512, 512, 4), np.uint8)  # transparent canvas, as the Sketchpad sends it
    canvas[250:262, 60:450] = (0, 0, 0, 255)  # one black stroke
    path = tmp_path / "canvas.png"
    Image.fromarray(canvas).save(path)
    editor_value = {"background": None, "layers": [], "composite": handle_file(path)}
    gallery, _ = client.predict(
        image=editor_value, prompt="a line", api_name="/scribble_interactive", **FAST
    )
    control_map = read(gallery[0])
    assert control_map.shape == (256, 256, 3)
    assert control_map[128, 128].tolist() == [255, 255, 255]  # the stroke, white on black
    assert control_map[20, 20].max() == 0  # transparent paper is background


@pytest.mark.parametrize("annotator", ["hed", "depth_midas", "seg_upernet", "mediapipe_pose"])
def test_annotate_endpoint_serves_annotators_with_weights(client, annotator):
    path, _ = client.predict(
        image=handle_file(ASSETS / "astronaut.png"),
        annotator=annotator,
        image_resolution=256,
        detect_resolution=256,
        api_name="/annotate",
    )
    control_map = np.asarray(Image.open(path))
    assert control_map.shape[:2] == (256, 256) and control_map.max() > 0


def test_huge_images_are_refused_by_size_before_decoding(client, tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("1", (12000, 12000)).save(huge)  # 144 MP: over the 50 MP limit
    with pytest.raises(AppError, match="12000x12000 pixels; the limit is 50 megapixels"):
        client.predict(image=handle_file(huge), annotator="canny", api_name="/annotate")
    bomb = tmp_path / "bomb.png"
    Image.new("1", (14000, 14000)).save(bomb)  # over PIL's decompression-bomb bound at open
    with pytest.raises(AppError, match="Could not read the file as an image"):
        client.predict(image=handle_file(bomb), annotator="canny", api_name="/annotate")


def test_compose_endpoint_sums_units_on_the_chosen_base(client):
    gallery, seed = client.predict(
        image=handle_file(ASSETS / "astronaut.png"),
        prompt="a chef",
        condition_1="canny",
        condition_2="depth",
        strength_2=0.5,
        control_start_2=0.5,
        seed=5,
        base_model="Tiny community",
        api_name="/compose",
        **FAST,
    )
    captions = [item["caption"] for item in gallery]
    assert captions == ["Control map: Canny", "Control map: Depth", "Image 1 · seed 5"]
    parameters = read_parameters(gallery[2]["image"])
    assert parameters["base_model"] == "Tiny community"
    assert [(u["condition"], u["strength"], u["control_start"]) for u in parameters["units"]] == [
        ("canny", 1.0, 0.0),
        ("depth", 0.5, 0.5),
    ]
    depth_map = read(gallery[1])
    assert depth_map.shape == (256, 256, 3) and depth_map.max() > 200  # MiDaS: near is bright


def test_models_outside_the_list_are_refused(client):
    for name in ("stable-diffusion-v1-5/stable-diffusion-v1-5", "/etc/passwd", "x.ckpt"):
        with pytest.raises(
            AppError, match=r"`base_model` \(Base model\): Value: .* not in the list"
        ):
            client.predict(
                image=handle_file(ASSETS / "coffee.jpg"),
                prompt="x",
                base_model=name,
                api_name="/canny",
                **FAST,
            )
    with pytest.raises(AppError, match=r"`controlnet_version` \(ControlNet version\): Value"):
        client.predict(
            image=handle_file(ASSETS / "coffee.jpg"),
            prompt="x",
            controlnet_version="v3",
            api_name="/canny",
            **FAST,
        )


def test_generation_streams_taesd_previews_then_the_result(client):
    job = client.submit(
        image=handle_file(ASSETS / "astronaut.png"),
        prompt="a robot",
        seed=3,
        api_name="/canny",
        **{**FAST, "steps": 8},
    )
    gallery, seed = job.result(timeout=120)
    assert seed == 3 and [item["caption"] for item in gallery][0] == "Control map"
    streamed = [[item["caption"] for item in output[0]] for output in job.outputs()[:-1]]
    assert streamed == [[f"Preview 1, step {step} of 8"] for step in (2, 4, 6)]
