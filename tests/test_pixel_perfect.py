"""Pixel perfect: the annotator resolution from the output size and resize mode, by the
AUTOMATIC1111 extension's rule (`pixel_perfect_resolution`), off by default, recorded only when
on; on the page, in the CLI and in the PNG."""

from __future__ import annotations

import numpy as np
import pytest

from annotators.util import pixel_perfect_resolution
from cli import MAP_OPTIONS, build_parser, given_options
from pipelines.request import UNIT_OPTIONS, GenerationRequest, UnitRequest, recorded_values
from png_info import a1111_infotext
from settings import Settings


# (image H, W), output (H, W), resize mode -> the extension's estimation, worked by hand:
# k_h = H_out / H, k_w = W_out / W; round(max(k_h, k_w) * min(H, W)) to cover (just resize,
# crop and resize), round(min(k_h, k_w) * min(H, W)) to fit inside (resize and fill).
@pytest.mark.parametrize(
    ("image", "output", "mode", "expected"),
    [
        ((400, 600), (256, 384), "crop_and_resize", 256),  # k = 0.64 both ways: 0.64 * 400
        ((512, 768), (512, 512), "crop_and_resize", 512),  # max(1, 0.667) * 512
        ((512, 768), (512, 512), "resize_and_fill", 341),  # min(1, 0.667) * 512 = 341.3
        ((512, 768), (512, 512), "just_resize", 512),  # stretched: as crop and resize
        ((1000, 500), (512, 768), "crop_and_resize", 768),  # max(0.512, 1.536) * 500
        ((1000, 500), (512, 768), "resize_and_fill", 256),  # min(0.512, 1.536) * 500
        ((300, 300), (768, 512), "crop_and_resize", 768),  # max(2.56, 1.707) * 300
        ((300, 300), (768, 512), "resize_and_fill", 512),  # min(2.56, 1.707) * 300
        ((333, 500), (512, 768), "resize_and_fill", 511),  # min(1.5375, 1.536) * 333 = 511.5
    ],
)
def test_the_rule_is_the_extensions(image, output, mode, expected):
    assert pixel_perfect_resolution(*image, *output, mode) == expected


def unit(annotator: str, image_shape=(400, 600), **given) -> UnitRequest:
    condition = {"lineart_standard": "lineart", "canny": "canny"}[annotator]
    image = np.zeros((*image_shape, 3), np.uint8)
    return UnitRequest.build(Settings().limits, condition, annotator, image, **given)


def test_on_it_replaces_the_slider_and_off_it_keeps_the_reference_default():
    off = unit("lineart_standard", detect_resolution=640)
    assert off.detect_at((512, 512), "resize_and_fill") == 640
    assert unit("lineart_standard").detect_at((512, 512), "crop_and_resize") == 512  # reference
    on = unit("lineart_standard", (512, 768), detect_resolution=640, pixel_perfect=True)
    assert on.detect_at((512, 512), "resize_and_fill") == 341
    assert on.detect_at((512, 512), "crop_and_resize") == 512
    # Annotators without a resolution (they run at the output size) are left as they are.
    assert unit("canny", pixel_perfect=True).detect_at((512, 512), "crop_and_resize") is None


def test_the_engine_runs_the_annotator_at_the_rules_resolution(engine, coffee):
    # coffee.jpg (400 x 600) at a short side of 256: output 256 x 384, k = 0.64: 256.
    perfect = engine.annotate(
        coffee, "lineart_standard", image_resolution=256, pixel_perfect=True
    ).image
    at_256 = engine.annotate(
        coffee, "lineart_standard", image_resolution=256, detect_resolution=256
    )
    default = engine.annotate(coffee, "lineart_standard", image_resolution=256)  # at 512
    np.testing.assert_array_equal(perfect, at_256.image)
    assert not np.array_equal(perfect, default.image)


def test_png_records_it_only_when_on_and_a_restore_turns_it_off_without_it():
    settings, image = Settings(), np.zeros((64, 96, 3), np.uint8)
    for on in (False, True):
        request = GenerationRequest.build(
            settings, "lineart", image, annotator="lineart_standard", pixel_perfect=on
        )
        parameters = request.parameters(["m"], "base", None)
        assert ("pixel_perfect" in parameters["units"][0]) is on
        assert ("Pixel Perfect: True" in a1111_infotext(parameters)) is on
        _, units = recorded_values(parameters)  # the mirror: back as it was written
        assert units[0].get("pixel_perfect", False) is on


def test_cli_takes_it_from_the_option_table():
    argv = ["annotate", "--image", "in.png", "--out", "out", "--annotator", "lineart_standard"]
    args = build_parser().parse_args([*argv, "--pixel-perfect", "true"])
    given = given_options(args, MAP_OPTIONS)
    assert UNIT_OPTIONS["pixel_perfect"].check(given["pixel_perfect"], Settings().limits) is True
    assert "pixel_perfect" not in given_options(build_parser().parse_args(argv), MAP_OPTIONS)


def test_a_restore_turns_it_off_for_a_png_made_without_it(tmp_path):
    import gradio as gr

    from png_info import save_png
    from ui.results import restored_settings

    settings, image = Settings(), np.zeros((64, 96, 3), np.uint8)
    for on in (False, True):
        request = GenerationRequest.build(
            settings, "lineart", image, annotator="lineart_standard", pixel_perfect=on
        )
        path = save_png(image, tmp_path / f"{on}.png", request.parameters(["m"], "base", None))
        controls = {"pixel_perfect": gr.Checkbox(value=not on), "steps": gr.Slider(1, 100)}
        restored = restored_settings(str(path), "lineart", controls)
        assert restored[controls["pixel_perfect"]] is on and restored[controls["steps"]] == 20
