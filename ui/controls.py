"""Gradio controls built from data: annotator `Param`s, the shared generation options, and the
handler wrapper that turns engine errors into messages for the page and the API."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Callable, Iterable

import gradio as gr

from annotators import ANNOTATORS, Param
from annotators.util import ASPECT_RATIOS, RESIZE_MODES
from errors import UserFacingError
from pipelines.loop.control import CONTROL_MODES
from pipelines.loop.schedulers import SCHEDULERS
from settings import CONTROLNET_VERSIONS, MAX_SEED, Defaults, Limits

logger = logging.getLogger(__name__)

GPU_QUEUE = "gpu"  # every event that runs the diffusion model shares this concurrency id


def upload_image(**kwargs) -> gr.Image:
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
    return image


def param_control(param: Param) -> gr.Slider | gr.Checkbox:
    if param.is_flag:
        return gr.Checkbox(label=param.label, value=param.default, info=param.info or None)
    return gr.Slider(
        label=param.label,
        minimum=param.minimum,
        maximum=param.maximum,
        value=param.default,
        step=param.step,
        info=param.info or None,
    )


def annotator_choice(names: Iterable[str], label: str = "Annotator") -> gr.Radio:
    names = list(names)
    return gr.Radio(
        label=label,
        choices=[(ANNOTATORS[name].label, name) for name in names],
        value=names[0],
        visible=len(names) > 1,
    )


def resolution_slider(limits: Limits, defaults: Defaults) -> gr.Slider:
    return gr.Slider(
        label="Image resolution (short side)",
        minimum=limits.min_resolution,
        maximum=limits.max_resolution,
        value=defaults.image_resolution,
        step=64,
        info="Sizes are rounded to multiples of 64; the aspect ratio is kept.",
    )


def detect_resolution_slider(limits: Limits, default: int) -> gr.Slider:
    return gr.Slider(
        label="Annotator resolution",
        minimum=limits.min_detect_resolution,
        maximum=limits.max_detect_resolution,
        value=default,
        step=64,
    )


def strength_slider(limits: Limits, defaults: Defaults, label: str = "Control strength"):
    return gr.Slider(
        label=label, minimum=0.0, maximum=limits.max_strength, value=defaults.strength, step=0.05
    )


def window_sliders(defaults: Defaults) -> dict[str, gr.Slider]:
    """Control start / end: the fraction of the steps where the ControlNet runs."""
    return {
        "control_start": gr.Slider(
            label="Control start",
            minimum=0.0,
            maximum=1.0,
            value=defaults.control_start,
            step=0.05,
            info="Fraction of the steps before control starts.",
        ),
        "control_end": gr.Slider(
            label="Control end",
            minimum=0.0,
            maximum=1.0,
            value=defaults.control_end,
            step=0.05,
            info="Fraction of the steps after which control stops (the ControlNet is not run).",
        ),
    }


def model_controls(
    base_models: list[str], defaults: Defaults
) -> dict[str, gr.components.Component]:
    """The page-wide model choice: a base from the operator's list, and the ControlNet family."""
    return {
        "base_model": gr.Dropdown(
            label="Base model",
            choices=base_models,
            value=base_models[0],
            info="ControlNets transfer to community SD1.5 checkpoints (paper Fig. 12).",
            scale=2,
        ),
        "controlnet_version": gr.Radio(
            label="ControlNet version",
            choices=[
                ("v1.1", "v1.1"),
                ("v1.0 (the paper's models)", "v1.0"),
            ],
            value=defaults.controlnet_version
            if defaults.controlnet_version in CONTROLNET_VERSIONS
            else CONTROLNET_VERSIONS[0],
            scale=1,
        ),
    }


def geometry_controls(defaults: Defaults) -> dict[str, gr.components.Component]:
    """The output's aspect ratio, and how a control image of another aspect is fitted."""
    return {
        "aspect_ratio": gr.Dropdown(
            label="Aspect ratio (width:height)",
            choices=[("Same as the image", "image")]
            + [(name, name) for name in ASPECT_RATIOS if name != "image"],
            value=defaults.aspect_ratio,
        ),
        "resize_mode": gr.Radio(
            label="Resize mode",
            choices=[(label, name) for name, label in RESIZE_MODES.items()],
            value=defaults.resize_mode,
            info="When the control image's aspect differs from the output's: stretch it, crop "
            "it to cover, or fit it inside and fill the border.",
        ),
    }


