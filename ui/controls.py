"""Gradio controls built from data: annotator `Param`s, the shared generation options, and the
handler wrapper that turns engine errors into messages for the page and the API."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import gradio as gr

from annotators import ANNOTATORS, Annotator, Param
from annotators.util import load_image
from errors import InvalidImageError, ModelUnavailableError, UserFacingError
from pipelines.request import SHARED_OPTIONS, UNIT_OPTIONS, Option
from pipelines.upscale import UPSCALE_OPTIONS
from settings import Limits

logger = logging.getLogger(__name__)

GPU_QUEUE = "gpu"  # every event that runs the diffusion model shares this concurrency id
MAP_DETECT_RESOLUTION = 512  # the control-map tab's annotator resolution to start from


# Gradio's editor starts with no tool: a first stroke would draw nothing until the brush is
# clicked. Click it for the person whenever a paper (or the mask editor) comes into view.
BRUSH_ON_OPEN = """() => {
  let tries = 0;
  const arm = () => {  // the editor may still be setting up: look again for a few seconds
    const brushes = Array.from(document.querySelectorAll(
      '.drawing-paper button[aria-label="Brush"], .init-editor button[aria-label="Brush"]'))
      .filter((brush) => brush.offsetParent !== null);
    const idle = brushes.filter((brush) => !brush.classList.contains('highlight'));
    if (tries % 4 === 0) idle.forEach((brush) => brush.click());  // a click takes a moment
    if ((brushes.length === 0 || idle.length > 0) && ++tries < 40) setTimeout(arm, 100);
  };
  setTimeout(arm, 100);
}"""


def upload_image(limits: Limits, **kwargs) -> gr.Image:
    """A `gr.Image` (type="filepath") whose unreadable uploads get a message that says what to do.

    Gradio opens the upload (its header, for type="filepath") before our handler runs; a text file
    named .png, an empty file or a decompression bomb would otherwise end in a generic "Error".
    The instance's `preprocess` is wrapped rather than subclassed: Gradio writes a .pyi stub next
    to the module of every Component subclass at import, which a read-only install cannot take.
    """
    image = gr.Image(type="filepath", image_mode=None, **kwargs)
    gradio_preprocess = image.preprocess

    def preprocess(payload):
        try:
            return gradio_preprocess(payload)
        except gr.Error:
            raise
        except Exception as error:  # noqa: BLE001 (PIL raises OSError, ValueError, bomb errors)
            logger.info("Refused an upload: %s", error)
            raise gr.Error(
                f"Could not read the file as an image ({type(error).__name__}): upload a PNG, "
                "JPEG or WebP image.",
                print_exception=False,
            ) from error

    image.preprocess = preprocess
    _check_on_arrival(image, limits)
    return image


def _check_on_arrival(image: gr.Image, limits: Limits) -> None:
    """Read each upload as soon as it arrives, with the engine's own reader and limits: a file
    that is no image, too small or too large is taken out again with a message that says why,
    instead of a broken picture that fails only at Run."""

    def check(payload):
        path = payload.get("path") if isinstance(payload, dict) else payload
        if not path:
            return gr.skip()
        try:
            load_image(path, max_bytes=limits.max_upload_bytes, max_pixels=limits.max_upload_pixels)
        except InvalidImageError as error:
            gr.Warning(str(error), title="This upload cannot be used")
            return None
        return gr.skip()

    image.upload(
        check,
        inputs=image,
        outputs=image,
        preprocess=False,  # the file as it came: Gradio's own reading is what may fail
        api_visibility="private",
        show_progress="hidden",
    )


def param_control(param: Param, visible: bool = True) -> gr.Slider | gr.Checkbox:
    common = {"label": param.label, "value": param.default, "info": param.info or None}
    if param.is_flag:
        return gr.Checkbox(**common, visible=visible)
    return gr.Slider(
        minimum=param.minimum, maximum=param.maximum, step=param.step, visible=visible, **common
    )


def annotator_choice(names: Iterable[str], label: str = "Annotator") -> gr.Radio:
    names = list(names)
    return gr.Radio(
        label=label,
        choices=[(ANNOTATORS[name].label, name) for name in names],
        value=names[0],
        visible=len(names) > 1,
    )


class Page(NamedTuple):
    """What every tab is built from: the engine, the limits and defaults its controls show, the
    page-wide model choice (base model, ControlNet version) and the store for result PNGs."""

    engine: Any
    limits: Limits
    defaults: dict[str, Any]
    models: dict[str, gr.components.Component]
    store: Any
    # Each tab's results that the Upscale tab can take: (gallery, prompt, button), filled while
    # the tabs are built and wired once the Upscale tab exists.
    to_upscale: list


def option_control(
    spec: Option, limits: Limits, value: Any, **overrides: Any
) -> gr.components.Component:
    """The page's control for a request option, from its declaration (`pipelines.request`)."""
    minimum, maximum = spec.bounds(limits)
    minimum, maximum = overrides.pop("minimum", minimum), overrides.pop("maximum", maximum)
    common = {"label": spec.label, "value": value, "info": spec.info or None, **overrides}
    if spec.widget == "text":
        return gr.Textbox(**common)
    if spec.widget == "checkbox":
        return gr.Checkbox(**common)
    if spec.kind == "choice":
        choices = overrides.pop("choices", None) or [
            (label, name) for name, label in (spec.choices or {}).items()
        ]
        widget = gr.Dropdown if spec.widget == "dropdown" else gr.Radio
        return widget(**{**common, "choices": choices})
    if spec.widget == "number":
        precision = {"precision": 0} if spec.kind == "whole" else {}
        return gr.Number(minimum=minimum, maximum=maximum, **precision, **common)
    slider_minimum = minimum if spec.slider_minimum is None else spec.slider_minimum
    return gr.Slider(minimum=slider_minimum, maximum=maximum, step=spec.step, **common)


