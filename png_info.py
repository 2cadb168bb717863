"""Generation parameters in PNG text chunks: write them with each image, read them back.

Each PNG carries two chunks before the pixel data:

- ``controlnet-demo`` (iTXt, UTF-8): the engine's ``parameters`` dict as JSON; exact round trip.
- ``parameters``: the same settings in AUTOMATIC1111's infotext format (prompt, ``Negative prompt:``
  line, then one ``Key: value, ...`` line with a ``ControlNet N`` entry per unit in
  sd-webui-controlnet's format), so A1111's PNG Info tab and civitai can read them.

Reading only walks the chunks up to the first IDAT: no pixel is decoded, whatever size the header
claims, and bad files give None instead of an exception.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from pipelines.request import APP, recorded_values

PARAMETERS_KEY = APP
A1111_KEY = "parameters"
# Which images an image-to-image run started from, as recorded (see `_image_sources`).
IMAGE_SOURCE_KEYS = ("init_image_source", "mask_source")
COMPRESS_LEVEL = 4

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_TEXT_BYTES = (
    16 * 1024 * 1024
)  # a text chunk (or its inflated text) larger than this is skipped

# Our option values -> sd-webui-controlnet's ResizeMode / ControlMode enum values.
_RESIZE_MODES = {
    "just_resize": "Just Resize",
    "crop_and_resize": "Crop and Resize",
    "resize_and_fill": "Resize and Fill",
}
_CONTROL_MODES = {
    "balanced": "Balanced",
    "prompt": "My prompt is more important",
    "controlnet": "ControlNet is more important",
}


def _quote(value: Any) -> str:
    """A1111's infotext quoting: JSON-quote values holding a comma, colon or newline."""
    text = str(value)
    if "," in text or ":" in text or "\n" in text:
        return json.dumps(text, ensure_ascii=False)
    return text


def _plain(value: Any) -> str:
    """sd-webui-controlnet rejects a unit whose values hold ',' or ':'; replace them."""
    return str(value).replace(",", " ").replace(":", " ")


def _unit_text(unit: dict, parameters: dict) -> str:
    """One unit in sd-webui-controlnet's field order (ControlNetUnit.infotext_fields())."""
    resize = parameters.get("resize_mode")
    control = parameters.get("control_mode")
    fields = {
        "Module": unit.get("annotator") or "none",
        "Model": unit.get("model_id") or unit.get("condition"),
        "Weight": unit.get("strength"),
        "Resize Mode": _RESIZE_MODES.get(resize, resize),
        "Processor Res": unit.get("detect_resolution"),
        "Guidance Start": unit.get("control_start"),
        "Guidance End": unit.get("control_end"),
        "Pixel Perfect": True if unit.get("pixel_perfect") else None,  # written only when on
        "Control Mode": _CONTROL_MODES.get(control, control),
    }
    return ", ".join(f"{k}: {_plain(v)}" for k, v in fields.items() if v is not None)


