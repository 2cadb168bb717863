"""png_info: parameters chunks written with each PNG, read back, and turned into UI values."""

from __future__ import annotations

import io
import json
import re
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from png_info import (
    A1111_KEY,
    PARAMETERS_KEY,
    a1111_infotext,
    compose_restore_values,
    png_bytes_with_parameters,
    read_parameters,
    restore_values,
    save_png,
)


def canny_unit(**overrides) -> dict:
    unit = {
        "condition": "canny",
        "annotator": "canny",
        "strength": 1.0,
        "control_start": 0.0,
        "control_end": 1.0,
        "detect_resolution": None,
        "params": {"low_threshold": 100, "high_threshold": 200},
        "model_id": "lllyasviel/control_v11p_sd15_canny",
    }
    return unit | overrides


def make_parameters(**overrides) -> dict:
    parameters = {
        "prompt": "a house",
        "added_prompt": "best quality, extremely detailed",
        "negative_prompt": "lowres, bad anatomy",
        "seed": 1234,
        "steps": 20,
        "guidance_scale": 9.0,
        "scheduler": "UniPC",
        "eta": 0.0,
        "control_mode": "balanced",
        "resolution_weighting": 1.0,
        "image_resolution": 512,
        "aspect_ratio": "image",
        "resize_mode": "crop_and_resize",
        "width": 512,
        "height": 768,
        "base_model": "Stable Diffusion 1.5",
        "base_model_id": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "controlnet_version": "v1.1",
        "units": [canny_unit()],
        "app": "controlnet-demo",
    }
    return parameters | overrides


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (48, 32, 3), dtype=np.uint8)


def chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def test_round_trip_unicode_newline_and_compose(image, tmp_path):
    parameters = make_parameters(
        prompt="ein Häuschen 🏠 家\nzweite Zeile",
        negative_prompt="schlecht, «laid»",
        units=[
            canny_unit(),
            depth_unit(),
        ],
    )
    data = png_bytes_with_parameters(image, parameters)
    assert read_parameters(data) == parameters
    path = save_png(image, tmp_path / "out.png", parameters)
    assert path == tmp_path / "out.png"
    assert read_parameters(path) == parameters
    assert read_parameters(str(path)) == parameters
    with Image.open(path) as opened:
        assert read_parameters(opened) == parameters
        # What A1111's PNG Info reads: the unicode prompt survives there too.
        assert opened.info[A1111_KEY] == a1111_infotext(parameters)
        assert opened.info[A1111_KEY].startswith("ein Häuschen 🏠 家\nzweite Zeile, best quality")
        assert 'ControlNet 1: "Module: depth_midas, ' in opened.info[A1111_KEY]


def test_pixels_unchanged(image, tmp_path):
    path = save_png(image, tmp_path / "out.png", make_parameters())
    with Image.open(path) as opened:
        assert opened.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(opened), image)
    plain = save_png(image, tmp_path / "plain.png")
    with Image.open(plain) as opened:
        np.testing.assert_array_equal(np.asarray(opened), image)


def test_rejects_non_rgb_arrays():
    with pytest.raises(ValueError):
        png_bytes_with_parameters(np.zeros((4, 4), np.uint8), make_parameters())
    with pytest.raises(ValueError):
        png_bytes_with_parameters(np.zeros((4, 4, 3), np.float32), make_parameters())


EXPECTED_A1111 = (
    "a house, best quality, extremely detailed\n"
    "Negative prompt: lowres, bad anatomy\n"
    "Steps: 20, Sampler: UniPC, CFG scale: 9.0, Seed: 1234, Size: 512x768, "
    "Model: stable-diffusion-v1-5/stable-diffusion-v1-5, "
    'ControlNet 0: "Module: canny, Model: lllyasviel/control_v11p_sd15_canny, Weight: 1.0, '
    "Resize Mode: Crop and Resize, Guidance Start: 0.0, Guidance End: 1.0, "
    'Control Mode: Balanced"'
)

# A1111's infotext_utils.re_param_code, which its PNG Info / paste parser uses on the last line.
A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def test_a1111_text_exact(image):
    parameters = make_parameters()
    assert a1111_infotext(parameters) == EXPECTED_A1111
    with Image.open(io.BytesIO(png_bytes_with_parameters(image, parameters))) as opened:
        assert opened.info[A1111_KEY] == EXPECTED_A1111

    # Parsed the way A1111 does: last line into key/values, then the unit as sd-webui-controlnet
    # parses it (split on ",", then ": ").
    last_line = EXPECTED_A1111.split("\n")[-1]
    fields = {key: value for key, value in A1111_PARAM.findall(last_line)}
    assert fields["Seed"] == "1234" and fields["Size"] == "512x768"
    unit = dict(item.strip().split(": ") for item in json.loads(fields["ControlNet 0"]).split(","))
    assert unit["Module"] == "canny" and unit["Weight"] == "1.0"
    assert unit["Control Mode"] == "Balanced"


