"""Several ControlNets at once, the control window, resize modes, base models, the v1.0 family,
per-image seeds and parameters in every PNG (issue 4), on the tiny models."""

from __future__ import annotations

import numpy as np
import pytest

from annotators import ANNOTATORS, make_control_map
from annotators.util import fill_to, fitted_size, target_size
from errors import InvalidRequestError
from png_info import png_bytes_with_parameters, read_parameters
from settings import DEFAULT_MODEL_IDS, V10_MODEL_IDS, parse_base_models

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
