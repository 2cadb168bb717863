"""Several ControlNets at once, the control window, resize modes, base models, the v1.0 family,
per-image seeds and parameters in every PNG, on the tiny models."""

from __future__ import annotations

import re

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from test_browser import GENERATE_TIMEOUT_MS, THUMBNAIL, open_tab
from test_browser import page as page  # noqa: F401 (the headless Chromium fixture)

from annotators import ANNOTATORS, make_control_map
from annotators.util import fill_to, fitted_size, target_size
from errors import InvalidRequestError
from png_info import png_bytes_with_parameters, read_parameters
from settings import DEFAULT_MODEL_IDS, V10_MODEL_IDS, parse_base_models
from testkit.paths import ASSETS

FAST = {"steps": 3, "image_resolution": 256, "seed": 11}


def differs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(float) - b.astype(float)).mean())


def count_calls(module):
    """A forward hook counting the module's calls; returns (counter list, handle)."""
    calls = []
    handle = module.register_forward_hook(lambda *args: calls.append(1))
    return calls, handle


# ---- composition ---------------------------------------------------------------------------------
def test_a_unit_at_strength_zero_changes_nothing(engine, astronaut, coffee):
    single = engine.generate("canny", astronaut, "a robot", **FAST)
    composed = engine.compose(
        [
            {"condition": "canny", "image": astronaut},
            {"condition": "depth", "image": coffee, "strength": 0.0},
        ],
        "a robot",
        **FAST,
    )
    np.testing.assert_array_equal(composed.images[0], single.images[0])
    assert len(composed.control_maps) == 2  # every map is shown, the idle unit's too
    assert composed.map_labels == ["Canny", "Depth"]


def test_two_units_add_up_and_each_matters(engine, astronaut):
    units = [
        {"condition": "canny", "image": astronaut},
        {"condition": "depth"},  # no image of its own: unit 1's
    ]
    both = engine.compose(units, "a robot", **FAST)
    canny_only = engine.generate("canny", astronaut, "a robot", **FAST)
    assert both.control_maps[1].shape == both.control_maps[0].shape == (256, 256, 3)
    assert differs(both.images[0], canny_only.images[0]) > 0.5
    switched_off = engine.compose([units[0], {**units[1], "enabled": False}], "a robot", **FAST)
    np.testing.assert_array_equal(switched_off.images[0], canny_only.images[0])
    assert len(switched_off.control_maps) == 1


@pytest.mark.parametrize(
    ("units", "message"),
    [
        ([{"condition": "canny", "enabled": False}], "Every control unit is switched off"),
        ([{"condition": "canny"}], "No image given"),
        ([{"condition": "canny", "weight": 1}], "unknown key(s) weight"),
        ([{"condition": "canny", "strength": 5}], "`strength_1` must be between 0 and 2"),
        ([{"condition": "warp"}], "Unknown condition 'warp'"),
        ([{"condition": "canny", "annotator": "hed"}], "has no annotator 'hed'"),
        ([{"condition": "canny", "params": {"distance_threshold": 1}}], "Unknown parameter"),
        ([{"condition": "canny"}] * 4, "between 1 and 3 control units"),
        (
            [
                {"condition": "canny"},
                {"condition": "seg", "control_start": 0.8, "control_end": 0.2},
            ],
            "`control_start_2` (0.8) must not be after `control_end_2` (0.2)",
        ),
    ],
)
def test_bad_compositions_are_refused_with_a_clear_message(engine, units, message, astronaut):
    if message != "No image given":
        units = [{**units[0], "image": astronaut}, *units[1:]]
    with pytest.raises(InvalidRequestError) as error:
        engine.compose(units, "x", **FAST)
    assert message in str(error.value)


# ---- control window ----------------------------------------------------------------------------
def test_start_equals_end_equals_zero_is_strength_zero(engine, astronaut):
    window = engine.generate("canny", astronaut, "a robot", control_start=0, control_end=0, **FAST)
    strength = engine.generate("canny", astronaut, "a robot", strength=0, **FAST)
    np.testing.assert_array_equal(window.images[0], strength.images[0])
    full = engine.generate("canny", astronaut, "a robot", **FAST)
    assert differs(full.images[0], window.images[0]) > 0.5


