"""A1111 payloads as the app's requests (no server): the name table, A1111's rules for units
(thresholds out of range take the default, a unit without an image takes the first one's), the
size rule, messages naming A1111's keys; the routes' credentials and the engine's device lock."""

from __future__ import annotations

import base64
import io
import threading
import time

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from a1111 import names, payload
from a1111.routes import A1111Api, BusyError, add_routes, status_of
from errors import ImageTooLargeError, InvalidImageError, InvalidRequestError
from settings import Settings

SETTINGS = Settings()


def b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


PHOTO = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)  # 3:2


def txt2img(*units: dict, **shared) -> payload.Generation:
    body = {"width": 384, "height": 256, "alwayson_scripts": {"controlnet": {"args": list(units)}}}
    return payload.generation(SETTINGS, {**body, **shared}, img2img=False)


def test_model_names_with_any_hash_and_modules_in_any_case():
    assert names.model("control_v11p_sd15_canny [d14c016b]") == ("canny", "v1.1")
    assert names.model("control_v11p_sd15_canny") == ("canny", "v1.1")
    assert names.model("control_sd15_hed [fef5e48e]") == ("softedge", "v1.0")
    assert names.module("Canny") is names.MODULES["canny"]
    with pytest.raises(InvalidRequestError, match="unknown ControlNet model 'x'.*control_sd15_seg"):
        names.model("x")
    # "invert" (a drawing of one's own) plays line_drawing on line art and scribble on scribble.
    assert names.unit_for(names.MODULES["invert"], "lineart")[1] == "line_drawing"
    assert names.unit_for(names.MODULES["invert"], "scribble")[1] == "scribble"
    assert names.sampler("DPM++ 2M", "Karras") == "DPM++ 2M Karras"


def test_a_unit_becomes_the_composed_request_with_a1111s_rules():
    canny = {"image": b64(PHOTO), "module": "canny", "model": "control_v11p_sd15_canny"}
    built = txt2img(
        {**canny, "threshold_a": 64, "threshold_b": 300, "weight": 0.5},  # b: over 255
        {"module": "depth_midas", "model": "control_v11f1p_sd15_depth", "processor_res": -1},
        {"module": "mlsd", "enabled": False},
        seed=5,
        cfg_scale=4.5,
        batch_size=2,
        n_iter=3,
    )
    first, second = built.request.units
    assert dict(first.params) == {"low_threshold": 64, "high_threshold": 200}  # b: default
    assert first.strength == 0.5 and first.condition.name == "canny"
    assert second.condition.name == "depth" and second.detect_resolution is None  # -1: default
    np.testing.assert_array_equal(second.image, first.image)  # no image: unit 1's
    request = built.request
    assert (request.seed, request.guidance_scale, request.num_images) == (5, 4.5, 6)
    assert request.added_prompt == "" and request.size == (256, 384)
    assert request.resize_mode == "crop_and_resize" and built.save_maps == [True, True]
    assert request.base_model == "Stable Diffusion 1.5"  # the operator's first
    assert built.notes == []
    one_way = txt2img(canny, {**canny, "resize_mode": "Resize and Fill", "control_mode": 2})
    assert one_way.request.resize_mode == "crop_and_resize"  # the first unit's, for every unit
    assert one_way.request.control_mode.name == "balanced"
    assert [note.split("`")[1] for note in one_way.notes] == ["resize_mode", "control_mode"]


def test_override_settings_pick_a_base_model_and_name_the_rest():
    unit = {"image": b64(PHOTO), "module": "canny"}
    two_bases = Settings(base_models={"First": "a/b", "Second": "c/d"})
    overrides = {"sd_model_checkpoint": "Second", "CLIP_stop_at_last_layers": 2}
    body = {"width": 384, "height": 256, "override_settings": overrides}
    body["alwayson_scripts"] = {"controlnet": {"args": [unit]}}
    built = payload.generation(two_bases, body, img2img=False)
    assert built.request.base_model == "Second"
    assert built.notes == [
        "override_settings not applied on this server: CLIP_stop_at_last_layers."
    ]


def test_sizes_the_app_does_not_make_are_refused_with_the_ones_it_does():
    unit = {"image": b64(PHOTO), "module": "none", "model": "control_v11p_sd15_canny"}
    assert txt2img(unit, width=384, height=256).request.aspect_ratio == "image"
    assert txt2img(unit, width=512, height=512).request.aspect_ratio == "1:1"
    with pytest.raises(InvalidRequestError, match=r"400x256.*384x256 \(the control image's"):
        txt2img(unit, width=400, height=256)
    with pytest.raises(InvalidRequestError, match="short side must be between 256 and 768"):
        txt2img(unit, width=1024, height=1024)


