"""Request options as data: each is declared once, as a dataclass field holding its `Option`
(default, check, label, how the page and the CLI show it), and the value checks they run.

API callers can send anything (strings for numbers, NaN, 10**6 steps): the checks say what is
allowed, naming the API keyword.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from errors import InvalidRequestError
from settings import Limits


# ---- value checks --------------------------------------------------------------------------------
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


_FLAG_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _flag(name: str, value: Any) -> bool:
    """A switch: true or false (1 / 0, and the words the CLI and forms send, are taken too)."""
    if isinstance(value, str) and value.strip().lower() in _FLAG_WORDS:
        return _FLAG_WORDS[value.strip().lower()]
    if isinstance(value, bool) or (isinstance(value, int | float) and value in (0, 1)):
        return bool(value)
    raise InvalidRequestError(f"`{name}` must be true or false, got {value!r}.")


def check_text(name: str, value: Any, max_chars: int) -> str:
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


# ---- options as data -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """One request option: its check, and how the page and the CLI show it.

    `kind`: "number", "whole", "choice" (one of `choices`, value -> label), "text" or "flag" (true
    or false; its widget is "checkbox"). Bounds are numbers or the names of `Limits` fields
    (operator limits). `resolve` turns a checked choice into the object the engine uses. `group`
    says where the page puts the control (and so where its API keyword goes): "output", "unit",
    "sampling", "model", "speed", "image_to_image", "clip" (CLIP skip: its API keyword after all the
    others) or "upscale" (the upscale's own). `recorded`: written into the PNG parameters
    and restored from them.
    """

    kind: str
    label: str
    minimum: float | str = 0.0
    maximum: float | str = 1.0
    choices: Mapping[str, str] | None = None
    resolve: Callable[[str], Any] | None = None
    widget: str = "slider"  # slider | number | dropdown | radio | text | checkbox
    step: float = 1.0
    slider_minimum: float | None = None  # where the page's slider starts, if not at `minimum`
    info: str = ""
    group: str = "sampling"
    recorded: bool = True
    noun: str = ""  # what an unknown choice is called in messages (default: the label)
    name: str = ""  # filled in from the field
    default: Any = None  # filled in from the field

    def bounds(self, limits: Limits) -> tuple[float, float]:
        def bound(value):
            return getattr(limits, value) if isinstance(value, str) else value

        return bound(self.minimum), bound(self.maximum)

    def check(self, value: Any, limits: Limits, name: str | None = None) -> Any:
        """`value` checked (None: the default); `name`: the API keyword to name in a message."""
        name = name or self.name
        if value is None:
            value = self.default
            if value is None:
                return None
        if self.kind == "text":
            return check_text(name, value, limits.max_prompt_chars)
        if self.kind == "flag":
            return _flag(name, value)
        if self.kind == "choice":
            if self.resolve is not None:
                return self.resolve(value)
            if not isinstance(value, str) or value not in self.choices:
                raise InvalidRequestError(
                    f"Unknown {self.noun or self.label.lower()} {value!r}; choose one of: "
                    f"{', '.join(self.choices)}."
                )
            return value
        minimum, maximum = self.bounds(limits)
        if self.kind == "whole":
            return _whole(name, value, int(minimum), int(maximum))
        return _number(name, value, minimum, maximum)


def option(default: Any, **spec: Any) -> Any:
    """A dataclass field holding an option: its default and its `Option`."""
    return field(default=default, metadata={"option": Option(**spec)})


def number(default: Any, label: str, **spec: Any) -> Any:
    return option(default, kind="number", label=label, **spec)


def whole(default: Any, label: str, **spec: Any) -> Any:
    return option(default, kind="whole", label=label, **spec)


def choice(default: Any, label: str, **spec: Any) -> Any:
    return option(default, kind="choice", label=label, **spec)


def text(default: str, label: str, **spec: Any) -> Any:
    return option(default, kind="text", label=label, widget="text", **spec)


def flag(default: bool, label: str, **spec: Any) -> Any:
    return option(default, kind="flag", label=label, widget="checkbox", **spec)


def options_of(cls) -> dict[str, Option]:
    """The options a request class declares, by API keyword, in declaration order."""
    return {
        item.name: replace(item.metadata["option"], name=item.name, default=item.default)
        for item in fields(cls)
        if "option" in item.metadata
    }


def recorded_value(value: Any) -> Any:
    """What the PNG parameters record for a checked value: an object's name."""
    return getattr(value, "name", value)