@pytest.mark.parametrize(
    ("start", "end", "runs"),
    [(0.0, 1.0, 4), (0.5, 1.0, 2), (0.0, 0.5, 2), (0.25, 0.5, 1), (0.3, 0.45, 0)],
)
def test_the_controlnet_runs_only_inside_its_window(engine, astronaut, start, end, runs):
    controlnet = engine.controlnet("canny")
    calls, handle = count_calls(controlnet)
    try:
        engine.generate(
            "canny",
            astronaut,
            "a robot",
            control_start=start,
            control_end=end,
            **{**FAST, "steps": 4},
        )
    finally:
        handle.remove()
    assert len(calls) == runs


def test_a_unit_that_never_runs_is_not_even_loaded(settings, astronaut):
    from pipelines.engine import Engine

    fresh = Engine(settings, device="cpu")
    fresh.compose(
        [
            {"condition": "canny", "image": astronaut},
            {"condition": "depth", "control_start": 0.3, "control_end": 0.45},  # no whole step
            {"condition": "seg", "strength": 0.0},
        ],
        "a robot",
        **{**FAST, "steps": 4},
    )
    assert fresh.cached_controlnets == [DEFAULT_MODEL_IDS["canny"]]


def test_the_window_is_checked(engine, astronaut):
    with pytest.raises(InvalidRequestError, match="`control_end` must be between 0 and 1"):
        engine.generate("canny", astronaut, "x", control_end=1.5, **FAST)
    with pytest.raises(InvalidRequestError, match="must not be after"):
        engine.generate("canny", astronaut, "x", control_start=0.6, control_end=0.3, **FAST)


# ---- resize modes and aspect ratios ------------------------------------------------------------
@pytest.fixture
def passthrough():
    annotator = ANNOTATORS["none"]
    return annotator, annotator.load(None)


def test_just_resize_stretches_the_whole_image(passthrough, coffee):
    control_map = make_control_map(*passthrough, coffee, 256, size=(256, 256))
    assert control_map.shape == (256, 256, 3)
    # Every column of the photo is kept: its left and right edges are the map's edges.
    np.testing.assert_allclose(control_map[:, 0].mean(), coffee[:, :3].mean(), atol=12)
    np.testing.assert_allclose(control_map[:, -1].mean(), coffee[:, -3:].mean(), atol=12)


def test_crop_and_resize_keeps_the_centre(passthrough, coffee):
    control_map = make_control_map(
        *passthrough, coffee, 256, size=(256, 256), resize_mode="crop_and_resize"
    )
    assert control_map.shape == (256, 256, 3)
    centre = coffee[:, 100:500]  # 400 x 600: the centred 400 x 400 square
    expected = make_control_map(*passthrough, centre, 256, size=(256, 256))
    np.testing.assert_array_equal(control_map, expected)


def test_resize_and_fill_fits_inside_and_fills_the_border(passthrough, coffee):
    control_map = make_control_map(
        *passthrough, coffee, 256, size=(256, 256), resize_mode="resize_and_fill"
    )
    assert control_map.shape == (256, 256, 3)
    inner_height, inner_width = fitted_size(400, 600, 256, 256)
    assert (inner_height, inner_width) == (171, 256)
    top = (256 - inner_height) // 2
    bands = np.concatenate([control_map[:top], control_map[top + inner_height :]])
    assert len(np.unique(bands.reshape(-1, 3), axis=0)) == 1  # one fill colour
    inner = control_map[top : top + inner_height]
    expected = make_control_map(*passthrough, coffee, 256, size=(inner_height, inner_width))
    np.testing.assert_array_equal(inner, expected)


def test_fill_uses_the_median_border_colour():
    image = np.zeros((4, 4, 3), np.uint8)
    image[0] = 200  # top row bright, the rest of the border black: the median is black
    filled = fill_to(image, 8, 4)
    assert filled.shape == (8, 4, 3) and filled[0].max() == 0 and filled[2, 0, 0] == 200


