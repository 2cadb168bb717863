"""AUTOMATIC1111 payloads as this app's requests: txt2img / img2img with ControlNet units become
one `GenerationRequest` (through `GenerationRequest.composed`, the constructor the page's Compose
tab uses), /controlnet/detect becomes `MapRequest`s. Nothing is checked twice: the request's own
checks run, their messages naming A1111's keys.

A1111's semantics kept: a unit without an image takes the first unit's (in img2img, the initial
image); `threshold_a` / `threshold_b` / `processor_res` outside the module's range take its
default (sd-webui-controlnet's `bound_check_params`); image i of a run uses seed + i.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from a1111 import names
from annotators import ANNOTATORS
from annotators.util import ASPECT_RATIOS, load_image, target_size
from errors import ImageTooLargeError, InvalidImageError, InvalidRequestError
from pipelines.request import GenerationRequest, MapRequest
from settings import Limits, Settings

# A1111's fields this app has no counterpart for: accepted, and named in `info` when they ask
# for something (a true flag, a non-empty value).
UNSUPPORTED = (
    "enable_hr",
    "restore_faces",
    "tiling",
    "styles",
    "subseed_strength",
    "script_name",
    "inpaint_full_res",
    "refiner_checkpoint",
)
# Where a request keyword's message should name A1111's key instead.
_KEYS = {"guidance_scale": "cfg_scale", "num_images": "batch_size x n_iter"}
_UNIT_KEYS = {
    "strength": "weight",
    "control_start": "guidance_start",
    "control_end": "guidance_end",
    "detect_resolution": "processor_res",
}
_UNIT_KEY = re.compile(r"`(" + "|".join(_UNIT_KEYS) + r")_(\d+)`")


@dataclass
class Generation:
    """A txt2img / img2img payload as the app's request, with what A1111's answer needs."""

    request: GenerationRequest
    notes: list[str] = field(default_factory=list)  # what was ignored or changed, for `info`
    save_maps: list[bool] = field(default_factory=list)  # per unit: return its control map
    echo: dict[str, Any] = field(default_factory=dict)  # the payload without its images


def decode_image(limits: Limits, value: Any, key: str) -> np.ndarray:
    """A base64 image (raw, or a data: URL) as RGB uint8 (H, W, 3), with the upload limits."""
    if isinstance(value, Mapping):  # A1111's {"image": ..., "mask": ...}
        value = value.get("image")
    if not isinstance(value, str) or not value.strip():
        raise InvalidImageError(f"`{key}` must be a base64-encoded image (PNG, JPEG or WebP).")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    value = "".join(value.split())
    if len(value) // 4 * 3 > limits.max_upload_bytes:
        raise ImageTooLargeError(
            f"`{key}` is {len(value) // 4 * 3 / 2**20:.1f} MB; the limit is "
            f"{limits.max_upload_bytes / 2**20:.0f} MB. Send a smaller image."
        )
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImageError(
            f"`{key}` is not valid base64: send the image file's bytes base64-encoded."
        ) from None
    try:
        picture = Image.open(io.BytesIO(data))
        return load_image(
            picture, max_bytes=limits.max_upload_bytes, max_pixels=limits.max_upload_pixels
        )
    except Image.DecompressionBombError:
        raise ImageTooLargeError(
            f"`{key}` has far more pixels than the {limits.max_upload_pixels / 1e6:.0f} "
            "megapixels allowed. Downscale it first."
        ) from None
    except InvalidImageError as error:
        raise type(error)(f"`{key}`: {error}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InvalidImageError(
            f"`{key}`: the decoded bytes are not an image ({type(error).__name__}); send a PNG, "
            "JPEG or WebP file base64-encoded."
        ) from None


def generation(settings: Settings, payload: Any, img2img: bool) -> Generation:
    """A txt2img (`img2img` False) or img2img payload as one checked request."""
    if not isinstance(payload, Mapping):
        raise InvalidRequestError("The request body must be a JSON object.")
    limits, notes = settings.limits, []
    init_image = mask = None
    shared: dict[str, Any] = {}
    if img2img:
        init_images = payload.get("init_images") or []
        if not isinstance(init_images, list) or not init_images:
            raise InvalidRequestError("`init_images` must be a list holding one base64 image.")
        if len(init_images) > 1:
            notes.append("Only the first of `init_images` was used.")
        init_image = decode_image(limits, init_images[0], "init_images[0]")
        if payload.get("mask"):
            mask = decode_image(limits, payload["mask"], "mask")
            if payload.get("inpainting_mask_invert"):
                mask = 255 - mask
            if payload.get("inpainting_fill", 0) != 1:  # A1111's default: 0, fill
                notes.append(
                    "inpainting_fill: the masked area starts from the initial image noised "
                    "(A1111's 1, original), whatever was asked."
                )
        shared["denoising_strength"] = payload.get("denoising_strength", 0.75)
        shared["mask_blur"] = payload.get("mask_blur", 4)
    units, save_maps, unit_modes, version = _units(settings, payload, notes, init_image)
    if not units:
        raise InvalidRequestError(
            "Give at least one enabled ControlNet unit in `alwayson_scripts.controlnet.args`: "
            "this server runs Stable Diffusion steered by ControlNets."
        )
    first_image = units[0].get("image")
    if first_image is None:
        if init_image is None:
            raise InvalidRequestError(
                "ControlNet unit 1 has no `image`: send one (base64), as txt2img has no "
                "initial image to take it from."
            )
        units[0]["image"] = first_image = init_image
    for key, values in unit_modes.items():
        if len(set(values)) > 1:  # one for every unit here: the first unit's
            notes.append(
                f"The units' `{key}` differ ({', '.join(values)}); every unit used the first "
                f"one's, {values[0]}."
            )
    shared["resize_mode"] = unit_modes["resize_mode"][0]
    shared["control_mode"] = unit_modes["control_mode"][0]
    if version is not None:
        shared["controlnet_version"] = version
    if img2img and names.resize_mode(payload.get("resize_mode", 0)) != shared["resize_mode"]:
        notes.append("The initial image is fitted by the first unit's `resize_mode`.")
    shared.update(_geometry(limits, payload, first_image))
    shared.update(_sampling(payload, notes))
    shared.update(_overrides(settings, payload, notes))
    _note_unsupported(payload, notes)
    try:
        request = GenerationRequest.composed(
            settings,
            units,
            payload.get("prompt", ""),
            init_image=init_image,
            mask=mask,
            added_prompt="",  # A1111 adds nothing to the prompt
            **shared,
        )
    except InvalidRequestError as error:
        raise type(error)(_a1111_keys(str(error))) from None
    return Generation(request, notes, save_maps, _echo(payload, img2img))


def _units(
    settings: Settings, payload: Mapping[str, Any], notes: list[str], init_image: Any
) -> tuple[list[dict[str, Any]], list[bool], dict[str, list[str]], str | None]:
    """The enabled units as `GenerationRequest.composed` takes them, whether each returns its
    map, each one's resize and control mode, and the ControlNet family their models name."""
    limits = settings.limits
    scripts = payload.get("alwayson_scripts") or {}
    if not isinstance(scripts, Mapping):
        raise InvalidRequestError("`alwayson_scripts` must be an object.")
    # A1111 matches a script by its title, in any case (webuiapi sends "ControlNet").
    script = next((v for k, v in scripts.items() if str(k).lower() == "controlnet"), None) or {}
    raw_units = script.get("args", []) if isinstance(script, Mapping) else script
    if not isinstance(raw_units, list):
        raise InvalidRequestError("`alwayson_scripts.controlnet.args` must be a list of units.")
    units, save_maps, versions = [], [], []
    modes: dict[str, list[str]] = {"resize_mode": [], "control_mode": []}
    for index, raw in enumerate(raw_units):
        key = f"alwayson_scripts.controlnet.args[{index}]"
        if not isinstance(raw, Mapping):
            raise InvalidRequestError(f"`{key}` must be an object (a ControlNet unit).")
        if not raw.get("enabled", True):
            continue
        chosen = names.module(raw.get("module") or "none", f"{key}.module")
        role = version = None
        if raw.get("model") not in (None, "", "None"):
            role, version = names.model(raw["model"], f"{key}.model")
            versions.append(version)
        condition, annotator = names.unit_for(chosen, role, f"{key}.module")
        image = raw.get("image") or raw.get("input_image")
        if raw.get("mask") or (isinstance(image, Mapping) and image.get("mask")):
            notes.append(f"{key}: a unit's own mask is not used (send the img2img `mask`).")
        units.append(
            {
                "condition": condition.name,
                "annotator": annotator,
                "image": None if not image else decode_image(limits, image, f"{key}.image"),
                "strength": raw.get("weight", 1.0),
                "control_start": raw.get("guidance_start", 0.0),
                "control_end": raw.get("guidance_end", 1.0),
                "detect_resolution": _processor_res(limits, annotator, raw.get("processor_res")),
                "pixel_perfect": raw.get("pixel_perfect", False),
                "params": _params(chosen, annotator, raw),
            }
        )
        save_maps.append(bool(raw.get("save_detected_map", True)))
        modes["resize_mode"].append(
            names.resize_mode(raw.get("resize_mode", "Crop and Resize"), f"{key}.resize_mode")
        )
        modes["control_mode"].append(
            names.control_mode(raw.get("control_mode", "Balanced"), f"{key}.control_mode")
        )
    if len(set(versions)) > 1:
        raise InvalidRequestError(
            "The units mix v1.0 and v1.1 ControlNet models: this server runs one family per "
            "request; pick models of one."
        )
    if units and init_image is not None and units[0]["image"] is None:
        units[0]["image"] = init_image  # A1111: a unit without an image takes the initial one
    return units, save_maps, modes, versions[0] if versions else None