def a1111_infotext(parameters: dict) -> str:
    """The parameters as A1111's ``parameters`` text (what its create_infotext() writes)."""
    get = parameters.get
    prompt = ", ".join(part for part in (get("prompt"), get("added_prompt")) if part)
    width, height = get("width"), get("height")
    params: dict[str, Any] = {
        "Steps": get("steps"),
        "Sampler": get("scheduler"),
        "CFG scale": get("guidance_scale"),
        "Seed": get("seed"),
        "Size": f"{width}x{height}" if width and height else None,
        "Model": get("base_model_id") or get("base_model"),
        "Clip skip": get("clip_skip"),  # recorded only when not 1, as A1111 writes it
        # Image to image and inpainting only (A1111's img2img keys).
        "Denoising strength": get("denoising_strength"),
        "Mask blur": get("mask_blur"),
    }
    for index, unit in enumerate(get("units") or []):
        if isinstance(unit, dict):
            params[f"ControlNet {index}"] = _unit_text(unit, parameters)
    line = ", ".join(f"{k}: {_quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\nNegative prompt: {get('negative_prompt')}" if get("negative_prompt") else ""
    return f"{prompt}{negative}\n{line}".strip()


def _to_image(image: np.ndarray) -> Image.Image:
    if not (
        isinstance(image, np.ndarray)
        and image.dtype == np.uint8
        and image.ndim == 3
        and image.shape[2] == 3
    ):
        shape = getattr(image, "shape", None)
        raise ValueError(
            f"Expected an RGB uint8 HxWx3 array, got {shape} {getattr(image, 'dtype', '')}"
        )
    return Image.fromarray(np.ascontiguousarray(image))


def png_bytes_with_parameters(image: np.ndarray, parameters: dict | None) -> bytes:
    """Encode an RGB uint8 HxWx3 image as PNG, with the parameters chunks when given."""
    info = None
    if parameters is not None:
        info = PngImagePlugin.PngInfo()
        info.add_itxt(PARAMETERS_KEY, json.dumps(parameters, ensure_ascii=False))
        info.add_text(A1111_KEY, a1111_infotext(parameters))  # tEXt, or iTXt if not latin-1
    buffer = io.BytesIO()
    _to_image(image).save(buffer, format="PNG", pnginfo=info, compress_level=COMPRESS_LEVEL)
    return buffer.getvalue()


def save_png(image: np.ndarray, path: Path, parameters: dict | None = None) -> Path:
    path = Path(path)
    path.write_bytes(png_bytes_with_parameters(image, parameters))
    return path


def _inflate(data: bytes) -> str | None:
    inflater = zlib.decompressobj()
    text = inflater.decompress(data, _MAX_TEXT_BYTES)
    return None if inflater.unconsumed_tail else text.decode("utf-8", "replace")


def _text_chunk(kind: bytes, data: bytes) -> tuple[str, str | None]:
    """(keyword, text) of a tEXt, zTXt or iTXt chunk; text None when unreadable."""
    keyword, _, rest = data.partition(b"\0")
    key = keyword.decode("latin-1")
    if kind == b"tEXt":
        return key, rest.decode("latin-1")
    if kind == b"zTXt":
        return key, _inflate(rest[1:])
    compressed = rest[:1] == b"\1"  # iTXt: flag, method, language\0, translated keyword\0, text
    _, _, rest = rest[2:].partition(b"\0")
    _, _, text = rest.partition(b"\0")
    return key, _inflate(text) if compressed else text.decode("utf-8", "replace")


def _png_texts(stream) -> dict[str, str]:
    """Text chunks before the first IDAT; reads nothing past it."""
    if stream.read(8) != _PNG_SIGNATURE:
        return {}
    texts: dict[str, str] = {}
    while True:
        header = stream.read(8)
        if len(header) < 8:
            return texts
        length, kind = struct.unpack(">I4s", header)
        if kind in (b"IDAT", b"IEND"):
            return texts
        if kind in (b"tEXt", b"zTXt", b"iTXt") and length <= _MAX_TEXT_BYTES:
            data = stream.read(length)
            if len(data) < length:
                return texts
            key, text = _text_chunk(kind, data)
            if text is not None:
                texts.setdefault(key, text)
            stream.seek(4, io.SEEK_CUR)  # CRC
        else:
            stream.seek(length + 4, io.SEEK_CUR)


def _ours(text: Any) -> dict | None:
    if not isinstance(text, str):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) and value.get("app") == APP else None


def read_parameters(source: str | Path | bytes | Image.Image) -> dict | None:
    """Our parameters dict from a PNG (path, bytes or PIL image), or None; never raises."""
    try:
        if isinstance(source, Image.Image):
            return _ours(source.info.get(PARAMETERS_KEY))  # .info, not .text: that decodes pixels
        if isinstance(source, bytes | bytearray | memoryview):
            return _ours(_png_texts(io.BytesIO(source)).get(PARAMETERS_KEY))
        with open(source, "rb") as stream:
            return _ours(_png_texts(stream).get(PARAMETERS_KEY))
    except (OSError, ValueError, TypeError, struct.error, zlib.error):
        return None


def _flat(unit: dict | None) -> dict:
    """One unit's values flat: its options, then its annotator's params by name."""
    if unit is None:
        return {}
    values = {key: value for key, value in unit.items() if key != "params"}
    for key, value in unit.get("params", {}).items():
        values.setdefault(key, value)
    return values


def _image_sources(parameters: dict) -> dict:
    """Which images the run started from (`init_image_source`: "uploaded" or "control_image";
    `mask_source`: "uploaded"), where it used them: the images are not in the PNG, so a restore
    can only ask for them again."""
    return {
        key: parameters[key] for key in IMAGE_SOURCE_KEYS if isinstance(parameters.get(key), str)
    }


def restore_values(parameters: dict) -> dict:
    """Flat UI/API values for a single-condition tab: shared options plus unit 0's settings and
    annotator params, and which images to drop again (`IMAGE_SOURCE_KEYS`). Keys missing from
    the file (older versions, or a text-to-image run: no image-to-image keys) are left out."""
    values, units = recorded_values(parameters)
    if units:
        values.update(_flat(units[0]))
    values.update(_image_sources(parameters))
    return values


def compose_restore_values(parameters: dict, unit_count: int) -> dict:
    """Flat values for the Compose tab's `unit_count` slots: shared options, then unit k's
    settings with the suffix `_k` (k from 1) from the file's unit k-1.

    Slots beyond the file's units get `enabled_k` False (the file made no use of them); units
    beyond `unit_count` are left out. Keys missing from the file are left out. Which images to
    drop again comes as in `restore_values`.
    """
    values, units = recorded_values(parameters)
    for number in range(1, unit_count + 1):
        unit = units[number - 1] if number <= len(units) else None
        values[f"enabled_{number}"] = unit is not None
        values.update({f"{key}_{number}": value for key, value in _flat(unit).items()})
    values.update(_image_sources(parameters))
    return values