@pytest.mark.parametrize(
    ("aspect", "size"), [("image", (256, 384)), ("1:1", (256, 256)), ("9:16", (448, 256))]
)
def test_aspect_ratio_sets_the_output_size(engine, coffee, aspect, size):
    assert target_size(400, 600, 256, aspect) == size
    result = engine.generate("canny", coffee, "a cup", aspect_ratio=aspect, **FAST)
    assert result.control_map.shape[:2] == size == result.images[0].shape[:2]


def test_resize_modes_reach_the_engine(engine, coffee):
    maps = {
        mode: engine.annotate(
            coffee, "canny", image_resolution=256, aspect_ratio="1:1", resize_mode=mode
        ).image
        for mode in ("just_resize", "crop_and_resize", "resize_and_fill")
    }
    assert all(control_map.shape == (256, 256, 3) for control_map in maps.values())
    assert differs(maps["just_resize"], maps["crop_and_resize"]) > 1
    assert maps["resize_and_fill"][:40].max() == 0  # black border above the fitted edge map
    with pytest.raises(InvalidRequestError, match="Unknown resize mode 'stretch'"):
        engine.annotate(coffee, "canny", resize_mode="stretch")


# ---- base models and ControlNet family ---------------------------------------------------------
def test_switching_the_base_keeps_the_cached_controlnets(engine, astronaut):
    first = engine.generate("canny", astronaut, "a robot", **FAST)
    controlnet = engine.controlnet("canny")
    cached = engine.cached_controlnets
    community = engine.generate("canny", astronaut, "a robot", base_model="Tiny community", **FAST)
    assert engine.cached_controlnets == cached
    assert engine.controlnet("canny") is controlnet  # not reloaded
    assert engine.cached_base_models == ["community/tiny-community.safetensors"]  # one at a time
    assert differs(first.images[0], community.images[0]) > 0.5
    assert community.parameters[0]["base_model"] == "Tiny community"
    assert community.parameters[0]["base_model_id"] == "tiny-community.safetensors"
    back = engine.generate("canny", astronaut, "a robot", **FAST)
    np.testing.assert_array_equal(back.images[0], first.images[0])


@pytest.mark.parametrize(
    "name",
    [DEFAULT_MODEL_IDS["base"], "/etc/passwd", "../models/x.safetensors", "sd.ckpt", ["a"]],
)
def test_a_base_not_in_the_list_is_refused(engine, astronaut, name):
    with pytest.raises(InvalidRequestError, match="base.model"):
        engine.generate("canny", astronaut, "x", base_model=name, **FAST)


def test_pickle_checkpoints_are_refused_in_settings():
    with pytest.raises(ValueError, match="pickle file .* can run code"):
        parse_base_models("Old=/models/old.ckpt", DEFAULT_MODEL_IDS["base"])
    listed = parse_base_models("A=org/a; /models/b.safetensors", DEFAULT_MODEL_IDS["base"])
    assert list(listed) == ["Stable Diffusion 1.5", "A", "b"]


def test_the_v10_family_uses_the_papers_controlnet(engine, astronaut):
    v11 = engine.generate("canny", astronaut, "a robot", **FAST)
    v10 = engine.generate("canny", astronaut, "a robot", controlnet_version="v1.0", **FAST)
    assert V10_MODEL_IDS["canny"] in engine.cached_controlnets
    assert v10.parameters[0]["units"][0]["model_id"] == V10_MODEL_IDS["canny"]
    assert differs(v11.images[0], v10.images[0]) > 0.5
    assert engine.controlnet_id("normal_midas", "v1.0") == V10_MODEL_IDS["normal"]
    with pytest.raises(InvalidRequestError, match="Unknown ControlNet version 'v2'"):
        engine.generate("canny", astronaut, "x", controlnet_version="v2", **FAST)


# ---- seeds and parameters ----------------------------------------------------------------------
def test_each_image_has_its_own_seed_and_can_be_made_alone(engine, astronaut):
    batch = engine.generate("canny", astronaut, "a robot", num_images=2, **FAST)
    assert batch.seeds == [11, 12]
    alone = engine.generate("canny", astronaut, "a robot", **{**FAST, "seed": 12})
    np.testing.assert_allclose(alone.images[0], batch.images[1], atol=1)


