"""The request: what a generation, a composition or a control map needs, checked once where it
enters, with names resolved into objects.

The page, the API and the CLI build requests through the same constructors
(`GenerationRequest.build`, `GenerationRequest.composed`, `MapRequest.build`), from raw values: API
callers can send anything (strings for numbers, NaN, 10**6 steps), so every field is checked here,
not only by the page's slider bounds.

Each option is declared once, as a field with its `Option` (default, check, label, how the page
and the CLI show it). The page's controls, the CLI's flags, the PNG parameters and their restore all
come from these declarations, so an option is added in one place and used where it acts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from annotators import ANNOTATORS, Annotator, get_annotator
from annotators.pose_json import DRAWN_AT_ONCE, POSE_ANNOTATORS, PoseCanvas, poses_from_json
from annotators.util import (
    ASPECT_RATIOS,
    RESIZE_MODES,
    crop_to_aspect,
    fill_to,
    fitted_size,
    load_image,
    pixel_perfect_resolution,
    resize_to,
    target_size,
)
from conditions import Condition, get_condition
from errors import InvalidImageError, InvalidRequestError
from pipelines.loop.control import CONTROL_MODES, ControlMode, get_control_mode
from pipelines.loop.schedulers import SCHEDULERS, check_scheduler, start_index
from pipelines.options import (
    Option,
    choice,
    flag,
    number,
    options_of,
    recorded_value,
    text,
    whole,
)
from settings import CONTROLNET_VERSIONS, MAX_SEED, Limits, Settings

APP = "controlnet-demo"  # marks the PNG parameters as this app's
POSE_FROM_JSON = "pose_json"  # a unit's `pose_source` in the PNG: drawn from OpenPose JSON
_VERSION_LABELS = {"v1.0": "v1.0 (the paper's models)"}
# The mask: white (above this, after its blur) is repainted, black is kept.
MASK_THRESHOLD = 127
# Where the initial image came from, as the PNG records it (the images are not in the PNG).
UPLOADED = "uploaded"  # an initial image (or mask) of its own
CONTROL_IMAGE = "control_image"  # the first unit's photo
# Outpainting: the sides the canvas grows on, and how the new area is filled before it is repainted.
OUTPAINT_SIDES = ("outpaint_left", "outpaint_right", "outpaint_top", "outpaint_bottom")
OUTPAINT_FILLS = {
    "edge": "Edge pixels repeated outward",
    "blur": "Edge pixels repeated, then blurred",
}
# The Gaussian's sigma (in the image's own pixels) of the "blur" fill.
OUTPAINT_BLUR_SIGMA = 16.0


# ---- the requests --------------------------------------------------------------------------------
@dataclass(frozen=True)
class UnitRequest:
    """One ControlNet unit: its condition, annotator, image, strength, window and map settings."""

    condition: Condition
    annotator: Annotator
    image: np.ndarray = field(repr=False)  # RGB uint8 (H, W, 3), the upload
    # One option per field: its default, label, bounds and where the page shows it.
    # fmt: off
    strength: float = number(
        1.0, "Control strength", maximum="max_strength", step=0.05, group="unit"
    )
    control_start: float = number(
        0.0, "Control start", step=0.05, group="unit",
        info="Fraction of the steps before control starts.",
    )
    control_end: float = number(
        1.0, "Control end", step=0.05, group="unit",
        info="Fraction of the steps after which control stops (the ControlNet is not run).",
    )
    # None: the annotator's own default (classical annotators run at the output size).
    detect_resolution: int | None = whole(
        None, "Annotator resolution", step=64, group="map",
        minimum="min_detect_resolution", maximum="max_detect_resolution",
    )
    # On: the annotator resolution follows the output size and resize mode (AUTOMATIC1111's
    # pixel-perfect rule) instead of `detect_resolution`. Off by default: the reference apps'
    # resolutions. Recorded in the PNG only when on.
    pixel_perfect: bool = flag(
        False, "Pixel perfect (annotator resolution from the output size)", group="map",
        info="Run the annotator at the resolution the output needs (the output's size, as the "
        "resize mode fits the image into it) instead of the slider's.",
    )
    # fmt: on
    # The annotator's parameters as sent (what the PNG records), and checked with the
    # annotator's defaults filled in (what it runs with).
    given_params: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    # The pose from OpenPose JSON (`pose_json`) instead of a photo: `image` is then its map at
    # the JSON's canvas size, and no annotator runs.
    pose: PoseCanvas | None = field(default=None, repr=False)

    def detect_at(self, size: tuple[int, int], resize_mode: str) -> int | None:
        """The short side the annotator's network runs at for an output of `size` (H, W)
        fitted by `resize_mode`; None: at the output size."""
        if self.annotator.default_detect_resolution is None:
            return None
        if self.pixel_perfect:
            return pixel_perfect_resolution(*self.image.shape[:2], *size, resize_mode)
        return self.detect_resolution or self.annotator.default_detect_resolution

    @property
    def controlnet_role(self) -> str:
        return self.condition.controlnet_role_for(self.annotator.name)

    @classmethod
    def build(
        cls,
        limits: Limits,
        condition: Any,
        annotator: Any,
        image: Any,
        *,
        suffix: str = "",
        what: str = "an image",
        params: Mapping[str, Any] | None = None,
        pose_json: Any = None,
        **given: Any,
    ) -> UnitRequest:
        """One unit from raw values; `suffix` ("_2") names a composition's unit in messages.
        `pose_json` (OpenPose JSON, for a pose annotator): the map is drawn from it and `image`
        is not used."""
        chosen = get_condition(condition)
        annotator = annotator or chosen.annotators[0]
        if not isinstance(annotator, str) or annotator not in chosen.annotators:
            raise InvalidRequestError(
                f"The {chosen.label} condition has no annotator {annotator!r}; choose one "
                f"of: {', '.join(chosen.annotators)}."
            )
        values = {
            name: spec.check(given.get(name), limits, name + suffix)
            for name, spec in UNIT_OPTIONS.items()
        }
        if values["control_start"] > values["control_end"]:
            raise InvalidRequestError(
                f"`control_start{suffix}` ({values['control_start']:g}) must not be after "
                f"`control_end{suffix}` ({values['control_end']:g})."
            )
        params = dict(params or {})
        refuse_unknown_params(params, chosen.annotators)
        pose = None
        if pose_json is not None and pose_json != "":
            if annotator not in POSE_ANNOTATORS:
                raise InvalidRequestError(
                    f"`pose_json{suffix}` is for the pose annotators "
                    f"({', '.join(POSE_ANNOTATORS)}), not {annotator!r}."
                )
            pose = poses_from_json(
                pose_json, limits.max_pose_people, limits.max_aspect_ratio, f"pose_json{suffix}"
            )
            source = pose.draw(at_once=annotator in DRAWN_AT_ONCE)
        else:
            source = checked_image(limits, image, what)
        return cls(
            chosen,
            ANNOTATORS[annotator],
            source,
            given_params=params,
            params=ANNOTATORS[annotator].check_params(params),
            pose=pose,
            **values,
        )

    def parameters(self, model_id: str) -> dict[str, Any]:
        return {
            "condition": self.condition.name,
            "annotator": self.annotator.name,
            **{
                name: getattr(self, name)
                for name in UNIT_OPTIONS
                if name != "pixel_perfect" or self.pixel_perfect  # only when on
            },
            "params": dict(self.given_params),
            # Like the images, the JSON itself is not in the PNG: only where the pose came from.
            **({"pose_source": POSE_FROM_JSON} if self.pose is not None else {}),
            "model_id": model_id,
        }


@dataclass(frozen=True)
class GenerationRequest:
    """A generation: the shared options and one or more units (a composition sums their
    ControlNets' residuals)."""

    units: tuple[UnitRequest, ...]
    # One option per field: its default, label, bounds and where the page shows it.
    # fmt: off
    prompt: str = text("", "Prompt", group="prompt")
    num_images: int = whole(
        1, "Images", minimum=1, maximum="max_images", group="output", recorded=False
    )
    image_resolution: int = whole(
        512, "Image resolution (short side)", step=64, group="output",
        minimum="min_resolution", maximum="max_resolution",
        info="Sizes are rounded to multiples of 64; the aspect ratio is kept.",
    )
    aspect_ratio: str = choice(
        "image", "Aspect ratio (width:height)", widget="dropdown", group="output",
        noun="aspect ratio",  # "image": the output keeps the input image's aspect
        choices={name: "Same as the image" if name == "image" else name for name in ASPECT_RATIOS},
    )
    resize_mode: str = choice(
        "crop_and_resize", "Resize mode", widget="radio", group="output",  # A1111's default
        choices=RESIZE_MODES,
        info="When the control image's aspect differs from the output's: stretch it, crop it to "
        "cover, or fit it inside and fill the border.",
    )
    control_mode: ControlMode = choice(
        "balanced", "Control mode", widget="radio", resolve=get_control_mode,
        choices={mode.name: mode.label for mode in CONTROL_MODES.values()},
        info="Balanced adds control to both CFG branches. 'ControlNet is more important' is the "
        "paper's CFG resolution weighting: control on the prompt branch only.",
    )
    resolution_weighting: float = number(
        1.0, "Resolution weighting (gamma)", maximum="max_resolution_weighting", step=0.05,
        info="How much more the coarse layers follow the control than the fine-detail ones: "
        "0 = all alike, 1 = the paper's setting; higher keeps the layout and frees the details. "
        "Used by the two modes other than Balanced.",
    )  # gamma = 1 is the paper's w_i = 64 / h_i
    scheduler: str = choice(
        "UniPC", "Sampler", widget="dropdown", resolve=check_scheduler,
        choices={name: name for name in SCHEDULERS},
        info="LCM: 4-8 steps at guidance 1-2, with LCM-LoRA (other images, much faster).",
    )
    steps: int = whole(20, "Steps", minimum=1, maximum="max_steps")
    guidance_scale: float = number(
        9.0, "Guidance scale", minimum="min_guidance", maximum="max_guidance", step=0.1,
        slider_minimum=0.1,
    )
    # -1 draws a random seed; the one used is returned.
    seed: int = whole(
        -1, "Seed (-1 = random; image i uses seed + i)", minimum=-1, maximum=MAX_SEED,
        widget="number",
    )
    eta: float = number(0.0, "eta (DDIM)", widget="number")
    added_prompt: str = text("best quality, extremely detailed", "Added prompt")
    negative_prompt: str = text(
        "longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, "
        "cropped, worst quality, low quality",
        "Negative prompt",
    )
    clip_skip: int = whole(
        1, "CLIP skip", minimum=1, maximum=4, group="clip",
        info="Which of CLIP's last layers reads the prompt: 1 = the last (SD1.5's own); 2 suits "
        "anime base models and the anime line-art ControlNet, which were trained with it.",
    )
    base_model: str = choice(
        None, "Base model", widget="dropdown", group="model",  # None: the operator's first
        info="ControlNets transfer to community SD1.5 checkpoints (paper Fig. 12).",
    )
    controlnet_version: str = choice(
        "v1.1", "ControlNet version", widget="radio", group="model", noun="ControlNet version",
        choices={version: _VERSION_LABELS.get(version, version) for version in CONTROLNET_VERSIONS},
    )
    # Feature caching: a full UNet step every N steps (1: every step, the exact images). Beyond
    # about 5 the images drift visibly; 10 still bounds how stale the deep features get.
    cache_interval: int = whole(
        1, "Feature caching interval (DeepCache)", minimum=1, maximum=10, group="speed",
        info="1 = off, the exact images. N > 1 runs the deep UNet and ControlNet blocks only at "
        "every N-th step and reuses their features in between: faster, slightly different "
        "images.",
    )
    # Image to image and inpainting (diffusers' ControlNet img2img and inpaint pipelines). Recorded
    # in the PNG only when they acted: a text-to-image PNG stays as it was.
    denoising_strength: float = number(
        1.0, "Denoising strength", step=0.05, slider_minimum=0.05, group="image_to_image",
        info="How much of the initial image is repainted: 1 = from noise (without a mask: text to "
        "image, the initial image is not used); lower keeps more of it and runs only that share "
        "of the steps (0.5 at 20 steps: 10).",
    )
    mask_blur: int = whole(
        4, "Mask blur (pixels)", maximum=64, group="image_to_image",
        info="Inpainting: how far the mask's edge is blurred, so the repainted area blends into "
        "the kept one.",
    )
    keep_unmasked: bool = flag(
        True, "Only the masked area changes", group="image_to_image",
        info="Inpainting: paste the original pixels back outside the mask, blended across its "
        "blurred edge. Off: the whole image comes from the latents, so the kept area changes a "
        "little too.",
    )
    outpaint_left: int = whole(
        0, "Outpaint left (pixels)", maximum="max_outpaint", step=8, group="image_to_image",
        info="Outpainting: extend the canvas by this many of the image's own pixels on the left. "
        "The new area is repainted (with a painted mask, both are); a denoising strength of 1 "
        "is best, as the new area is filled from noise.",
    )
    outpaint_right: int = whole(
        0, "Outpaint right (pixels)", maximum="max_outpaint", step=8, group="image_to_image",
        info="Outpainting: extend the canvas on the right.",
    )
    outpaint_top: int = whole(
        0, "Outpaint top (pixels)", maximum="max_outpaint", step=8, group="image_to_image",
        info="Outpainting: extend the canvas at the top.",
    )
    outpaint_bottom: int = whole(
        0, "Outpaint bottom (pixels)", maximum="max_outpaint", step=8, group="image_to_image",
        info="Outpainting: extend the canvas at the bottom.",
    )
    outpaint_fill: str = choice(
        "edge", "Outpaint fill", widget="radio", group="image_to_image", noun="outpaint fill",
        choices=OUTPAINT_FILLS,
        info="What the new area holds before it is repainted (what the control maps see there): "
        "the edge pixels repeated, or repeated and blurred.",
    )
    # fmt: on
    # The initial image at the output size (RGB uint8), when one is used: denoising strength
    # below 1, or a mask. None: text to image, from noise.
    start_image: np.ndarray | None = field(default=None, repr=False)
    # The mask at the output size, blurred (uint8 (H, W): above MASK_THRESHOLD is repainted).
    mask: np.ndarray | None = field(default=None, repr=False)
    init_image_source: str | None = None  # UPLOADED or CONTROL_IMAGE, when one is used
    mask_source: str | None = None  # UPLOADED: a painted mask (None: none, or outpainting's own)

    @property
    def repainted(self) -> np.ndarray | None:
        """The pixels the mask repaints, (H, W) bool at the output size; None without a mask."""
        return None if self.mask is None else self.mask > MASK_THRESHOLD

    @property
    def outpainted(self) -> bool:
        """Whether the canvas was extended (any outpaint side above 0)."""
        return any(getattr(self, name) > 0 for name in OUTPAINT_SIDES)

    @property
    def start_index(self) -> int:
        """Where the run starts in the sampler's schedule (0: from its first step)."""
        if self.start_image is None:
            return 0
        return start_index(self.steps, self.denoising_strength)

    @property
    def steps_run(self) -> int:
        """The steps the run takes: `steps`, or its last share at a denoising strength below 1."""
        return self.steps - self.start_index

    @property
    def full_prompt(self) -> str:
        """The prompt with the added prompt, as the reference joins them (`prompt, added`)."""
        return ", ".join(part for part in (self.prompt, self.added_prompt) if part)

    @property
    def use_cfg(self) -> bool:
        return self.guidance_scale > 1.0  # at <= 1, CFG adds nothing but cost

    @property
    def size(self) -> tuple[int, int]:
        """The output (H, W), set by the first unit's image."""
        image = self.units[0].image
        return target_size(image.shape[0], image.shape[1], self.image_resolution, self.aspect_ratio)

    # -- constructors (the page, the API and the CLI use these) --
    @classmethod
    def build(
        cls,
        settings: Settings,
        condition: Any,
        image: Any,
        prompt: Any = "",
        *,
        annotator: Any = None,
        init_image: Any = None,
        mask: Any = None,
        pose_json: Any = None,
        **given: Any,
    ) -> GenerationRequest:
        """One condition: its annotator's map steers one ControlNet. Unit options (strength,
        window, detect resolution) and the annotator's parameters come with the shared ones.

        `init_image`: where image to image starts (None: the photo itself); `mask`: inpainting,
        white = repaint, black = keep, the initial image's size."""
        unit_values = {name: given.pop(name) for name in list(given) if name in UNIT_OPTIONS}
        shared = {name: given.pop(name) for name in list(given) if name in SHARED_OPTIONS}
        chosen = get_condition(condition)
        refuse_unknown_params(given, chosen.annotators)
        given_shared = {name: value for name, value in shared.items() if value is not None}
        values = cls._shared_values(
            settings, prompt=prompt, **{**chosen.option_defaults, **given_shared}
        )
        unit = UnitRequest.build(
            settings.limits,
            chosen.name,
            annotator,
            image,
            params=given,
            pose_json=pose_json,
            **unit_values,
        )
        units, init_image, mask, painted = _outpaint(
            settings.limits, values, (unit,), init_image, mask
        )
        values.update(
            _image_inputs(settings.limits, values, units[0].image, init_image, mask, painted)
        )
        _require_mask(units, values)
        return cls(units, **values)

    @classmethod
    def composed(
        cls,
        settings: Settings,
        units: Sequence[Mapping[str, Any]],
        prompt: Any = "",
        *,
        init_image: Any = None,
        mask: Any = None,
        **given: Any,
    ) -> GenerationRequest:
        """Several conditions at once (paper Fig. 6). Each unit is a mapping with keys from
        `UNIT_KEYS`; a unit without an image of its own uses the first unit's image, a unit with
        `enabled` False is left out. `init_image` and `mask` as in `build` (the initial image
        defaults to the first running unit's image, which sets the output size)."""
        limits = settings.limits
        unknown = sorted(set(given) - set(SHARED_OPTIONS))
        if unknown:
            raise InvalidRequestError(
                f"Unknown parameter(s): {', '.join(unknown)}. In a composition each unit takes "
                "its annotator's parameters in its `params`."
            )
        values = cls._shared_values(settings, prompt=prompt, **given)
        if not isinstance(units, Sequence) or not 1 <= len(units) <= limits.max_units:
            raise InvalidRequestError(f"Give between 1 and {limits.max_units} control units.")
        shared_image = units[0].get("image") if isinstance(units[0], Mapping) else None
        built = [
            unit
            for number, raw in enumerate(units, start=1)
            if (unit := _composed_unit(limits, number, raw, shared_image)) is not None
        ]
        if not built:
            raise InvalidRequestError("Every control unit is switched off: switch one on.")
        units, init_image, mask, painted = _outpaint(limits, values, built, init_image, mask)
        values.update(_image_inputs(limits, values, units[0].image, init_image, mask, painted))
        _require_mask(units, values)
        return cls(units, **values)

    @classmethod
    def _shared_values(cls, settings: Settings, **given: Any) -> dict[str, Any]:
        """Every shared option checked; missing ones (None) take this server's defaults."""
        given = {
            **settings.default_overrides,
            **{name: value for name, value in given.items() if value is not None},
        }
        values = {
            name: spec.check(given.get(name), settings.limits)
            for name, spec in SHARED_OPTIONS.items()
            if name != "base_model"
        }
        values["base_model"] = check_base_model(settings, given.get("base_model"))
        return values

    # -- its PNG parameters, and back --
    def parameters(
        self, model_ids: Sequence[str], base_model_id: str, lora_id: str | None
    ) -> dict[str, Any]:
        """Everything needed to make the images again but each one's seed (it goes into the
        PNG's text chunk)."""
        height, width = self.size
        recorded = {
            name: recorded_value(getattr(self, name))
            for name, spec in SHARED_OPTIONS.items()
            if spec.recorded and self._acted(name)
        }
        image_inputs = {}
        if self.start_image is not None:  # the images themselves are not in the PNG
            image_inputs = {
                "init_image_source": self.init_image_source,
                "steps_run": self.steps_run,
            }
            if self.mask_source is not None:
                image_inputs["mask_source"] = self.mask_source
        return {
            "app": APP,
            **recorded,
            **image_inputs,
            "width": width,
            "height": height,
            "base_model_id": base_model_id,
            "lora_id": lora_id,  # the LoRA merged into the UNet (the LCM sampler's), if any
            "units": [
                unit.parameters(model_id)
                for unit, model_id in zip(self.units, model_ids, strict=True)
            ],
        }

    def _acted(self, name: str) -> bool:
        """Whether option `name` took part: the image-to-image ones only with an initial image,
        the mask's only with a mask."""
        if name == "denoising_strength":
            return self.start_image is not None
        if name in ("mask_blur", "keep_unmasked"):
            return self.mask is not None
        if name in (*OUTPAINT_SIDES, "outpaint_fill"):
            return self.outpainted
        if name in RECORDED_WHEN_NOT_DEFAULT:
            return getattr(self, name) != SHARED_OPTIONS[name].default
        return True


def recorded_values(parameters: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The mirror of `GenerationRequest.parameters`: the shared options and each unit's values
    (condition, annotator, options, params) as `build` / `composed` take them. Keys missing
    from the file (older versions) are left out."""
    shared = {
        name: parameters[name]
        for name, spec in SHARED_OPTIONS.items()
        if spec.recorded and name in parameters
    }
    for name in RECORDED_WHEN_NOT_DEFAULT:  # absent: it was its default
        shared.setdefault(name, SHARED_OPTIONS[name].default)
    units = parameters.get("units")
    unit_values = []
    for unit in units if isinstance(units, list) else []:
        if not isinstance(unit, Mapping):
            unit_values.append(None)
            continue
        values = {key: unit[key] for key in ("condition", "annotator") if key in unit}
        values.update({key: unit[key] for key in UNIT_OPTIONS if unit.get(key) is not None})
        if isinstance(unit.get("params"), Mapping):
            values["params"] = dict(unit["params"])
        unit_values.append(values)
    return shared, unit_values


@dataclass(frozen=True)
class MapRequest:
    """A control map alone: one annotator on one image, at the output size."""

    unit: UnitRequest
    image_resolution: int
    aspect_ratio: str
    resize_mode: str

    @property
    def size(self) -> tuple[int, int]:
        image = self.unit.image
        return target_size(image.shape[0], image.shape[1], self.image_resolution, self.aspect_ratio)

    @classmethod
    def build(
        cls,
        settings: Settings,
        image: Any,
        annotator: Any,
        image_resolution: Any = None,
        detect_resolution: Any = None,
        aspect_ratio: Any = None,
        resize_mode: Any = None,
        pixel_perfect: Any = None,
        **params: Any,
    ) -> MapRequest:
        chosen = get_annotator(annotator)
        refuse_unknown_params(params, ANNOTATORS)
        limits = settings.limits
        geometry = {
            name: SHARED_OPTIONS[name].check(value, limits)
            for name, value in (
                ("image_resolution", image_resolution),
                ("aspect_ratio", aspect_ratio),
                ("resize_mode", resize_mode),
            )
        }
        detect = UNIT_OPTIONS["detect_resolution"].check(detect_resolution, limits)
        perfect = UNIT_OPTIONS["pixel_perfect"].check(pixel_perfect, limits)
        source = checked_image(limits, image)
        unit = UnitRequest(
            _ANY_CONDITION,
            chosen,
            source,
            detect_resolution=detect,
            pixel_perfect=perfect,
            given_params=params,
            params=chosen.check_params(params),
        )
        return cls(unit, **geometry)


# ---- shared checks -------------------------------------------------------------------------------
def check_base_model(settings: Settings, name: Any) -> str:
    """`name` checked against the operator's list (None or "": the first); never a path or id."""
    names = list(settings.base_models)
    if name is None or name == "":
        return names[0]
    if not isinstance(name, str) or name not in settings.base_models:
        raise InvalidRequestError(
            f"Unknown base model {name!r}; choose one of: {', '.join(names)}. Only the "
            "models the operator listed can be used."
        )
    return name


def checked_image(limits: Limits, source: Any, what: str = "an image") -> np.ndarray:
    """The upload as RGB uint8 (H, W, 3), within the size and aspect limits."""
    if source is None:
        raise InvalidRequestError(f"No image given: upload {what} (or draw one).")
    image = load_image(
        source, max_bytes=limits.max_upload_bytes, max_pixels=limits.max_upload_pixels
    )
    height, width = image.shape[:2]
    if max(height, width) / min(height, width) > limits.max_aspect_ratio:
        raise InvalidImageError(
            f"The image is {width}x{height}; its aspect ratio is over "
            f"{limits.max_aspect_ratio:g}:1. Crop it first."
        )
    return image


def fitted_to(image: np.ndarray, size: tuple[int, int], resize_mode: str) -> np.ndarray:
    """`image` (RGB uint8) at the output `size`, fitted as the control maps are (`resize_mode`:
    stretched, centre-cropped to the output's aspect, or fitted inside a border-coloured canvas),
    so an initial image, its mask and the first unit's map line up pixel for pixel."""
    height, width = size
    if resize_mode == "resize_and_fill":
        inner = resize_to(image, *fitted_size(image.shape[0], image.shape[1], height, width))
        return fill_to(inner, height, width)
    if resize_mode == "crop_and_resize":
        image = crop_to_aspect(image, height, width)
    return resize_to(image, height, width)


def mask_at(mask: np.ndarray, size: tuple[int, int], resize_mode: str, blur: int) -> np.ndarray:
    """The mask (RGB uint8 upload) at the output size as grey levels (H, W) uint8, fitted like the
    image, then blurred as AUTOMATIC1111 does (a Gaussian of sigma `blur` pixels, kernel
    2 * int(2.5 * blur + 0.5) + 1). Above MASK_THRESHOLD is repainted."""
    import cv2
    from PIL import Image

    grey = np.asarray(Image.fromarray(fitted_to(mask, size, resize_mode)).convert("L"))
    if blur > 0:
        kernel = 2 * int(2.5 * blur + 0.5) + 1
        grey = cv2.GaussianBlur(grey, (kernel, kernel), blur)
    return np.ascontiguousarray(grey)


def _image_inputs(
    limits: Limits,
    values: Mapping[str, Any],
    photo: np.ndarray,
    init_image: Any,
    mask: Any,
    painted: bool = True,
) -> dict[str, Any]:
    """The initial image and the mask at the output size (which the first unit's `photo` sets),
    checked; nothing for text to image (denoising strength 1 and no mask: an initial image given
    then is not used)."""
    strength = values["denoising_strength"]
    if strength == 0:
        raise InvalidRequestError(
            "`denoising_strength` must be above 0: at 0 no step runs and the initial image "
            "comes back unchanged."
        )
    initial, source = photo, CONTROL_IMAGE
    if init_image is not None:
        initial, source = checked_image(limits, init_image, "an initial image"), UPLOADED
    drawn = None if mask is None else checked_image(limits, mask, "a mask")
    if strength == 1 and drawn is None:
        return {}
    steps = values["steps"]
    if start_index(steps, strength) == steps:
        raise InvalidRequestError(
            f"A denoising strength of {strength:g} at {steps} steps runs no step "
            f"(int({steps} x {strength:g}) = 0): raise it to at least {1 / steps:.2g}, or use "
            "more steps."
        )
    height, width = photo.shape[:2]
    size = target_size(height, width, values["image_resolution"], values["aspect_ratio"])
    image_inputs = {
        "start_image": fitted_to(initial, size, values["resize_mode"]),
        "init_image_source": source,
    }
    if drawn is not None:
        if drawn.shape[:2] != initial.shape[:2]:
            what = "initial image" if source == UPLOADED else "image"
            raise InvalidImageError(
                f"The mask is {drawn.shape[1]}x{drawn.shape[0]} pixels but the {what} is "
                f"{initial.shape[1]}x{initial.shape[0]}: give a mask of the {what}'s size "
                "(white = repaint, black = keep)."
            )
        prepared = mask_at(drawn, size, values["resize_mode"], values["mask_blur"])
        if not (prepared > MASK_THRESHOLD).any():
            raise InvalidRequestError(
                "The mask marks nothing to repaint: no pixel of it is white (above mid-grey, "
                "after its blur). Paint over the area to change (in a mask file: white repaints, "
                "black keeps)."
            )
        image_inputs["mask"] = prepared
        image_inputs["mask_source"] = UPLOADED if painted else None
    return image_inputs


def outpaint_sides(values: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right): how many pixels the canvas grows by on each side."""
    return (
        values["outpaint_top"],
        values["outpaint_bottom"],
        values["outpaint_left"],
        values["outpaint_right"],
    )


def extend_canvas(image: np.ndarray, sides: tuple[int, int, int, int], fill: str) -> np.ndarray:
    """`image` (H, W, 3) or (H, W) uint8 with `sides` (top, bottom, left, right) pixels more: the
    edge pixels repeated outward ("edge"), or repeated and then blurred by a Gaussian of sigma
    OUTPAINT_BLUR_SIGMA in the new area only ("blur"; the image's own pixels stay as they are)."""
    import cv2

    top, bottom, left, right = sides
    widths = ((top, bottom), (left, right)) + ((0, 0),) * (image.ndim - 2)
    extended = np.pad(np.asarray(image, np.uint8), widths, mode="edge")
    if fill == "blur" and any(sides):
        blurred = cv2.GaussianBlur(
            extended, (0, 0), OUTPAINT_BLUR_SIGMA, borderType=cv2.BORDER_REPLICATE
        )
        new = outpaint_area(image.shape[:2], sides)
        extended[new] = blurred.reshape(extended.shape)[new]
    return np.ascontiguousarray(extended)


def outpaint_area(size: tuple[int, int], sides: tuple[int, int, int, int]) -> np.ndarray:
    """The new pixels of a (height, width) image extended by `sides`: (H', W') bool."""
    top, bottom, left, right = sides
    height, width = size
    new = np.ones((height + top + bottom, width + left + right), bool)
    new[top : top + height, left : left + width] = False
    return new


def _scaled_sides(
    sides: tuple[int, int, int, int], size: tuple[int, int], reference: tuple[int, int]
) -> tuple[int, int, int, int]:
    """`sides` given in pixels of an image of `reference` size, for one of `size`."""
    top, bottom, left, right = sides
    (height, width), (ref_height, ref_width) = size, reference
    if (height, width) == (ref_height, ref_width):
        return sides
    return (
        round(top * height / ref_height),
        round(bottom * height / ref_height),
        round(left * width / ref_width),
        round(right * width / ref_width),
    )


def _outpaint(
    limits: Limits,
    values: Mapping[str, Any],
    units: Sequence[UnitRequest],
    init_image: Any,
    mask: Any,
) -> tuple[tuple[UnitRequest, ...], Any, Any, bool]:
    """Outpainting: the initial image (the uploaded one, or the first unit's photo) extended by
    the outpaint sides, the new area white in the mask (on top of a painted mask, if any), and
    every unit's image extended the same way (in proportion, where its size differs). Returns
    the units, the initial image, the mask, and whether a mask was painted; unchanged without
    outpainting."""
    from dataclasses import replace as replaced

    from PIL import Image

    units = tuple(units)
    sides = outpaint_sides(values)
    if not any(sides):
        return units, init_image, mask, True
    fill = values["outpaint_fill"]
    initial = units[0].image
    if init_image is not None:
        initial = checked_image(limits, init_image, "an initial image")
    drawn = None if mask is None else checked_image(limits, mask, "a mask")
    if drawn is not None and drawn.shape[:2] != initial.shape[:2]:
        what = "initial image" if init_image is not None else "image"
        raise InvalidImageError(
            f"The mask is {drawn.shape[1]}x{drawn.shape[0]} pixels but the {what} is "
            f"{initial.shape[1]}x{initial.shape[0]}: give a mask of the {what}'s size "
            "(white = repaint, black = keep); outpainting extends both."
        )
    height, width = initial.shape[:2]
    top, bottom, left, right = sides
    new_height, new_width = height + top + bottom, width + left + right
    if max(new_height, new_width) / min(new_height, new_width) > limits.max_aspect_ratio:
        raise InvalidRequestError(
            f"Outpainted, the {width}x{height} image would be {new_width}x{new_height}: its "
            f"aspect ratio is over {limits.max_aspect_ratio:g}:1. Extend it less, or on the "
            "other sides too."
        )
    out_height, out_width = target_size(
        new_height, new_width, values["image_resolution"], values["aspect_ratio"]
    )
    if out_height * out_width > limits.max_outpaint_pixels:
        raise InvalidRequestError(
            f"Outpainted, the image would be generated at {out_width}x{out_height} "
            f"({out_height * out_width:,} pixels), over this server's limit of "
            f"{limits.max_outpaint_pixels:,}: extend it less, or lower the image resolution."
        )
    if new_height * new_width > limits.max_upload_pixels:
        raise InvalidRequestError(
            f"Outpainted, the image would be {new_width}x{new_height}, over the "
            f"{limits.max_upload_pixels:,} pixels an image may have: extend it less."
        )
    grey = np.zeros((height, width), np.uint8)
    if drawn is not None:
        grey = np.asarray(Image.fromarray(drawn).convert("L"))
    new_mask = extend_canvas(grey, sides, "edge")
    new_mask[outpaint_area((height, width), sides)] = 255
    extended_units = tuple(
        replaced(
            unit,
            image=extend_canvas(
                unit.image, _scaled_sides(sides, unit.image.shape[:2], (height, width)), fill
            ),
        )
        for unit in units
    )
    if init_image is not None:
        init_image = extend_canvas(initial, sides, fill)
    return extended_units, init_image, new_mask, drawn is not None


def _require_mask(units: Sequence[UnitRequest], values: Mapping[str, Any]) -> None:
    """A unit on the inpaint ControlNet (`MASKED_IMAGE_ROLES`) needs a mask: without one its
    control image would be the photo with nothing to repaint."""
    from pipelines.loop.img2img import MASKED_IMAGE_ROLES

    if values.get("mask") is not None:
        return
    for unit in units:
        if unit.controlnet_role in MASKED_IMAGE_ROLES:
            raise InvalidRequestError(
                f"{unit.condition.label} needs a mask: paint over the area to repaint in the "
                "image under Start from an image (API: `mask`, white = repaint, the image's "
                "size), or extend the canvas with an outpaint side there."
            )


def refuse_unknown_params(params: Mapping[str, Any], annotator_names) -> None:
    known = {param.name for name in annotator_names for param in ANNOTATORS[name].params}
    unknown = sorted(set(params) - known)
    if unknown:
        raise InvalidRequestError(
            f"Unknown parameter(s): {', '.join(unknown)}. "
            f"Annotator parameters here: {', '.join(sorted(known)) or 'none'}."
        )


def _composed_unit(limits: Limits, number: int, raw: Any, shared_image: Any) -> UnitRequest | None:
    if not isinstance(raw, Mapping):
        raise InvalidRequestError(f"Control unit {number} must be a mapping of options.")
    unknown = sorted(set(raw) - set(UNIT_KEYS))
    if unknown:
        raise InvalidRequestError(
            f"Control unit {number}: unknown key(s) {', '.join(map(str, unknown))}; "
            f"use: {', '.join(UNIT_KEYS)}."
        )
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InvalidRequestError(f"`enabled_{number}` must be true or false.")
    if not enabled:
        return None
    params = raw.get("params") or {}
    if not isinstance(params, Mapping):
        raise InvalidRequestError(f"Control unit {number}: `params` must be a mapping.")
    image = raw.get("image")
    return UnitRequest.build(
        limits,
        raw.get("condition"),
        raw.get("annotator"),
        image if image is not None else shared_image,
        suffix=f"_{number}",
        what=f"an image for control unit {number} (or one for unit 1, which it then shares)",
        params=params,
        pose_json=raw.get("pose_json"),
        **{name: raw.get(name) for name in UNIT_OPTIONS},
    )


UNIT_OPTIONS: dict[str, Option] = options_of(UnitRequest)
SHARED_OPTIONS: dict[str, Option] = options_of(GenerationRequest)
# Options the PNG records only where they are not their default (A1111's "Clip skip" too).
RECORDED_WHEN_NOT_DEFAULT = ("clip_skip",)
# What a composition's unit mapping may hold.
UNIT_KEYS = ("image", "enabled", "condition", "annotator", *UNIT_OPTIONS, "params", "pose_json")
# A control map alone belongs to no condition.
_ANY_CONDITION = Condition("annotate", "Control map", "", tuple(ANNOTATORS))


def defaults(settings: Settings) -> dict[str, Any]:
    """Every option's default on this server (the operator's overrides applied), by keyword."""
    values = {name: spec.default for name, spec in {**SHARED_OPTIONS, **UNIT_OPTIONS}.items()}
    values.update(settings.default_overrides)
    values["base_model"] = next(iter(settings.base_models))
    return values