def _params(chosen: names.Module, annotator: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The module's fixed parameters, and the thresholds that are within the parameter's range
    (outside it, as A1111: the default)."""
    params = dict(chosen.params)
    own = {param.name: param for param in ANNOTATORS[annotator].params}
    given = (raw.get("threshold_a"), raw.get("threshold_b"))
    for name, value in zip(chosen.thresholds, given, strict=False):  # a module may use fewer
        param = own.get(name)
        if param is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if param.minimum <= value <= param.maximum:
            params[name] = round(value) if param.is_integer else float(value)
    return params


def _processor_res(limits: Limits, annotator: str, value: Any) -> int | None:
    """`processor_res` as the annotator resolution; None (the annotator's default) for -1, for
    values outside the server's range, and for annotators that have none."""
    if ANNOTATORS[annotator].default_detect_resolution is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not limits.min_detect_resolution <= value <= limits.max_detect_resolution:
        return None
    return int(value)


def _geometry(limits: Limits, payload: Mapping[str, Any], image: np.ndarray) -> dict[str, Any]:
    """`width` x `height` as the image resolution (the short side) and the aspect ratio: the
    control image's own, or one of the fixed ratios."""
    sizes = {}
    for key in ("width", "height"):
        value = payload.get(key, 512)
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise InvalidRequestError(f"`{key}` must be a whole number of pixels, got {value!r}.")
        sizes[key] = int(value)
    width, height = sizes["width"], sizes["height"]
    short = min(width, height)
    if not limits.min_resolution <= short <= limits.max_resolution:
        raise InvalidRequestError(
            f"`width` and `height` ({width}x{height}): the short side must be between "
            f"{limits.min_resolution} and {limits.max_resolution} pixels on this server."
        )
    made = {
        name: target_size(image.shape[0], image.shape[1], short, name) for name in ASPECT_RATIOS
    }
    for name, size in made.items():
        if size == (height, width):
            return {"image_resolution": short, "aspect_ratio": name}
    choices = ", ".join(
        f"{size[1]}x{size[0]}" + (" (the control image's aspect)" if name == "image" else "")
        for name, size in made.items()
    )
    raise InvalidRequestError(
        f"`width` and `height` ({width}x{height}): this server makes sizes in multiples of 64, "
        f"in the control image's aspect or a fixed ratio; with this short side: {choices}."
    )


def _sampling(payload: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    """The sampler, steps, guidance, seed, prompt and batch as the request's options."""
    sampler = names.sampler(
        payload.get("sampler_name") or payload.get("sampler_index") or "UniPC",
        payload.get("scheduler"),
    )
    values = {
        "scheduler": sampler,
        "steps": payload.get("steps", 20),
        "guidance_scale": payload.get("cfg_scale", 7.0),
        "seed": payload.get("seed", -1),
        "negative_prompt": payload.get("negative_prompt", ""),
        "num_images": _batch(payload),
    }
    if sampler == "DDIM" and payload.get("eta") is not None:
        values["eta"] = payload["eta"]  # the one sampler here whose step takes it
    return values


def _overrides(settings: Settings, payload: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    """`override_settings`: its `sd_model_checkpoint`, when it names one of the operator's base
    models, picks it; everything else is named in the notes and not applied."""
    overrides = payload.get("override_settings") or {}
    if not isinstance(overrides, Mapping):
        raise InvalidRequestError("`override_settings` must be an object.")
    chosen = {}
    checkpoint = overrides.get("sd_model_checkpoint")
    if isinstance(checkpoint, str) and checkpoint in settings.base_models:
        chosen["base_model"] = checkpoint
    applied = {"sd_model_checkpoint"} if chosen else set()
    ignored = sorted(str(key) for key in overrides if key not in applied)
    if ignored:
        notes.append(f"override_settings not applied on this server: {', '.join(ignored)}.")
    return chosen


def _batch(payload: Mapping[str, Any]) -> Any:
    batch_size, n_iter = payload.get("batch_size", 1), payload.get("n_iter", 1)
    for key, value in (("batch_size", batch_size), ("n_iter", n_iter)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequestError(f"`{key}` must be a whole number from 1, got {value!r}.")
    return batch_size * n_iter


def _note_unsupported(payload: Mapping[str, Any], notes: list[str]) -> None:
    asked = [key for key in UNSUPPORTED if payload.get(key)]
    if asked:
        notes.append(f"Not supported on this server, ignored: {', '.join(asked)}.")


def _a1111_keys(message: str) -> str:
    """A request message with the request's keywords as A1111 names them."""
    message = _UNIT_KEY.sub(
        lambda match: (
            f"`alwayson_scripts.controlnet.args[{int(match[2]) - 1}].{_UNIT_KEYS[match[1]]}`"
        ),
        message,
    )
    for ours, theirs in _KEYS.items():
        message = message.replace(f"`{ours}`", f"`{theirs}`")
    return message


def _echo(payload: Mapping[str, Any], img2img: bool) -> dict[str, Any]:
    """The payload as A1111 returns it in `parameters`: without the images (A1111 keeps the
    initial ones only with `include_init_images`)."""
    echo = dict(payload)
    if img2img and not payload.get("include_init_images"):
        echo["init_images"], echo["mask"] = None, None
    scripts = echo.get("alwayson_scripts")
    if isinstance(scripts, Mapping):
        echo["alwayson_scripts"] = {
            name: _without_images(script) if str(name).lower() == "controlnet" else script
            for name, script in scripts.items()
        }
    return echo


def _without_images(script: Any) -> Any:
    if not isinstance(script, Mapping) or not isinstance(script.get("args"), list):
        return script
    args = [
        {**unit, "image": None, "input_image": None, "mask": None}
        if isinstance(unit, Mapping)
        else unit
        for unit in script["args"]
    ]
    return {**script, "args": args}


@dataclass
class Detection:
    """A /controlnet/detect payload: one map request per image."""

    requests: list[MapRequest]
    notes: list[str] = field(default_factory=list)


def detection(settings: Settings, payload: Any) -> Detection:
    """/controlnet/detect: `controlnet_module`, `controlnet_input_images` (webuiapi:
    `controlnet_images`), `controlnet_processor_res` (the map's short side),
    `controlnet_threshold_a` / `_b`."""
    if not isinstance(payload, Mapping):
        raise InvalidRequestError("The request body must be a JSON object.")
    limits, notes = settings.limits, []
    chosen = names.module(payload.get("controlnet_module") or "none", "controlnet_module")
    annotator = chosen.annotators[0]
    images = payload.get("controlnet_input_images") or payload.get("controlnet_images")
    if not isinstance(images, Sequence) or isinstance(images, str) or not images:
        raise InvalidRequestError(
            "`controlnet_input_images` must be a list of base64 images (at least one)."
        )
    resolution = payload.get("controlnet_processor_res", 512)
    if isinstance(resolution, bool) or not isinstance(resolution, int | float):
        resolution = 512
    if not limits.min_resolution <= resolution <= limits.max_resolution:
        clamped = int(min(max(resolution, limits.min_resolution), limits.max_resolution))
        notes.append(f"controlnet_processor_res {resolution} was taken as {clamped}.")
        resolution = clamped
    raw = {
        "threshold_a": payload.get("controlnet_threshold_a"),
        "threshold_b": payload.get("controlnet_threshold_b"),
    }
    params = _params(chosen, annotator, raw)
    detect = _processor_res(limits, annotator, resolution)
    requests = [
        MapRequest.build(
            settings,
            decode_image(limits, image, f"controlnet_input_images[{index}]"),
            annotator,
            image_resolution=int(resolution),
            detect_resolution=detect,
            resize_mode="just_resize",  # the map keeps the image's own aspect
            **params,
        )
        for index, image in enumerate(images)
    ]
    return Detection(requests, notes)
