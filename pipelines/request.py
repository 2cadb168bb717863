"""A generation request, checked against the limits in settings before any work starts.

API callers can send anything (strings for numbers, NaN, 10**6 steps): every field is checked here,
in the engine, not only by the UI's slider bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from annotators.util import ASPECT_RATIOS, RESIZE_MODES
from errors import InvalidRequestError
from pipelines.loop.control import get_control_mode
from pipelines.loop.schedulers import check_scheduler
from settings import CONTROLNET_VERSIONS, MAX_SEED, Defaults, Limits


def _number(name: str, value: Any, minimum: float, maximum: float) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise InvalidRequestError(f"`{name}` must be a number, got {value!r}.") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(f"`{name}` must be a number, got {type(value).__name__}.")
    if not math.isfinite(value) or not minimum <= value <= maximum:
        raise InvalidRequestError(
            f"`{name}` must be between {minimum:g} and {maximum:g}, got {value!r}."
        )
    return float(value)


def _whole(name: str, value: Any, minimum: int, maximum: int) -> int:
    number = _number(name, value, minimum, maximum)
    if not number.is_integer():
        raise InvalidRequestError(f"`{name}` must be a whole number, got {value!r}.")
    return int(number)


def _choice(name: str, value: Any, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidRequestError(f"Unknown {name} {value!r}; choose one of: {', '.join(choices)}.")
    return value


def _window(start: Any, end: Any, suffix: str = "") -> tuple[float, float]:
    """The control window as fractions of the steps: 0 <= start <= end <= 1."""
    start = _number(f"control_start{suffix}", start, 0.0, 1.0)
    end = _number(f"control_end{suffix}", end, 0.0, 1.0)
    if start > end:
        raise InvalidRequestError(
            f"`control_start{suffix}` ({start:g}) must not be after `control_end{suffix}` "
            f"({end:g})."
        )
    return start, end


def _text(name: str, value: Any, max_chars: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequestError(f"`{name}` must be text, got {type(value).__name__}.")
    if len(value) > max_chars:
        raise InvalidRequestError(
            f"`{name}` is {len(value)} characters long; the limit is {max_chars}."
        )
    # Control characters (other than whitespace) confuse the tokenizer and logs: drop them.
    return "".join(ch for ch in value if ch.isprintable() or ch in "\n\t").strip()


@dataclass(frozen=True)
class GenerationOptions:
    """Everything about a generation except the condition, the image and the annotator."""

    prompt: str = ""
    num_images: int = 1
    image_resolution: int = 512
    detect_resolution: int | None = None  # None: the chosen annotator's own default
    strength: float = 1.0
    control_mode: str = "balanced"
    resolution_weighting: float = 1.0
    scheduler: str = "UniPC"
    steps: int = 20
    guidance_scale: float = 9.0
    seed: int = -1
    eta: float = 0.0
    control_start: float = 0.0
    control_end: float = 1.0
    aspect_ratio: str = "image"
    resize_mode: str = "crop_and_resize"
    base_model: str | None = None  # a name from Settings.base_models; None: the first
    controlnet_version: str = "v1.1"
    added_prompt: str = ""
    negative_prompt: str = ""
    cache_interval: int = 1  # feature caching: a full UNet step every N steps (1: every step)
    annotator_params: dict[str, Any] = field(default_factory=dict)

    @property
    def full_prompt(self) -> str:
        """The prompt with the added prompt, as the reference joins them (`prompt, added`)."""
        return ", ".join(part for part in (self.prompt, self.added_prompt) if part)

    @classmethod
    def checked(cls, limits: Limits, defaults: Defaults, **given: Any) -> GenerationOptions:
        """Options from raw values (API or UI); missing ones take the defaults; all checked."""
        known = {name for name in cls.__dataclass_fields__ if name != "annotator_params"}
        values = {name: given.pop(name) for name in list(given) if name in known}

        def get(name: str) -> Any:
            value = values.get(name)
            return getattr(defaults, name) if value is None else value

        control_start, control_end = _window(get("control_start"), get("control_end"))
        base_model = values.get("base_model")
        if base_model is not None and not isinstance(base_model, str):
            raise InvalidRequestError(f"`base_model` must be a name, got {base_model!r}.")
        return cls(
            prompt=_text("prompt", values.get("prompt"), limits.max_prompt_chars),
            num_images=_whole("num_images", get("num_images"), 1, limits.max_images),
            image_resolution=_whole(
                "image_resolution",
                get("image_resolution"),
                limits.min_resolution,
                limits.max_resolution,
            ),
            detect_resolution=None
            if values.get("detect_resolution") is None
            else _whole(
                "detect_resolution",
                values["detect_resolution"],
                limits.min_detect_resolution,
                limits.max_detect_resolution,
            ),
            strength=_number("strength", get("strength"), 0.0, limits.max_strength),
            control_mode=get_control_mode(get("control_mode")).name,
            resolution_weighting=_number(
                "resolution_weighting",
                get("resolution_weighting"),
                0.0,
                limits.max_resolution_weighting,
            ),
            scheduler=check_scheduler(get("scheduler")),
            steps=_whole("steps", get("steps"), 1, limits.max_steps),
            guidance_scale=_number(
                "guidance_scale", get("guidance_scale"), limits.min_guidance, limits.max_guidance
            ),
            seed=_whole("seed", get("seed"), -1, MAX_SEED),
            eta=_number("eta", get("eta"), 0.0, 1.0),
            control_start=control_start,
            control_end=control_end,
            aspect_ratio=_choice("aspect ratio", get("aspect_ratio"), ASPECT_RATIOS),
            resize_mode=_choice("resize mode", get("resize_mode"), RESIZE_MODES),
            base_model=base_model or None,
            controlnet_version=_choice(
                "ControlNet version", get("controlnet_version"), CONTROLNET_VERSIONS
            ),
            added_prompt=_text("added_prompt", get("added_prompt"), limits.max_prompt_chars),
            negative_prompt=_text(
                "negative_prompt", get("negative_prompt"), limits.max_prompt_chars
            ),
            cache_interval=_whole(
                "cache_interval", get("cache_interval"), 1, limits.max_cache_interval
            ),
            annotator_params=given,
        )


@dataclass(frozen=True)
class UnitOptions:
    """One ControlNet of a composed generation: its strength and control window."""

    strength: float = 1.0
    control_start: float = 0.0
    control_end: float = 1.0

    @classmethod
    def checked(cls, limits: Limits, number: int, strength, start, end) -> UnitOptions:
        suffix = f"_{number}"
        start, end = _window(0.0 if start is None else start, 1.0 if end is None else end, suffix)
        strength = 1.0 if strength is None else strength
        return cls(_number(f"strength{suffix}", strength, 0.0, limits.max_strength), start, end)
