"""The one table from AUTOMATIC1111's names to this app's: the ControlNet extension's modules
(preprocessors) to annotators, its model names to ControlNet roles, its samplers, resize and
control modes to the request's own. Models are listed by their bare names, without A1111's
" [hash]" (a hash of its own .pth files, which this app does not load); any suffix is taken.

A1111 picks the annotator by `module` and the ControlNet by `model`; here a unit is a condition
and an annotator (`conditions.py`), so a (module, model) pair resolves to the condition whose
ControlNet role is the model's and which offers the module's annotator. Unknown names are refused
with the names that are available, as A1111 does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from annotators import ANNOTATORS
from conditions import CONDITIONS, Condition
from errors import InvalidRequestError
from settings import DEFAULT_MODEL_IDS, V10_MODEL_IDS


@dataclass(frozen=True)
class Module:
    """An A1111 preprocessor: the annotators that play it (the first one the model's condition
    offers is used), fixed annotator parameters, and which of them `threshold_a` and
    `threshold_b` set. `roles`: the only ControlNet roles it goes with (empty: any)."""

    annotators: tuple[str, ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    thresholds: tuple[str, ...] = ()  # (threshold_a's parameter, threshold_b's parameter)
    roles: tuple[str, ...] = ()


def _pose(hands: bool, face: bool) -> Module:
    return Module(("openpose",), {"include_hands": hands, "include_face": face})


# A1111's module names (sd-webui-controlnet's preprocessor names, and its older aliases).
MODULES: dict[str, Module] = {
    "none": Module(("none",)),
    "canny": Module(("canny",), thresholds=("low_threshold", "high_threshold")),
    "mlsd": Module(("mlsd",), thresholds=("value_threshold", "distance_threshold")),
    "softedge_hed": Module(("hed",)),
    "softedge_hedsafe": Module(("hed_safe",)),
    "softedge_pidinet": Module(("pidinet",)),
    "softedge_pidisafe": Module(("pidinet_safe",)),
    "scribble_hed": Module(("fake_scribble",)),
    "openpose": _pose(hands=False, face=False),
    "openpose_hand": _pose(hands=True, face=False),
    "openpose_face": _pose(hands=False, face=True),
    "openpose_full": _pose(hands=True, face=True),
    "depth_midas": Module(("depth_midas",)),
    "normal_bae": Module(("normal_bae",)),
    "normal_midas": Module(("normal_midas",), thresholds=("bg_threshold",)),
    "seg_ufade20k": Module(("seg_upernet",)),  # UperNet on ADE20K (a ConvNeXt backbone here)
    "tile_resample": Module(("tile_resample",), thresholds=("down_sampling_rate",)),
    "lineart_realistic": Module(("lineart",)),
    "lineart_coarse": Module(("lineart_coarse",)),
    "lineart_standard": Module(("lineart_standard",)),
    # "invert (from white bg & black line)": a drawing of one's own.
    "invert": Module(("line_drawing", "scribble")),
    "lineart_anime": Module(("lineart_anime",)),
    "shuffle": Module(("shuffle",)),
    "depth_zoe": Module(("depth_zoe",)),
    "depth_anything_v2": Module(("depth_anything_v2",)),
    "seg_ofade20k": Module(("seg_oneformer_ade20k",)),
    "seg_ofcoco": Module(("seg_oneformer_coco",)),
    "dw_openpose_full": Module(("dw_openpose_full",)),
    "inpaint": Module(("none",), roles=("inpaint",)),
    "inpaint_only": Module(("none",), roles=("inpaint",)),
    # The older names A1111 still takes.
    "hed": Module(("hed",)),
    "pidinet": Module(("pidinet",)),
    "fake_scribble": Module(("fake_scribble",)),
    "depth": Module(("depth_midas",)),
    "normal_map": Module(("normal_midas",), thresholds=("bg_threshold",)),
    "segmentation": Module(("seg_upernet",)),
    "lineart": Module(("lineart",)),
    "scribble": Module(("scribble",)),
    # This app's own, which A1111 lacks.
    "mediapipe_pose": Module(("mediapipe_pose",)),
    "dw_openpose": Module(("dw_openpose",)),
}

# The ControlNet roles a unit can run (a condition's own, or one it sends an annotator to).
CONTROLNET_ROLES = tuple(
    dict.fromkeys(
        condition.controlnet_role_for(annotator)
        for condition in CONDITIONS.values()
        for annotator in condition.annotators
    )
)
# A1111 names the v1.0 models after lllyasviel/ControlNet's files (control_sd15_<name>.pth).
_V10_NAMES = {
    role: model_id.split("/")[-1].removeprefix("sd-controlnet-")
    for role, model_id in V10_MODEL_IDS.items()
    if role != "normal"  # its model is the MiDaS-normals one: role normal_midas below
}


def _model_names() -> dict[str, tuple[str, str]]:
    """A1111 model name -> (ControlNet role, ControlNet version): the v1.1 names (the Hub repos'
    names, `control_v11p_sd15_canny`), then the v1.0 ones (`control_sd15_canny`)."""
    names = {
        DEFAULT_MODEL_IDS[role].split("/")[-1]: (role, "v1.1")
        for role in CONTROLNET_ROLES
        if role != "normal_midas"
    }
    names.update({f"control_sd15_{name}": (role, "v1.0") for role, name in _V10_NAMES.items()})
    names["control_sd15_normal"] = ("normal_midas", "v1.1")  # that role's model is v1.0's own
    # The Hub repos' own names for the v1.0 models (lllyasviel/sd-controlnet-canny, ...).
    names.update(
        {f"sd-controlnet-{name}": names[f"control_sd15_{name}"] for name in _V10_NAMES.values()}
    )
    names["sd-controlnet-normal"] = names["control_sd15_normal"]
    return names


MODELS: dict[str, tuple[str, str]] = _model_names()
# A1111's sampler names (sampler, or sampler + its "Karras" schedule) -> this app's.
SAMPLERS: dict[str, str] = {
    "UniPC": "UniPC",
    "DDIM": "DDIM",
    "Euler a": "Euler a",
    "DPM++ 2M Karras": "DPM++ 2M Karras",
    "LCM": "LCM",
}
_KARRAS = {"DPM++ 2M": "DPM++ 2M Karras"}  # A1111 1.9+ sends the schedule apart
RESIZE_MODES = {
    "Just Resize": "just_resize",
    "Crop and Resize": "crop_and_resize",
    "Resize and Fill": "resize_and_fill",
}
CONTROL_MODES = {
    "Balanced": "balanced",
    "My prompt is more important": "prompt",
    "ControlNet is more important": "controlnet",
}
# The suffix A1111 prints after a model's name: " [d14c016b]" (a hash of its file).
_HASH_SUFFIX = re.compile(r"\s*\[[^\]]*\]\s*$")


def _by_name_or_index(table: Mapping[str, str], value: Any, what: str, key: str) -> str:
    """A1111 sends these modes as their names or as their index in its list."""
    names = list(table)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return table[names[value]]
    if isinstance(value, str) and value in table:
        return table[value]
    if isinstance(value, str) and value in table.values():  # this app's own name
        return value
    raise InvalidRequestError(
        f"`{key}`: unknown {what} {value!r}; use one of: {', '.join(names)} (or 0-"
        f"{len(names) - 1})."
    )


def resize_mode(value: Any, key: str = "resize_mode") -> str:
    if value == 3:  # A1111's img2img "Just resize (latent upscale)"
        return "just_resize"
    return _by_name_or_index(RESIZE_MODES, value, "resize mode", key)


def control_mode(value: Any, key: str = "control_mode") -> str:
    return _by_name_or_index(CONTROL_MODES, value, "control mode", key)


def sampler(name: Any, schedule: Any = None) -> str:
    """A1111's `sampler_name` (with `scheduler`: "Karras", "automatic") as this app's sampler."""
    if isinstance(name, str) and isinstance(schedule, str) and schedule.lower() == "karras":
        name = _KARRAS.get(name, name)
    if isinstance(name, str) and name in SAMPLERS:
        return SAMPLERS[name]
    raise InvalidRequestError(f"Unknown sampler {name!r}; this server has: {', '.join(SAMPLERS)}.")


def module(name: Any, key: str = "module") -> Module:
    if isinstance(name, str) and name.lower() in MODULES:
        return MODULES[name.lower()]
    raise InvalidRequestError(
        f"`{key}`: unknown ControlNet module {name!r}; this server has: {', '.join(MODULES)}."
    )


def model(name: Any, key: str = "model") -> tuple[str, str]:
    """(ControlNet role, version) of an A1111 model name, with or without its " [hash]"."""
    bare = _HASH_SUFFIX.sub("", name) if isinstance(name, str) else name
    if isinstance(bare, str) and bare in MODELS:
        return MODELS[bare]
    raise InvalidRequestError(
        f"`{key}`: unknown ControlNet model {name!r}; this server has: {', '.join(MODELS)} "
        '(with or without a " [hash]" suffix).'
    )


def unit_for(chosen: Module, role: str | None, key: str = "module") -> tuple[Condition, str]:
    """The condition and annotator that play `chosen` on the ControlNet `role` (None: the first
    condition that offers the module's annotator)."""
    for annotator in chosen.annotators:
        for condition in CONDITIONS.values():
            if condition.input_kind != "upload" or annotator not in condition.annotators:
                continue
            if chosen.roles and condition.controlnet_role_for(annotator) not in chosen.roles:
                continue
            if role is None or condition.controlnet_role_for(annotator) == role:
                return condition, annotator
    fits = [
        name
        for name, other in MODULES.items()
        if any(
            annotator in condition.annotators
            and condition.controlnet_role_for(annotator) == role
            and (not other.roles or role in other.roles)
            for annotator in other.annotators
            for condition in CONDITIONS.values()
        )
    ]
    raise InvalidRequestError(
        f"`{key}`: the module {_name_of(chosen)!r} does not make maps for the {role} "
        f"ControlNet; modules for it: {', '.join(fits)}."
    )


def _name_of(chosen: Module) -> str:
    return next(name for name, entry in MODULES.items() if entry is chosen)


def model_free(name: str) -> bool:
    """Whether a module's annotators run without weights (A1111's `model_free`)."""
    return all(not ANNOTATORS[annotator].needs for annotator in MODULES[name].annotators)