def test_a1111_text_options():
    parameters = make_parameters(
        added_prompt="",
        negative_prompt="",
        control_mode="controlnet",
        resize_mode="resize_and_fill",
        units=[canny_unit(detect_resolution=384)],
    )
    text = a1111_infotext(parameters)
    assert text.startswith("a house\nSteps: 20, ")
    assert "Negative prompt" not in text
    assert (
        "Resize Mode: Resize and Fill, Processor Res: 384, Guidance Start: 0.0, "
        "Guidance End: 1.0, Control Mode: ControlNet is more important" in text
    )


def test_image_to_image_settings_in_both_chunks_and_restored():
    inpainted = make_parameters(
        denoising_strength=0.75,
        mask_blur=4,
        keep_unmasked=True,
        init_image_source="uploaded",
        mask_source="uploaded",
        steps_run=15,
    )
    text = a1111_infotext(inpainted)
    assert "Model: stable-diffusion-v1-5/stable-diffusion-v1-5, Denoising strength: 0.75, " in text
    assert "Mask blur: 4, ControlNet 0: " in text  # A1111's img2img keys, before the units
    values = restore_values(inpainted)
    assert (values["denoising_strength"], values["mask_blur"], values["keep_unmasked"]) == (
        0.75,
        4,
        True,
    )
    # The images are not in the PNG: a restore says which to drop again.
    assert values["init_image_source"] == values["mask_source"] == "uploaded"
    assert "steps_run" not in values  # what ran, not a setting: `steps` is restored
    composed = compose_restore_values(inpainted, 2)
    assert composed["denoising_strength"] == 0.75 and composed["mask_source"] == "uploaded"
    # Text to image records none of them, and its restore has none.
    plain = restore_values(make_parameters())
    assert not {"denoising_strength", "mask_blur", "init_image_source"} & set(plain)
    assert "Denoising strength" not in a1111_infotext(make_parameters())


def test_none_for_foreign_and_bad_files(image, tmp_path):
    plain = io.BytesIO()
    Image.fromarray(image).save(plain, format="PNG")
    assert read_parameters(plain.getvalue()) is None

    jpeg = io.BytesIO()
    Image.fromarray(image).save(jpeg, format="JPEG")
    assert read_parameters(jpeg.getvalue()) is None

    rng = np.random.default_rng(1)
    assert read_parameters(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()) is None
    assert read_parameters(b"") is None
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert read_parameters(empty) is None
    assert read_parameters(tmp_path / "missing.png") is None
    assert read_parameters(plain.getvalue()[:20]) is None  # truncated inside IHDR

    a1111 = PngImagePlugin.PngInfo()
    a1111.add_text(A1111_KEY, "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1")
    other = tmp_path / "a1111.png"
    Image.fromarray(image).save(other, pnginfo=a1111)
    assert read_parameters(other) is None
    with Image.open(other) as opened:
        assert read_parameters(opened) is None

    # Our key, but not our JSON / not our app.
    for text in ("not json", json.dumps({"app": "other"}), json.dumps([1, 2])):
        info = PngImagePlugin.PngInfo()
        info.add_itxt(PARAMETERS_KEY, text)
        data = io.BytesIO()
        Image.fromarray(image).save(data, format="PNG", pnginfo=info)
        assert read_parameters(data.getvalue()) is None


def test_huge_header_reads_chunks_only():
    """The header claims 100000x100000 pixels: Pillow's Image.open refuses it (decompression bomb),
    and decoding it would take 30 GB; reading stops at the first IDAT, so neither happens."""
    parameters = make_parameters()
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
        + chunk(b"iTXt", PARAMETERS_KEY.encode() + b"\0\0\0\0\0" + json.dumps(parameters).encode())
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(png))
    start = time.perf_counter()
    assert read_parameters(png) == parameters
    assert time.perf_counter() - start < 0.5


def test_compressed_text_chunks():
    parameters = make_parameters()
    text = json.dumps(parameters).encode()
    itxt = PARAMETERS_KEY.encode() + b"\0\1\0\0\0" + zlib.compress(text)
    ztxt = PARAMETERS_KEY.encode() + b"\0\0" + zlib.compress(text)
    for kind, data in ((b"iTXt", itxt), (b"zTXt", ztxt)):
        png = b"\x89PNG\r\n\x1a\n" + chunk(kind, data) + chunk(b"IEND", b"")
        assert read_parameters(png) == parameters