def test_what_cannot_be_one_request_is_refused_naming_a1111s_keys():
    unit = {"image": b64(PHOTO), "module": "canny", "model": "control_v11p_sd15_canny"}
    with pytest.raises(InvalidRequestError, match="at least one enabled ControlNet unit"):
        txt2img()
    with pytest.raises(InvalidRequestError, match="unit 1 has no `image`"):
        txt2img({"module": "canny"})
    with pytest.raises(InvalidRequestError, match="mix v1.0 and v1.1"):
        txt2img(unit, {**unit, "model": "control_sd15_canny"})
    with pytest.raises(InvalidRequestError, match="^`cfg_scale` must be between"):
        txt2img(unit, cfg_scale=100)
    with pytest.raises(InvalidRequestError, match=r"args\[0\]\.guidance_end` must be between"):
        txt2img({**unit, "guidance_end": 3})


def test_img2img_takes_the_initial_image_for_the_unit_and_inverts_the_mask_when_asked():
    mask = np.zeros((64, 96), np.uint8)
    mask[:, :48] = 255  # the left half
    body = {
        "init_images": ["data:image/png;base64," + b64(PHOTO)],  # webuiapi sends data URLs
        "mask": b64(mask),
        "mask_blur": 0,
        "width": 384,
        "height": 256,
        "alwayson_scripts": {"ControlNet": {"args": [{"module": "canny"}]}},
    }
    built = payload.generation(SETTINGS, body, img2img=True)
    assert built.request.denoising_strength == 0.75  # A1111's img2img default
    assert built.request.repainted[:, :100].all() and not built.request.repainted[:, 300:].any()
    inverted = payload.generation(SETTINGS, {**body, "inpainting_mask_invert": 1}, img2img=True)
    assert (
        inverted.request.repainted[:, 300:].all() and not inverted.request.repainted[:, :100].any()
    )
    assert any("inpainting_fill" in note for note in built.notes)  # webuiapi's default is 0


def test_images_that_are_not_images_or_too_large():
    limits = SETTINGS.limits
    with pytest.raises(InvalidImageError, match="not valid base64"):
        payload.decode_image(limits, "@@@", "image")
    with pytest.raises(InvalidImageError, match="the decoded bytes are not an image"):
        payload.decode_image(limits, base64.b64encode(b"hello").decode(), "image")
    huge = io.BytesIO()
    Image.new("1", (8000, 8000)).save(huge, format="PNG")
    with pytest.raises(ImageTooLargeError, match="`image`: The image is 8000x8000"):
        payload.decode_image(limits, base64.b64encode(huge.getvalue()).decode(), "image")
    assert status_of(ImageTooLargeError("x")) == 413 and status_of(InvalidImageError("x")) == 422


class FakeEngine:
    """Records nothing; the routes' lists and credentials need no model."""


def test_api_auth_asks_for_the_credentials_on_every_route():
    app = FastAPI()
    add_routes(app, FakeEngine(), Settings(api_auth=(("ann", "s3cret"),)))
    client = TestClient(app)
    assert client.get("/controlnet/version").status_code == 401
    assert client.get("/controlnet/version", auth=("ann", "wrong")).status_code == 401
    assert client.post("/sdapi/v1/txt2img", json={}).status_code == 401
    answer = client.get("/controlnet/version", auth=("ann", "s3cret"))
    assert answer.status_code == 200 and answer.json() == {"version": 3}
    open_app = FastAPI()
    add_routes(open_app, FakeEngine(), Settings())  # API_AUTH unset: no credentials asked
    assert TestClient(open_app).get("/controlnet/version").status_code == 200


def test_requests_beyond_the_queue_size_are_turned_away():
    api = A1111Api(FakeEngine(), Settings(queue_size=1))
    with pytest.raises(BusyError, match="1 requests are waiting"):
        api.on_device(lambda: api.on_device(lambda: None))
    assert api.on_device(lambda: "served") == "served"  # its place is free again


def test_the_page_and_the_api_never_run_on_the_device_at_once(settings):
    from pipelines.engine import Engine

    engine, spans = Engine(settings, device="cpu"), []

    def busy(*_args):  # the device part of a request: 50 ms
        started = time.perf_counter()
        time.sleep(0.05)
        spans.append((started, time.perf_counter()))

    engine._generate_on_gpu = engine._annotate_on_gpu = engine._upscale_on_gpu = busy
    threads = [
        threading.Thread(target=engine.run, args=(None,)),  # the page's generation
        threading.Thread(target=engine.run_map, args=(None,)),  # an API detect
        threading.Thread(target=engine.run, args=(None,)),  # an API txt2img
        threading.Thread(target=engine.run_upscale, args=(None,)),  # the page's upscale
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    spans.sort()
    assert len(spans) == 4
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:], strict=False))


def test_api_auth_is_read_from_the_environment_as_a1111s_api_auth():
    assert Settings.from_env({}).api_auth == ()
    pairs = Settings.from_env({"API_AUTH": "ann:s3cret, bob:pa:ss"}).api_auth
    assert pairs == (("ann", "s3cret"), ("bob", "pa:ss"))  # a password may hold a colon
    with pytest.raises(ValueError, match="API_AUTH must be user:password"):
        Settings.from_env({"API_AUTH": "ann"})