def controls_for(
    group: str, limits: Limits, defaults: dict[str, Any], **overrides: dict[str, Any]
) -> dict[str, gr.components.Component]:
    """The controls of one group of request options, keyed by their API keyword names, in
    declaration order; `overrides` gives a control's extra arguments by keyword."""
    specs = {**SHARED_OPTIONS, **UNIT_OPTIONS, **UPSCALE_OPTIONS}
    return {
        name: option_control(
            spec, limits, defaults.get(name, spec.default), **overrides.get(name, {})
        )
        for name, spec in specs.items()
        if spec.group == group
    }


def resolution_slider(limits: Limits, defaults: dict[str, Any]) -> gr.Slider:
    spec = SHARED_OPTIONS["image_resolution"]
    return option_control(spec, limits, defaults["image_resolution"])


def detect_resolution_slider(limits: Limits, default: int, visible: bool = True) -> gr.Slider:
    return option_control(UNIT_OPTIONS["detect_resolution"], limits, default, visible=visible)


def pixel_perfect_checkbox(limits: Limits, defaults: dict[str, Any]) -> gr.Checkbox:
    """The annotator resolution's "Auto": it follows the output size (off by default)."""
    spec = UNIT_OPTIONS["pixel_perfect"]
    return option_control(spec, limits, defaults["pixel_perfect"])


def unit_controls(
    limits: Limits, defaults: dict[str, Any], label: str | None = None
) -> dict[str, gr.components.Component]:
    """A unit's control strength and window (a composition sets them per unit)."""
    overrides = {"strength": {"label": label}} if label else {}
    return controls_for("unit", limits, defaults, **overrides)


def model_controls(
    base_models: list[str], limits: Limits, defaults: dict[str, Any]
) -> dict[str, gr.components.Component]:
    """The page-wide model choice: a base from the operator's list, and the ControlNet family."""
    return controls_for(
        "model",
        limits,
        defaults,
        # Minimum widths: on a phone each takes the whole row rather than cutting its text.
        base_model={"choices": base_models, "scale": 2, "min_width": 300},
        controlnet_version={"scale": 1, "min_width": 260},
    )


def geometry_controls(
    limits: Limits, defaults: dict[str, Any]
) -> dict[str, gr.components.Component]:
    """The output's aspect ratio, and how a control image of another aspect is fitted."""
    output = controls_for("output", limits, defaults)
    return {name: output[name] for name in ("aspect_ratio", "resize_mode")}


def generation_controls(
    limits: Limits, defaults: dict[str, Any], per_unit: bool = True
) -> dict[str, gr.components.Component]:
    """The options every generate endpoint shares, keyed by their API keyword names.

    `per_unit`: include the control strength and window (a composition sets them per unit).
    """
    controls = controls_for("output", limits, defaults)
    if per_unit:
        controls.update(unit_controls(limits, defaults))
    controls.update(sampling_controls(limits, defaults))
    return controls


def sampling_controls(
    limits: Limits, defaults: dict[str, Any]
) -> dict[str, gr.components.Component]:
    """The sampler, steps, guidance, seed, control mode and prompts' additions; eta shown only
    for the samplers that take it."""
    controls = controls_for("sampling", limits, defaults)
    _show_only_for(controls["eta"], controls["scheduler"], ETA_SAMPLERS)
    return controls


ETA_SAMPLERS = ("DDIM",)  # the samplers whose step takes eta


def _show_only_for(
    control: gr.components.Component, choice: gr.components.Component, values: tuple
) -> None:
    """`control` is shown only while `choice` holds one of `values` (from the first paint)."""
    control.visible = choice.value in values
    choice.change(
        lambda value: gr.update(visible=value in values),
        inputs=choice,
        outputs=control,
        api_visibility="private",
        show_progress="hidden",
    )