def test_restore_values_full():
    values = restore_values(make_parameters())
    assert values == {
        "prompt": "a house",
        "added_prompt": "best quality, extremely detailed",
        "negative_prompt": "lowres, bad anatomy",
        "seed": 1234,
        "steps": 20,
        "guidance_scale": 9.0,
        "scheduler": "UniPC",
        "eta": 0.0,
        "control_mode": "balanced",
        "resolution_weighting": 1.0,
        "image_resolution": 512,
        "aspect_ratio": "image",
        "resize_mode": "crop_and_resize",
        "base_model": "Stable Diffusion 1.5",
        "controlnet_version": "v1.1",
        "clip_skip": 1,
        "condition": "canny",
        "annotator": "canny",
        "strength": 1.0,
        "control_start": 0.0,
        "control_end": 1.0,
        "low_threshold": 100,
        "high_threshold": 200,
    }
    with_resolution = make_parameters(units=[canny_unit(detect_resolution=384)])
    assert restore_values(with_resolution)["detect_resolution"] == 384


def test_restore_values_missing_keys():
    old = {"prompt": "a house", "seed": 7, "units": [{"condition": "canny", "strength": 0.5}]}
    # CLIP skip is recorded only where it is not 1: absent, it was 1.
    assert restore_values(old) == {
        "prompt": "a house",
        "seed": 7,
        "clip_skip": 1,
        "condition": "canny",
        "strength": 0.5,
    }
    assert restore_values({"prompt": "x", "units": []}) == {"prompt": "x", "clip_skip": 1}
    assert restore_values({}) == {"clip_skip": 1}


def depth_unit() -> dict:
    return canny_unit(
        condition="depth",
        annotator="depth_midas",
        strength=0.6,
        control_start=0.1,
        control_end=0.8,
        detect_resolution=384,
        params={},
        model_id="lllyasviel/control_v11f1p_sd15_depth",
    )


def test_compose_restore_values_multi_unit():
    parameters = make_parameters(units=[depth_unit(), canny_unit(params={"low_threshold": 42})])
    values = compose_restore_values(parameters, 3)
    shared = restore_values(make_parameters(units=[]))
    assert {key: values.pop(key) for key in shared} == shared  # the tab's shared options
    assert values == {
        "enabled_1": True,
        "condition_1": "depth",
        "annotator_1": "depth_midas",
        "strength_1": 0.6,
        "control_start_1": 0.1,
        "control_end_1": 0.8,
        "detect_resolution_1": 384,
        "enabled_2": True,
        "condition_2": "canny",
        "annotator_2": "canny",
        "strength_2": 1.0,
        "control_start_2": 0.0,
        "control_end_2": 1.0,
        "low_threshold_2": 42,  # Canny records no detect resolution: none restored
        "enabled_3": False,  # not used by the PNG: switched off, nothing else touched
    }


def test_compose_restore_values_single_unit_goes_to_unit_1():
    values = compose_restore_values(make_parameters(), 3)
    assert values["prompt"] == "a house" and values["seed"] == 1234
    unit_1 = {key: value for key, value in values.items() if key.endswith("_1")}
    assert unit_1 == {
        "enabled_1": True,
        "condition_1": "canny",
        "annotator_1": "canny",
        "strength_1": 1.0,
        "control_start_1": 0.0,
        "control_end_1": 1.0,
        "low_threshold_1": 100,
        "high_threshold_1": 200,
    }
    assert (values["enabled_2"], values["enabled_3"]) == (False, False)
    assert not any(key.endswith(("_2", "_3")) and not key.startswith("enabled") for key in values)


def test_compose_restore_values_missing_keys_from_older_pngs():
    old = {"prompt": "a house", "seed": 7, "units": [{"condition": "canny", "strength": 0.5}]}
    assert compose_restore_values(old, 2) == {
        "prompt": "a house",
        "seed": 7,
        "clip_skip": 1,
        "enabled_1": True,
        "condition_1": "canny",
        "strength_1": 0.5,
        "enabled_2": False,
    }
    # No units (or not a list, or a unit that is not a mapping): every slot is off.
    assert compose_restore_values({"seed": 1}, 2) == {
        "seed": 1,
        "clip_skip": 1,
        "enabled_1": False,
        "enabled_2": False,
    }
    assert compose_restore_values({"units": "canny"}, 1) == {"clip_skip": 1, "enabled_1": False}
    assert compose_restore_values({"units": ["canny"]}, 1) == {"clip_skip": 1, "enabled_1": False}


def test_compose_restore_values_takes_the_first_units_when_there_are_more():
    units = [canny_unit(strength=number / 10) for number in range(1, 5)]
    values = compose_restore_values(make_parameters(units=units), 3)
    assert [values[f"strength_{k}"] for k in (1, 2, 3)] == [0.1, 0.2, 0.3]
    assert all(values[f"enabled_{k}"] for k in (1, 2, 3))
    assert not any(key.endswith("_4") for key in values)
