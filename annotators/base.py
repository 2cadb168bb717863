"""The one annotator contract: an image in, a control map out, parameters described as data.

An `Annotator` is a description (name, label, parameters, detect resolution) plus `load(context)`,
which returns a *detector*: a callable taking RGB uint8 (H, W, 3) and the parameters, returning a
map as uint8 (H, W) or (H, W, 3). Classical annotators return their own `detect`; annotators with
weights load them in `load` (lazily, on first use, never at import) from `context`, and the engine
keeps the detectors in a bounded cache, so registry entries hold no state. Parameters are `Param`s:
the UI builds their controls, the API names them and the engine checks their ranges from them.
"""

from __future__ import annotations

import math
from abc import ABC
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from annotators.util import resize_to
from errors import InvalidRequestError

Detector = Callable[..., np.ndarray]


@dataclass(frozen=True)
class LoadContext:
    """Where an annotator finds its weights and where it runs (the engine's settings)."""

    models_dir: Path
    model_ids: Mapping[str, str]
    device: str = "cpu"


@dataclass(frozen=True)
class Param:
    """An annotator parameter: its API name, UI label, reference default and range.

    Numbers have a range and a step; a flag (`Param.flag`) is an on/off switch.
    """

    name: str
    label: str
    default: float | bool
    minimum: float = 0.0
    maximum: float = 1.0
    step: float = 1.0
    info: str = ""
    is_flag: bool = False

    @classmethod
    def flag(cls, name: str, label: str, default: bool, info: str = "") -> Param:
        return cls(name, label, default, info=info, is_flag=True)

    @property
    def is_integer(self) -> bool:
        return float(self.step).is_integer() and float(self.default).is_integer()

    def check(self, value: Any) -> float | int | bool:
        """The value as bool, int or float, or an InvalidRequestError that says what is allowed."""
        if self.is_flag:
            if isinstance(value, bool) or value in (0, 1):
                return bool(value)
            raise InvalidRequestError(f"`{self.name}` must be true or false, got {value!r}.")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidRequestError(
                f"`{self.name}` must be a number between {self.minimum:g} and {self.maximum:g}, "
                f"got {value!r}."
            )
        if not math.isfinite(value) or not self.minimum <= value <= self.maximum:
            raise InvalidRequestError(
                f"`{self.name}` must be between {self.minimum:g} and {self.maximum:g}, "
                f"got {value!r}."
            )
        return int(round(value)) if self.is_integer else float(value)


class Annotator(ABC):
    """Turns a photo into the control map a ControlNet was trained on."""

    name: str  # registry key and API value
    label: str  # shown in the UI
    params: tuple[Param, ...] = ()
    # None: runs on the image already resized to the output size (Canny, scribble, as the
    # reference does). Else the detector runs at this short side and its map is resized after.
    default_detect_resolution: int | None = None
    # How a map made at the detect resolution is brought to the output size (`fit_map`).
    map_interpolation: int = cv2.INTER_LINEAR
    # True: the detector sees the image at its own size (after crop_and_resize's crop), not
    # resized to the output first, and `fit_map` brings its map to the output size. Tile
    # resample's factor is relative to the upload's own resolution, as in AUTOMATIC1111.
    detects_at_image_size: bool = False
    # The weights `load` cannot do without: (role, file of the role's repo), or (role, None) for
    # the role's whole model. An annotator with a fallback (OpenPose -> MediaPipe) needs none.
    needs: tuple[tuple[str, str | None], ...] = ()
    # True: the map is drawn at random (content shuffle); the detector takes `seed`, which the
    # engine sets to the request's seed, so a seed gives the same map again.
    seeded: bool = False

    def load(self, context: LoadContext) -> Detector:
        """The detector, with its weights loaded from `context`. Classical annotators: `detect`."""
        return self.detect

    def fit_map(self, control_map: np.ndarray, height: int, width: int) -> np.ndarray:
        """A map made at another size (the detect resolution, or the image's own) brought to the
        output (height, width); by default with `map_interpolation`."""
        return resize_to(control_map, height, width, self.map_interpolation)

    def postprocess(self, control_map: np.ndarray) -> np.ndarray:
        """Applied to the map at the output size (e.g. fake scribble's thinning); default none."""
        return control_map

    def detect(self, image: np.ndarray, **params: float) -> np.ndarray:
        """image: RGB uint8 (H, W, 3) -> map uint8 (H, W) or (H, W, 3) of the same H, W (any
        size where `detects_at_image_size`: `fit_map` resizes it)."""
        raise NotImplementedError(f"{type(self).__name__} defines neither load nor detect")

    def has(self, param: Param) -> bool:
        """Whether `param` (by name: annotators may share one, e.g. `include_hands`) is ours."""
        return any(own.name == param.name for own in self.params)

    def check_params(self, given: dict[str, Any]) -> dict[str, float | int]:
        """This annotator's parameters from `given`, checked, defaults filled in.

        Names that belong to other annotators are ignored: a tab or /annotate sends the
        parameters of every annotator it offers.
        """
        return {
            param.name: param.check(given.get(param.name, param.default)) for param in self.params
        }
