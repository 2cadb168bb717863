"""The request: each option declared once drives its check, the PNG parameters and their restore,
the page's control and the CLI's flag; the page, the API and the CLI build it the same way."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import cli
from errors import InvalidRequestError
from pipelines.request import (
    SHARED_OPTIONS,
    UNIT_OPTIONS,
    GenerationRequest,
    MapRequest,
    Option,
    defaults,
    recorded_values,
)
from png_info import compose_restore_values, restore_values
from settings import Limits, Settings

IMAGE = np.full((64, 96, 3), 128, np.uint8)
MASK = np.full((64, 96, 3), 255, np.uint8)  # repaint everything


def other_value(spec: Option, limits: Limits, settings: Settings):
    """A valid value of `spec` other than its default."""
    if spec.name == "base_model":
        return list(settings.base_models)[-1]
    if spec.name == "denoising_strength":
        return 0.5  # its minimum, 0, runs no step
    if spec.kind == "flag":
        return not spec.default
    if spec.kind == "text":
        return f"some {spec.name}"
    if spec.kind == "choice":
        return next(name for name in spec.choices if name != spec.default)
    minimum, maximum = spec.bounds(limits)
    if spec.default is None:
        return int(minimum)
    value = maximum if spec.default != maximum else minimum
    return int(value) if spec.kind == "whole" else float(value)


def name_of(value):
    return getattr(value, "name", value)


def test_every_field_round_trips_through_the_png_parameters(settings):
    """Each recorded option (every one the request declares, present and future), each unit
    option, condition, annotator and params: parameters -> recorded_values -> the same request.
    A mask makes every option act (the image-to-image ones are recorded only when they do)."""
    limits = settings.limits
    shared = {
        name: other_value(spec, limits, settings)
        for name, spec in SHARED_OPTIONS.items()
        if spec.recorded
    }
    units = [
        {"condition": "canny", "image": IMAGE, "params": {"low_threshold": 50}},
        {"condition": "depth", "annotator": "none"},
    ]
    for unit in units:
        unit.update(
            {name: other_value(spec, limits, settings) for name, spec in UNIT_OPTIONS.items()}
        )
        unit["control_start"], unit["control_end"] = 0.25, 0.75  # start <= end
    request = GenerationRequest.composed(settings, units, mask=MASK, **shared)
    for name, value in shared.items():
        assert name_of(getattr(request, name)) == value != SHARED_OPTIONS[name].default, name

    parameters = json.loads(json.dumps(request.parameters(["a", "b"], "base-id", None)))
    values, unit_values = recorded_values(parameters)
    assert values == shared
    rebuilt = GenerationRequest.composed(
        settings,
        [{**unit, "image": IMAGE} for unit in unit_values],
        mask=MASK,
        **values,
    )
    for name in SHARED_OPTIONS:
        if SHARED_OPTIONS[name].recorded:
            assert getattr(rebuilt, name) == getattr(request, name), name
    for mine, theirs in zip(rebuilt.units, request.units, strict=True):
        for name in ("condition", "annotator", "given_params", "params", *UNIT_OPTIONS):
            assert getattr(mine, name) == getattr(theirs, name), name
    assert rebuilt.parameters(["a", "b"], "base-id", None) == parameters


def test_restore_for_the_page_comes_from_the_same_mirror(settings):
    request = GenerationRequest.build(
        settings, "canny", IMAGE, "a cat", steps=7, strength=0.5, low_threshold=40
    )
    parameters = request.parameters(["id"], "base-id", None)
    restored = restore_values(parameters)
    assert restored["steps"] == 7 and restored["strength"] == 0.5
    assert restored["low_threshold"] == 40 and restored["condition"] == "canny"
    assert "num_images" not in restored  # not recorded: how many is the visitor's choice
    composed = compose_restore_values(parameters, 2)
    assert composed["strength_1"] == 0.5 and composed["enabled_2"] is False


def test_defaults_live_in_one_place(settings):
    request = GenerationRequest.build(settings, "canny", IMAGE)
    every_default = defaults(settings)
    for name in SHARED_OPTIONS:
        assert name_of(getattr(request, name)) == every_default[name], name
    assert request.negative_prompt.startswith("longbody, lowres")  # the reference apps' text
    overridden = Settings(default_overrides={"num_images": 3, "image_resolution": 384})
    assert defaults(overridden)["num_images"] == 3
    assert GenerationRequest.build(overridden, "canny", IMAGE).image_resolution == 384


def test_names_are_resolved_into_objects_once(settings):
    request = GenerationRequest.build(
        settings, "normal", IMAGE, annotator="normal_midas", control_mode="controlnet"
    )
    unit = request.units[0]
    assert unit.condition.name == "normal" and unit.annotator.name == "normal_midas"
    assert unit.controlnet_role == "normal_midas"
    assert request.control_mode.conditional_only  # the mode object, not its name


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"steps": 0}, "`steps` must be between 1 and 100, got 0."),
        ({"cache_interval": 11}, "`cache_interval` must be between 1 and 10"),
        ({"aspect_ratio": "2:7"}, "Unknown aspect ratio '2:7'"),
        ({"control_start": 0.8, "control_end": 0.2}, "must not be after `control_end`"),
        ({"prompt": "x" * 10_001}, "limit is 10000"),
        ({"seed": 1.5}, "`seed` must be a whole number"),
        ({"denoising_strength": 1.01}, "`denoising_strength` must be between 0 and 1"),
        ({"mask_blur": 65}, "`mask_blur` must be between 0 and 64, got 65."),
        ({"keep_unmasked": "maybe"}, "`keep_unmasked` must be true or false, got 'maybe'."),
        ({"keep_unmasked": 2}, "`keep_unmasked` must be true or false, got 2."),
    ],
)
def test_limits_are_enforced_in_the_request(settings, given, message):
    with pytest.raises(InvalidRequestError, match=re.escape(message)):
        GenerationRequest.build(settings, "canny", IMAGE, **given)


def test_a_flag_takes_true_false_and_their_words(settings):
    for given, value in ((True, True), (0, False), ("off", False), ("Yes", True)):
        request = GenerationRequest.build(settings, "canny", IMAGE, keep_unmasked=given)
        assert request.keep_unmasked is value


def test_a_map_request_checks_what_annotate_takes(settings):
    request = MapRequest.build(settings, IMAGE, "canny", 256, None, "1:1", "just_resize")
    assert request.size == (256, 256) and request.unit.params["low_threshold"] == 100
    with pytest.raises(InvalidRequestError, match="Unknown parameter"):
        MapRequest.build(settings, IMAGE, "canny", colour=3)


def test_every_option_has_a_cli_flag_and_a_page_control(settings):
    parser = cli.build_parser()
    generate = parser._subparsers._group_actions[0].choices["generate"]
    flags = {action.dest for action in generate._actions}
    for name in (*SHARED_OPTIONS, *UNIT_OPTIONS):
        assert name in flags, name
    args = parser.parse_args(
        ["generate", "--condition", "canny", "--image", "x", "--out", "y", "--cache-interval", "3"]
    )
    assert cli.given_options(args, cli.GENERATE_OPTIONS) == {"cache_interval": 3}

    import gradio as gr

    from ui.controls import controls_for

    with gr.Blocks():
        page = {}
        for group in ("output", "unit", "sampling", "model", "speed", "image_to_image", "clip"):
            base = {"choices": list(settings.base_models)}
            page.update(controls_for(group, settings.limits, defaults(settings), base_model=base))
    missing = {name for name, spec in SHARED_OPTIONS.items() if spec.group != "prompt"} - set(page)
    assert not missing
    assert page["cache_interval"].maximum == SHARED_OPTIONS["cache_interval"].maximum