def test_parameters_round_trip_through_the_png(engine, astronaut):
    result = engine.compose(
        [
            {"condition": "canny", "image": astronaut, "params": {"low_threshold": 50}},
            {"condition": "depth", "strength": 0.5, "control_start": 0.2},
        ],
        "a robot, ünïcode",
        num_images=2,
        scheduler="DDIM",
        **FAST,
    )
    read = read_parameters(png_bytes_with_parameters(result.images[1], result.parameters[1]))
    assert read == result.parameters[1]
    assert read["seed"] == 12 and read["scheduler"] == "DDIM" and read["prompt"].endswith("ünïcode")
    assert [unit["condition"] for unit in read["units"]] == ["canny", "depth"]
    assert read["units"][0]["params"] == {"low_threshold": 50}
    assert read["units"][1]["model_id"] == DEFAULT_MODEL_IDS["depth"]
    assert (read["width"], read["height"]) == (256, 256)


# ---- the Compose tab's annotator settings, through a real server -------------------------------
# Per unit k, after every other keyword: `detect_resolution_k`, then each annotator parameter.
UNIT_SETTINGS = [
    "detect_resolution",
    "low_threshold",
    "high_threshold",
    "value_threshold",
    "distance_threshold",
    "include_hands",
    "include_face",
    "bg_threshold",
    "down_sampling_rate",
]
QUICK = {"steps": 1, "image_resolution": 256, "seed": 3}


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server.url, verbose=False)


def compose(client, **keywords):
    """/compose on the astronaut photo; (control maps as arrays, parameters of the first image)."""
    gallery, _ = client.predict(
        image=handle_file(ASSETS / "astronaut.png"),
        prompt="a robot",
        api_name="/compose",
        **{**QUICK, **keywords},
    )
    maps = [np.asarray(Image.open(item["image"])) for item in gallery[:-1]]
    return maps, read_parameters(gallery[-1]["image"])


def test_unit_settings_come_last_with_the_reference_defaults(client):
    endpoint = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    parameters = endpoint["/compose"]["parameters"]
    names = [parameter["parameter_name"] for parameter in parameters]
    added = [f"{name}_{number}" for number in (1, 2, 3) for name in UNIT_SETTINGS]
    added.append("cache_interval")  # added later still
    # Then image to image and inpainting: the initial image and mask, and their options.
    added += ["init_image", "mask", "denoising_strength", "mask_blur", "keep_unmasked"]
    added += [f"outpaint_{side}" for side in ("left", "right", "top", "bottom")]
    added.append("outpaint_fill")
    added.append("clip_skip")  # then CLIP skip
    added += [f"pose_json_{number}" for number in (1, 2, 3)]  # then each unit's pose JSON
    assert names[-len(added) :] == added  # appended: positional callers are not shifted
    assert names.index("controlnet_version") == len(names) - len(added) - 1
    defaults = {p["parameter_name"]: p["parameter_default"] for p in parameters}
    assert all(p["parameter_has_default"] for p in parameters[-len(added) :])
    assert defaults["cache_interval"] == 1  # feature caching off: the exact images
    assert defaults["denoising_strength"] == 1.0  # from noise: text to image, as before
    # Each preset unit's annotator resolution: OpenPose 512, MiDaS depth 384, Canny (unused) 512.
    assert [defaults[f"detect_resolution_{k}"] for k in (1, 2, 3)] == [512, 384, 512]
    assert defaults["low_threshold_3"] == 100 and defaults["high_threshold_3"] == 200
    assert defaults["include_hands_1"] is False and defaults["bg_threshold_2"] == 0.4


def test_a_units_canny_thresholds_shape_its_map(client):
    def edges(low, high):
        maps, parameters = compose(
            client,
            condition_1="canny",
            enabled_2=False,
            low_threshold_1=low,
            high_threshold_1=high,
            bg_threshold_1=0.9,  # another annotator's: not sent, not refused
        )
        assert len(maps) == 1 and parameters["units"][0]["condition"] == "canny"
        assert parameters["units"][0]["params"] == {"low_threshold": low, "high_threshold": high}
        assert parameters["units"][0]["detect_resolution"] is None  # Canny runs at output size
        return int((maps[0] > 127).any(axis=-1).sum())

    many, few = edges(20, 60), edges(200, 250)
    assert few < 0.8 * many, (few, many)  # the same map if the thresholds were lost


