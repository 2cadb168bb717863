"""The AUTOMATIC1111-compatible API on a real `python app.py` server (tiny models), driven by the
real `webuiapi` client and by plain HTTP for the error cases; the same request through webuiapi
and through the page's `/canny` endpoint gives the same pixels."""

from __future__ import annotations

import base64
import io
import json
import re
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
import webuiapi
from gradio_client import Client, handle_file
from PIL import Image

from a1111 import names
from pipelines.request import fitted_to
from png_info import read_parameters
from testkit.paths import ASSETS, PROJECT_ROOT

PROMPT, NEGATIVE = "a cup of coffee", "lowres"
# coffee.jpg is 600x400: at a short side of 256 in its own aspect the output is 384x256.
WIDTH, HEIGHT = 384, 256
FAST = {"steps": 2, "seed": 42, "cfg_scale": 9.0, "sampler_name": "UniPC"}


@pytest.fixture(scope="module")
def api(server) -> webuiapi.WebUIApi:
    parts = urllib.parse.urlsplit(server.url)
    return webuiapi.WebUIApi(host=parts.hostname, port=parts.port)


@pytest.fixture(scope="module")
def coffee_image() -> Image.Image:
    return Image.open(ASSETS / "coffee.jpg").convert("RGB")


def post(server, path: str, body: bytes | dict) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        server.url.rstrip("/") + path, data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def canny_unit(image: Image.Image, **overrides) -> webuiapi.ControlNetUnit:
    values = {
        "image": image,
        "module": "canny",
        "model": "control_v11p_sd15_canny [d14c016b]",  # A1111 prints a hash: any is taken
        "resize_mode": "Crop and Resize",
        "threshold_a": 100,
        "threshold_b": 200,
        **overrides,
    }
    return webuiapi.ControlNetUnit(**values)


def test_txt2img_with_one_unit_equals_the_canny_endpoint(server, api, coffee_image):
    result = api.txt2img(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        width=WIDTH,
        height=HEIGHT,
        controlnet_units=[canny_unit(coffee_image)],
        **FAST,
    )
    assert len(result.images) == 2  # the image, then the unit's map (as the extension does)
    assert result.info["seed"] == 42 and result.info["all_seeds"] == [42]
    assert (result.info["width"], result.info["height"]) == (WIDTH, HEIGHT)
    assert result.parameters["prompt"] == PROMPT  # the payload echoed, its images left out
    assert result.parameters["alwayson_scripts"]["ControlNet"]["args"][0]["image"] is None
    recorded = read_parameters(result.images[0])
    assert recorded["seed"] == 42 and recorded["units"][0]["params"] == {
        "low_threshold": 100,
        "high_threshold": 200,
    }
    assert "pixel_perfect" not in recorded["units"][0]  # recorded only when on
    assert result.images[0].info["parameters"].startswith(PROMPT)  # A1111's infotext chunk

    client = Client(server.url, verbose=False)
    gallery, seed = client.predict(
        image=handle_file(ASSETS / "coffee.jpg"),
        prompt=PROMPT,
        added_prompt="",
        negative_prompt=NEGATIVE,
        image_resolution=HEIGHT,
        steps=2,
        seed=42,
        guidance_scale=9.0,
        low_threshold=100,
        high_threshold=200,
        api_name="/canny",
    )
    page_map, page_image = (np.asarray(Image.open(item["image"])) for item in gallery)
    assert seed == 42
    np.testing.assert_array_equal(np.asarray(result.images[0].convert("RGB")), page_image)
    np.testing.assert_array_equal(np.asarray(result.images[1].convert("RGB")), page_map)