def generation_controls(
    limits: Limits, defaults: Defaults, per_unit: bool = True
) -> dict[str, gr.components.Component]:
    """The options every generate endpoint shares, keyed by their API keyword names.

    `per_unit`: include the control strength and window (a composition sets them per unit).
    """
    controls: dict[str, gr.components.Component] = {
        "num_images": gr.Slider(
            label="Images", minimum=1, maximum=limits.max_images, value=defaults.num_images, step=1
        ),
        "image_resolution": resolution_slider(limits, defaults),
        **geometry_controls(defaults),
    }
    if per_unit:
        controls["strength"] = strength_slider(limits, defaults)
        controls.update(window_sliders(defaults))
    controls.update(
        {
            "control_mode": gr.Radio(
                label="Control mode",
                choices=[(mode.label, mode.name) for mode in CONTROL_MODES.values()],
                value=defaults.control_mode,
                info="Balanced adds control to both CFG branches. 'ControlNet is more important' "
                "is the paper's CFG resolution weighting: control on the prompt branch only.",
            ),
            "resolution_weighting": gr.Slider(
                label="Resolution weighting (gamma)",
                minimum=0.0,
                maximum=limits.max_resolution_weighting,
                value=defaults.resolution_weighting,
                step=0.05,
                info="Connection i gets weight (h_min / h_i) ** gamma: 0 = uniform, 1 = the "
                "paper's 64 / h_i. Used by the two non-balanced modes.",
            ),
            "scheduler": gr.Dropdown(
                label="Sampler",
                choices=list(SCHEDULERS),
                value=defaults.scheduler,
                info="LCM: 4-8 steps at guidance 1-2, with LCM-LoRA (other images, much faster).",
            ),
            "steps": gr.Slider(
                label="Steps", minimum=1, maximum=limits.max_steps, value=defaults.steps, step=1
            ),
            "guidance_scale": gr.Slider(
                label="Guidance scale",
                minimum=0.1,
                maximum=limits.max_guidance,
                value=defaults.guidance_scale,
                step=0.1,
            ),
            "seed": gr.Number(
                label="Seed (-1 = random; image i uses seed + i)",
                value=defaults.seed,
                precision=0,
                minimum=-1,
                maximum=MAX_SEED,
            ),
            "eta": gr.Number(label="eta (DDIM)", value=defaults.eta, minimum=0.0, maximum=1.0),
            "added_prompt": gr.Textbox(label="Added prompt", value=defaults.added_prompt),
            "negative_prompt": gr.Textbox(label="Negative prompt", value=defaults.negative_prompt),
        }
    )
    return controls


def speed_controls(limits: Limits, defaults: Defaults) -> dict[str, gr.components.Component]:
    """Options that trade exact images for speed. Their API keywords come after all the others,
    so positional callers of older versions are not shifted."""
    return {
        "cache_interval": gr.Slider(
            label="Feature caching interval (DeepCache)",
            minimum=1,
            maximum=limits.max_cache_interval,
            value=defaults.cache_interval,
            step=1,
            info="1 = off, the exact images. N > 1 runs the deep UNet and ControlNet blocks only "
            "at every N-th step and reuses their features in between: faster, slightly "
            "different images.",
        )
    }


def restore_file() -> gr.File:
    return gr.File(
        label="Restore settings: drop a PNG made here",
        file_types=[".png"],
        type="filepath",
        height=120,
        elem_classes=["restore-settings"],
    )


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
        # Expected: the person can fix it. One log line, no traceback.
        logger.info("Refused %s: %s", name, error)
        raise gr.Error(str(error), print_exception=False) from error
    except gr.Error:
        raise
    except Exception as error:
        logger.exception("Unexpected failure in %s", name)
        raise gr.Error(
            f"Something went wrong ({type(error).__name__}); the server logged the details. "
            "Try again, or lower the resolution or the number of images."
        ) from error