def test_a_units_detect_resolution_and_flags_reach_the_engine(client):
    keywords = {"condition_1": "openpose", "annotator_1": "mediapipe_pose", "strength_2": 0.0}
    maps, parameters = compose(client, **keywords)  # the new keywords left out
    assert [unit["detect_resolution"] for unit in parameters["units"]] == [512, 384]
    assert parameters["units"][0]["params"] == {"include_hands": False, "include_face": False}
    assert parameters["units"][1]["params"] == {}
    coarse, parameters = compose(
        client, **keywords, detect_resolution_2=128, include_hands_1=True, low_threshold_1=9
    )
    assert [unit["detect_resolution"] for unit in parameters["units"]] == [512, 128]
    assert parameters["units"][0]["params"] == {"include_hands": True, "include_face": False}
    assert differs(coarse[1], maps[1]) > 0.5  # MiDaS at 128 px: a blurrier depth map


def test_a_normal_unit_takes_the_midas_background_threshold(client):
    _, parameters = compose(
        client,
        condition_1="normal",
        annotator_1="normal_midas",
        detect_resolution_1=384,
        bg_threshold_1=0.25,
        low_threshold_1=7,  # Canny's: not this annotator's, left out
        enabled_2=False,
    )
    unit = parameters["units"][0]
    assert (unit["annotator"], unit["detect_resolution"]) == ("normal_midas", 384)
    assert unit["params"] == {"bg_threshold": 0.25}


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"detect_resolution_2": 50}, r"`detect_resolution_2` \(Annotator resolution\): .*50"),
        ({"detect_resolution_3": 5000}, r"`detect_resolution_3` \(Annotator resolution\)"),
        ({"low_threshold_1": 0}, r"`low_threshold_1` \(Canny low threshold\)"),
        ({"bg_threshold_2": "deep"}, r"`bg_threshold_2` \(Normal background threshold\)"),
    ],
)
def test_out_of_range_settings_are_refused_by_name_and_the_server_goes_on(
    client, keywords, message
):
    with pytest.raises(AppError, match=message):
        compose(client, enabled_2=False, **keywords)
    maps, _ = compose(client, condition_1="canny", enabled_2=False)
    assert len(maps) == 1 and maps[0].max() == 255


# ---- the same, without a server: what the page shows and what the handler sends ----------------
def visible(updates) -> dict[str, bool]:
    from ui.compose import UNIT_SETTINGS as SETTINGS

    names = [*SETTINGS, "note"]
    return {name: update["visible"] for name, update in zip(names, updates, strict=True)}


@pytest.mark.parametrize(
    ("condition", "annotator", "shown", "resolution"),
    [
        ("canny", "", {"low_threshold", "high_threshold"}, None),
        ("mlsd", "mlsd", {"detect_resolution", "value_threshold", "distance_threshold"}, 512),
        ("openpose", "mediapipe_pose", {"detect_resolution", "include_hands", "include_face"}, 512),
        ("depth", "", {"detect_resolution"}, 384),
        ("normal", "", {"detect_resolution"}, 512),  # NormalBAE: no background threshold
        ("normal", "normal_midas", {"detect_resolution", "bg_threshold"}, 384),
        ("scribble", "", {"note"}, None),
        ("depth", "none", {"note"}, None),
        ("depth", "canny", {"detect_resolution"}, 384),  # not the condition's: its default
    ],
)
def test_only_the_chosen_annotators_settings_are_shown(condition, annotator, shown, resolution):
    from ui.compose import _settings_updates

    updates = _settings_updates(condition, annotator)
    assert {name for name, on in visible(updates).items() if on} == shown
    assert updates[0]["value"] == (resolution or 512)