def test_txt2img_with_two_units_and_a_batch(api, coffee_image):
    depth = webuiapi.ControlNetUnit(  # no image of its own: it takes unit 1's
        module="depth_midas",
        model="control_v11f1p_sd15_depth",
        weight=0.6,
        guidance_end=0.5,
        pixel_perfect=True,
        control_mode=0,
        resize_mode="Crop and Resize",
    )
    result = api.txt2img(
        prompt=PROMPT,
        width=WIDTH,
        height=HEIGHT,
        batch_size=2,
        controlnet_units=[canny_unit(coffee_image), depth],
        **FAST,
    )
    assert len(result.images) == 4  # two images, then the two maps
    assert result.info["all_seeds"] == [42, 43]  # image i uses seed + i
    units = read_parameters(result.images[1])["units"]
    assert [unit["condition"] for unit in units] == ["canny", "depth"]
    assert units[1]["strength"] == 0.6 and units[1]["control_end"] == 0.5
    assert units[1]["pixel_perfect"] is True and "pixel_perfect" not in units[0]
    assert all(image.size == (WIDTH, HEIGHT) for image in result.images)
    assert not np.array_equal(np.asarray(result.images[0]), np.asarray(result.images[1]))


def test_img2img_with_a_mask_repaints_only_the_masked_area(api, coffee_image):
    mask = np.zeros((400, 600), np.uint8)
    mask[100:300, 200:400] = 255  # white = repaint
    result = api.img2img(
        images=[coffee_image],
        mask_image=Image.fromarray(mask),
        mask_blur=4,
        inpainting_fill=1,
        denoising_strength=0.75,
        prompt=PROMPT,
        width=WIDTH,
        height=HEIGHT,
        controlnet_units=[  # no image: the unit takes the initial one, as A1111's does
            webuiapi.ControlNetUnit(
                module="inpaint_only",
                model="control_v11p_sd15_inpaint",
                resize_mode="Crop and Resize",
            )
        ],
        **FAST,
    )
    assert result.info["denoising_strength"] == 0.75
    image = np.asarray(result.images[0].convert("RGB"))
    start = fitted_to(np.asarray(coffee_image), (HEIGHT, WIDTH), "crop_and_resize")
    # The mask at 0.64 scale covers rows 64-192, columns 128-256; the blur (sigma 4, kernel
    # 2 * int(2.5 * 4 + 0.5) + 1 = 21) reaches 10 pixels past it: beyond that, the original.
    kept = np.ones((HEIGHT, WIDTH), bool)
    kept[64 - 11 : 192 + 11, 128 - 11 : 256 + 11] = False
    np.testing.assert_array_equal(image[kept], start[kept])
    assert not np.array_equal(image[80:176, 144:240], start[80:176, 144:240])
    recorded = read_parameters(result.images[0])
    assert recorded["denoising_strength"] == 0.75 and recorded["mask_source"] == "uploaded"


def test_detect_equals_the_annotate_endpoint_and_the_lists(server, api, coffee_image):
    detected = api.controlnet_detect(
        images=[coffee_image], module="canny", processor_res=256, threshold_a=100, threshold_b=200
    )
    client = Client(server.url, verbose=False)
    path, _ = client.predict(  # the map, and no pose JSON (not a pose annotator)
        image=handle_file(ASSETS / "coffee.jpg"),
        annotator="canny",
        image_resolution=256,
        low_threshold=100,
        high_threshold=200,
        api_name="/annotate",
    )
    np.testing.assert_array_equal(
        np.asarray(detected.images[0].convert("RGB")), np.asarray(Image.open(path))
    )
    models = api.controlnet_model_list()
    assert {"control_v11p_sd15_canny", "control_v11f1p_sd15_depth", "control_sd15_canny"} <= set(
        models
    )
    modules = api.controlnet_module_list()
    names = {"canny", "depth_midas", "openpose_full", "lineart_realistic", "softedge_hed"}
    assert names <= set(modules)
    assert api.controlnet_version() == 3
    assert "UniPC" in api.util_get_sampler_names()
    assert api.util_get_model_names() == sorted(["Stable Diffusion 1.5", "Tiny community"])
    assert api.get_options()["sd_model_checkpoint"] == "Stable Diffusion 1.5"