def speed_controls(limits: Limits, defaults: dict[str, Any]) -> dict[str, gr.components.Component]:
    """Options that trade exact images for speed. Their API keywords come after all the others,
    so positional callers of older versions are not shifted."""
    return controls_for("speed", limits, defaults)


def shown_settings(
    chosen: Annotator | None, names: Iterable[str], reset: bool
) -> tuple[dict, list[dict]]:
    """Updates that show only `chosen`'s own settings: (its annotator resolution, each of the
    parameters `names`). `reset`: set the resolution to the annotator's reference default (384
    for MiDaS) too, as when the person picks it; a restore keeps the restored value."""
    own = {param.name for param in chosen.params} if chosen else set()
    resolution = chosen.default_detect_resolution if chosen else None
    value = {"value": resolution or MAP_DETECT_RESOLUTION} if reset else {}
    detect = gr.update(visible=resolution is not None, **value)
    return detect, [gr.update(visible=name in own) for name in names]


def result_column(
    label: str, elem_id: str, restorable: bool = True
) -> tuple[gr.Gallery, gr.Number, gr.File | None]:
    """The results: the gallery (control maps first), the seed used (hidden until a run gives
    one: a number box would show 0), and the restore drop (None where not `restorable`)."""
    gallery = gr.Gallery(
        label=label,
        format="png",
        columns=2,
        height="auto",
        elem_id=elem_id,
        elem_classes=["result-gallery"],
    )
    seed_used = gr.Number(label="Seed used", precision=0, interactive=False, visible=False)
    if not restorable:
        return gallery, seed_used, None
    restore = gr.File(
        label="Restore settings: drop a PNG made here",
        file_types=[".png"],
        type="filepath",
        height=120,
        elem_classes=["restore-settings"],
    )
    return gallery, seed_used, restore


def name_input_errors(controls: dict[str, gr.components.Component]) -> None:
    """Make Gradio's own input checks (slider bounds, dropdown choices) name the API keyword.

    Gradio refuses an out-of-range slider value or an unknown choice before our handler runs,
    with "Value 1000000 is greater than maximum value 100." and no hint of which input; each
    component's `preprocess` is wrapped (as in `upload_image`) to prefix the keyword and label.
    """
    for name, component in controls.items():
        if isinstance(component, gr.Image | gr.ImageEditor | gr.File):
            continue  # their own messages already say what is wrong with the file
        if getattr(component, "_names_its_errors", False):
            continue  # shared by several tabs (the model choice): wrapped once
        component.preprocess = _named_preprocess(name, component)
        component._names_its_errors = True


def _named_preprocess(name: str, component: gr.components.Component) -> Callable:
    gradio_preprocess = component.preprocess
    label = getattr(component, "label", None) or name

    def preprocess(payload):
        try:
            return gradio_preprocess(payload)
        except gr.Error as error:
            raise gr.Error(f"`{name}` ({label}): {error.message}", print_exception=False) from error
        except (TypeError, ValueError) as error:  # e.g. text where a slider wants a number
            raise gr.Error(
                f"`{name}` ({label}): {payload!r} is not a valid value ({error}).",
                print_exception=False,
            ) from error

    return preprocess


def user_errors(handler: Callable) -> Callable:
    """Show engine errors as messages (UI toast, API error text) instead of tracebacks.

    Works for plain handlers and for generator handlers (those that stream previews).
    """
    if inspect.isgeneratorfunction(handler):

        @functools.wraps(handler)
        def streamed(*args, **kwargs):
            with _as_messages(handler.__name__):
                return (yield from handler(*args, **kwargs))

        return streamed

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        with _as_messages(handler.__name__):
            return handler(*args, **kwargs)

    return wrapped


@contextlib.contextmanager
def _as_messages(name: str):
    try:
        yield
    except UserFacingError as error:
        # Expected: the person can fix it. One log line, no traceback. A missing model's message
        # names the command that fixes it: it stays until dismissed, to be read and copied.
        logger.info("Refused %s: %s", name, error)
        duration = None if isinstance(error, ModelUnavailableError) else 10
        raise gr.Error(str(error), duration=duration, print_exception=False) from error
    except gr.Error:
        raise
    except Exception as error:
        logger.exception("Unexpected failure in %s", name)
        raise gr.Error(
            f"Something went wrong ({type(error).__name__}); the server logged the details. "
            "Try again, or lower the resolution or the number of images."
        ) from error


# ---- pose JSON -----------------------------------------------------------------------------------
def pose_json_download(label: str = "Download pose JSON") -> gr.File:
    return gr.File(label=label, interactive=False, visible=True, elem_classes=["pose-download"])


def pose_json_file(pose: dict[str, Any] | None) -> str | None:
    """`pose` written to a temporary `pose.json` for the download (None: no pose)."""
    if pose is None:
        return None
    import json
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(prefix="pose-json-"))
    path = folder / "pose.json"
    path.write_text(json.dumps(pose, indent=2))
    return str(path)