def test_the_handler_sends_only_the_chosen_annotators_settings():
    from ui.compose import UNIT_PARAMS, _unit_settings

    values = {"detect_resolution": 256, **{n: p.default for n, p in UNIT_PARAMS.items()}}
    assert _unit_settings("canny", "", values) == {
        "detect_resolution": None,
        "params": {"low_threshold": 100, "high_threshold": 200},
    }
    assert _unit_settings("openpose", "mediapipe_pose", values) == {
        "detect_resolution": 256,
        "params": {"include_hands": False, "include_face": False},
    }
    assert _unit_settings("depth", "none", values) == {"detect_resolution": None, "params": {}}
    # A pair the engine refuses gets nothing extra: the engine's message is about the pair.
    assert _unit_settings("canny", "hed", values) == {"detect_resolution": None, "params": {}}
    assert _unit_settings(["canny"], "", values) == {"detect_resolution": None, "params": {}}


def test_each_unit_has_closed_annotator_settings_with_one_control_per_name():
    from test_ui import FakeEngine

    from settings import Settings
    from ui import build_demo

    demo = build_demo(FakeEngine(), Settings())
    config = demo.get_config_file()
    accordions = [
        c["props"] for c in config["components"] if c["props"].get("label") == "Annotator settings"
    ]
    assert len(accordions) == 3 and not any(props["open"] for props in accordions)
    parameters = demo.get_api_info()["named_endpoints"]["/compose"]["parameters"]
    names = [parameter["parameter_name"] for parameter in parameters]
    assert len(names) == len(set(names))
    assert names.count("include_hands_1") == 1  # OpenPose's and MediaPipe's: one control


# ---- restoring a composition from a PNG: the drop zone's handler on the page's real components --
def pose_unit(**overrides) -> dict:
    unit = {
        "condition": "openpose",
        "annotator": "mediapipe_pose",
        "strength": 0.7,
        "control_start": 0.1,
        "control_end": 0.9,
        "detect_resolution": 256,
        "params": {"include_hands": True, "include_face": False},
        "model_id": DEFAULT_MODEL_IDS["openpose"],
    }
    return unit | overrides


def canny_unit(**overrides) -> dict:
    unit = {
        "condition": "canny",
        "annotator": "canny",
        "strength": 0.5,
        "control_start": 0.0,
        "control_end": 1.0,
        "detect_resolution": None,
        "params": {"low_threshold": 42, "high_threshold": 200},
        "model_id": DEFAULT_MODEL_IDS["canny"],
    }
    return unit | overrides


def composition_png(path, units, **shared) -> str:
    parameters = {"app": "controlnet-demo", "prompt": "a robot", "seed": 77, "steps": 7}
    png = png_bytes_with_parameters(
        np.zeros((8, 8, 3), np.uint8), parameters | shared | {"units": units}
    )
    path.write_bytes(png)
    return str(path)


@pytest.fixture(scope="module")
def restore_compose():
    """The Compose drop zone's handler on a page built around the fake engine; it returns the
    outputs by /compose keyword (the "no settings" notes as `note_k`)."""
    import gradio as gr
    from test_ui import FakeEngine

    from settings import Settings
    from ui import build_demo

    demo = build_demo(FakeEngine(), Settings())
    compose_fn = next(fn for fn in demo.fns.values() if fn.api_name == "compose")
    api = demo.get_api_info()["named_endpoints"]["/compose"]["parameters"]
    names = {
        component._id: parameter["parameter_name"]
        for parameter, component in zip(api, compose_fn.inputs, strict=True)
    }
    condition_1 = next(_id for _id, name in names.items() if name == "condition_1")
    restore = next(
        fn
        for fn in demo.fns.values()
        if isinstance(fn.inputs[0] if fn.inputs else None, gr.File)
        and condition_1 in {output._id for output in fn.outputs}
    )
    notes = [output._id for output in restore.outputs if isinstance(output, gr.Markdown)]
    names.update({_id: f"note_{number}" for number, _id in enumerate(notes, start=1)})

    def run(file) -> dict:
        return {names[component._id]: value for component, value in restore.fn(file).items()}

    return run


def value(update):
    return update["value"] if isinstance(update, dict) else update