def _b64_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_bad_payloads_get_a1111_errors_and_the_server_keeps_serving(server, coffee_image):
    unit = {"image": _b64_png(coffee_image), "module": "canny", "model": "control_v11p_sd15_canny"}

    def txt2img(**changes):
        body = {"prompt": "x", "width": WIDTH, "height": HEIGHT, "steps": 2}
        body["alwayson_scripts"] = {"controlnet": {"args": [{**unit, **changes.pop("unit", {})}]}}
        return post(server, "/sdapi/v1/txt2img", {**body, **changes})

    status, answer = txt2img(unit={"image": "not*base64!"})
    assert status == 422 and "is not valid base64" in answer["detail"]
    assert answer["error"] == "InvalidImageError" and answer["errors"] == answer["detail"]
    huge = _b64_png(Image.new("1", (8000, 8000)))  # 64 MP in a few kB: over the 50 MP limit
    status, answer = txt2img(unit={"image": huge})
    assert status == 413 and "8000x8000 pixels; the limit is 50 megapixels" in answer["detail"]
    status, answer = txt2img(steps=1000)
    assert status == 422 and "`steps` must be between 1 and 100, got 1000" in answer["detail"]
    status, answer = txt2img(cfg_scale=-1)
    assert status == 422 and answer["detail"].startswith("`cfg_scale` must be between")
    status, answer = txt2img(unit={"weight": 5})
    assert status == 422
    assert "controlnet.args[0].weight` must be between 0 and 2" in answer["detail"]
    status, answer = txt2img(unit={"module": "reference_only"})  # A1111's, not offered here
    assert status == 422 and "unknown ControlNet module 'reference_only'" in answer["detail"]
    assert "depth_midas" in answer["detail"]  # the names that are available
    status, answer = txt2img(unit={"model": "control_v11p_sd15_sketch [deadbeef]"})
    assert status == 422 and "control_v11p_sd15_canny" in answer["detail"]
    status, answer = txt2img(unit={"model": "control_v11f1p_sd15_depth"})  # canny on depth
    assert status == 422 and "modules for it: none, depth_midas" in answer["detail"]
    status, answer = txt2img(width=500)
    assert status == 422 and "multiples of 64" in answer["detail"] and "384x256" in answer["detail"]
    status, answer = txt2img(sampler_name="LMS")
    assert status == 422 and "UniPC" in answer["detail"]
    status, answer = post(server, "/sdapi/v1/txt2img", b"{not json")
    assert status == 400 and "not JSON" in answer["detail"]
    status, answer = post(server, "/controlnet/detect", {"controlnet_module": "canny"})
    assert status == 422 and "controlnet_input_images" in answer["detail"]
    status, answer = txt2img(seed=7, override_settings={"CLIP_stop_at_last_layers": 2})
    assert status == 200 and json.loads(answer["info"])["all_seeds"] == [7]
    assert "override_settings" in " ".join(json.loads(answer["info"])["notes"])


def a1111_section() -> str:
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    return readme.split("### AUTOMATIC1111's API", 1)[1].split("\n## ", 1)[0]


def test_the_readmes_webuiapi_example_runs(server, monkeypatch):
    block = re.search(r"^```python\n(.*?)^```$", a1111_section(), re.MULTILINE | re.DOTALL)
    code = block.group(1)
    assert "http://127.0.0.1:7860" in code
    monkeypatch.chdir(PROJECT_ROOT)  # the example's paths are relative to the repository
    namespace: dict = {}
    exec(
        compile(code.replace("http://127.0.0.1:7860", server.url.rstrip("/")), "README", "exec"),
        namespace,
    )
    assert namespace["result"].info["all_seeds"] == [42]
    assert namespace["image"].size == (384, 256) and namespace["depth"].size[0] > 0


def test_the_readmes_name_table_is_the_code_table():
    rows = re.findall(r"^\| (`[^|]*) \| ([^|]*) \|", a1111_section(), re.MULTILINE)
    documented = {}
    for modules, annotators in rows:
        played = re.findall(r"`(\w+)`", annotators)
        for module in re.findall(r"`(\w+)`", modules):
            documented[module] = played
    assert set(documented) == set(names.MODULES)
    for module, entry in names.MODULES.items():
        assert documented[module][: len(entry.annotators)] == list(entry.annotators), module
    for model in names.MODELS:
        assert f"`{model}`" in a1111_section() or model.startswith("sd-controlnet-"), model