def test_a_restore_fills_each_unit_with_what_its_handlers_would_show(
    restore_compose, tmp_path, capsys
):
    file = composition_png(tmp_path / "two.png", [pose_unit(), canny_unit()], base_model="nope")
    with pytest.warns(UserWarning, match="base model 'nope' is not offered"):
        out = restore_compose(file)
    assert "Drop the images again." in capsys.readouterr().out  # images are not in the PNG
    assert (out["prompt"], out["seed"], out["steps"]) == ("a robot", 77, 7)
    assert "base_model" not in out
    assert [out[f"enabled_{k}"] for k in (1, 2, 3)] == [True, True, False]
    assert [out[f"condition_{k}"] for k in (1, 2)] == ["openpose", "canny"]
    assert "condition_3" not in out  # an unused slot is only switched off
    # The condition's handler does not run on a restore: the restore sends its updates, with the
    # restored annotator and settings in place of the defaults.
    annotator_2 = out["annotator_2"]
    # Canny's own default annotator: "" under the name the Canny tab gives it.
    assert annotator_2["value"] == "" and ("Canny edges", "") in annotator_2["choices"]
    assert out["annotator_1"]["value"] == "mediapipe_pose"
    assert out["detect_resolution_1"] == {"__type__": "update", "value": 256, "visible": True}
    assert out["include_hands_1"]["value"] is True and out["include_hands_1"]["visible"]
    assert not out["low_threshold_1"]["visible"] and not out["note_1"]["visible"]
    assert out["low_threshold_2"] == {"__type__": "update", "value": 42, "visible": True}
    assert not out["detect_resolution_2"]["visible"]  # Canny runs at the output size
    assert [value(out[f"{name}_2"]) for name in ("strength", "control_start", "control_end")] == [
        0.5,
        0.0,
        1.0,
    ]


def test_a_restore_skips_units_the_compose_tab_cannot_take(restore_compose, tmp_path):
    drawn = canny_unit(condition="scribble_interactive", annotator="scribble", params={})
    file = composition_png(
        tmp_path / "many.png", [drawn, *[canny_unit(strength=s) for s in (0.1, 0.2, 0.3, 0.4)]]
    )
    with pytest.warns(UserWarning) as warned:
        out = restore_compose(file)
    messages = [str(warning.message) for warning in warned]
    assert any("'scribble_interactive'" in m and "not offered" in m for m in messages), messages
    assert any("4 units; the first 3 were restored" in m for m in messages), messages
    assert [out[f"strength_{k}"] for k in (1, 2, 3)] == [0.1, 0.2, 0.3]
    # Only a unit the tab cannot take: the slots are kept as they are (not all switched off).
    with pytest.warns(UserWarning, match="not offered"):
        out = restore_compose(composition_png(tmp_path / "drawn.png", [drawn]))
    assert out["prompt"] == "a robot"
    assert not any(name.endswith(("_1", "_2", "_3")) for name in out)


def test_a_png_without_our_settings_changes_nothing_and_says_why(restore_compose, tmp_path):
    """A warning, not an error: an error would mark every restored field as failed."""
    import gradio as gr

    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    with pytest.warns(UserWarning, match="This PNG carries no settings from this app"):
        out = restore_compose(str(plain))
    assert out and all(update == gr.skip() for update in out.values())
    assert "prompt" in out and "condition_1" in out
    assert all(update == gr.skip() for update in restore_compose(None).values())


def test_a_drawing_makes_its_unit_a_scribble_with_the_scribble_annotators():
    """The condition's handler runs on the person's choice only (`.input`): "Use this drawing",
    which sets the condition in code, sends the annotator choices and settings itself."""
    import gradio as gr
    from test_ui import FakeEngine

    from settings import Settings
    from ui import build_demo
    from ui.compose import _settings_updates

    demo = build_demo(FakeEngine(), Settings())
    use_sketch = next(
        fn
        for fn in demo.fns.values()
        if fn.inputs and isinstance(fn.inputs[0], gr.Sketchpad) and len(fn.outputs) > 3
    )
    drawing = np.full((8, 8, 4), 255, np.uint8)
    image, condition, enabled, annotator, *settings = use_sketch.fn({"composite": drawing})
    assert (image is drawing, condition, enabled) == (True, "scribble", True)
    assert annotator["value"] == ""  # the condition's default, under the name its tab gives it
    assert annotator["choices"][0] == (ANNOTATORS["scribble"].label, "")
    assert [update["visible"] for update in settings] == [
        update["visible"] for update in _settings_updates("scribble", "")
    ]


@pytest.mark.browser
def test_the_page_follows_each_units_condition_and_annotator(page, server):
    """In Chromium: each unit's closed "Annotator settings" shows only its annotator's settings,
    follows its dropdowns, and a Run sends them (hidden controls of other annotators included)."""
    from playwright.sync_api import expect

    page.goto(server.url)
    panel = open_tab(page, "Compose")
    resolution = panel.get_by_role("spinbutton", name="Annotator resolution")
    settings = panel.get_by_role("button", name="Annotator settings")
    expect(settings).to_have_count(3)
    expect(resolution).to_have_count(0)  # closed by default
    for index in range(3):
        settings.nth(index).click()

    def choose(label: str, unit: int, option: str) -> None:
        expect(page.get_by_role("option")).to_have_count(0)  # no other list still open
        combobox = panel.get_by_role("combobox", name=label).nth(unit)
        combobox.click()
        page.get_by_role("option", name=option, exact=True).click()
        combobox.blur()  # close this list: the next choice must find only its own options
        expect(page.get_by_role("option")).to_have_count(0)

    def values(name: str) -> list[str]:
        boxes = panel.get_by_role("spinbutton", name=name)
        return [boxes.nth(index).input_value() for index in range(boxes.count())]

    # Pose (OpenPose 512, hands, face), depth (MiDaS 384), Canny (thresholds, no resolution).
    expect(resolution).to_have_count(2)
    assert values("Annotator resolution") == ["512", "384"]
    expect(panel.get_by_role("checkbox", name="Hands")).to_have_count(1)
    expect(panel.get_by_role("spinbutton", name="Canny low threshold")).to_have_count(1)

    choose("Condition", 2, "Lines (M-LSD)")
    expect(panel.get_by_role("spinbutton", name="M-LSD value threshold")).to_have_count(1)
    expect(panel.get_by_role("spinbutton", name="Canny low threshold")).to_have_count(0)
    expect(resolution).to_have_count(3)
    choose("Condition", 1, "Normal map")
    expect(resolution.nth(1)).to_have_value("512")  # NormalBAE
    choose("Annotator", 1, ANNOTATORS["normal_midas"].label)
    expect(panel.get_by_role("spinbutton", name="Normal background threshold")).to_have_count(1)
    expect(resolution.nth(1)).to_have_value("384")
    choose("Annotator", 0, ANNOTATORS["none"].label)
    expect(panel.get_by_text("This annotator has no settings.")).to_be_visible()
    expect(panel.get_by_role("checkbox", name="Hands")).to_have_count(0)
    choose("Annotator", 0, ANNOTATORS["mediapipe_pose"].label)
    panel.get_by_role("checkbox", name="Hands").check()
    resolution.nth(1).fill("256")
    resolution.nth(1).press("Enter")
    expect(panel.get_by_role("slider", name="Annotator resolution").nth(1)).to_have_value("256")

    panel.get_by_role("button", name="Advanced options").click()
    steps = panel.get_by_role("spinbutton", name="Steps")
    steps.fill("1")
    steps.press("Enter")
    image = panel.get_by_test_id("image").first
    image.locator("input[type=file]").set_input_files(ASSETS / "astronaut.png")
    expect(image.locator("img")).to_have_attribute("src", re.compile(r"astronaut\.png$"))
    panel.get_by_role("textbox", name="Prompt", exact=True).fill("a robot")
    panel.get_by_role("button", name="Run", exact=True).click()
    thumbnails = panel.get_by_role("button", name=THUMBNAIL)
    errors = page.get_by_test_id("toast-body").filter(has_text="Error")
    expect(thumbnails.nth(2).or_(errors.first)).to_be_visible(timeout=GENERATE_TIMEOUT_MS)
    assert not errors.count(), errors.all_inner_texts()
    source = thumbnails.nth(2).get_by_role("img").get_attribute("src")
    parameters = read_parameters(page.request.get(source).body())
    assert [(u["annotator"], u["detect_resolution"], u["params"]) for u in parameters["units"]] == [
        ("mediapipe_pose", 512, {"include_hands": True, "include_face": False}),
        ("normal_midas", 256, {"bg_threshold": 0.4}),
    ]
