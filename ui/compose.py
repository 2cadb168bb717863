"""The Compose tab and `/compose`: several conditions at once (paper Fig. 6, pose + depth).

Each unit has its own switch, condition, annotator, image (or drawing), strength and control
window, and in its "Annotator settings" its annotator's resolution and own parameters; the engine
sums the units' ControlNet residuals. A unit without an image of its own uses unit 1's, so one
photo can give both its pose and its depth. API keywords: `image` and `prompt` (unit 1's image),
then per unit k: `enabled_k`, `condition_k`, `annotator_k`, `image_k` (k > 1), `strength_k`,
`control_start_k`, `control_end_k`, then the shared options and models, then per unit k:
`detect_resolution_k` and one `<param>_k` per annotator parameter (`UNIT_PARAMS`; a name shared by
several annotators is one keyword). These last ones come after everything else so that callers
passing arguments by position keep working; only the chosen annotator's are used.
`detect_resolution_k` defaults to the resolution of the unit's preset annotator (e.g. 384 for the
depth unit): set it when changing `condition_k` to an annotator with another default.

The drop zone under the gallery restores a composition's settings (not its images) from a PNG made
here: the PNG's unit k goes to unit k, the other units are switched off.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from annotators import ANNOTATORS, Annotator, Param
from annotators.pose_json import POSE_ANNOTATORS
from conditions import CONDITIONS
from errors import InvalidRequestError
from png_info import compose_restore_values
from settings import PROJECT_ROOT
from ui.controls import (
    BRUSH_ON_OPEN,
    GPU_QUEUE,
    Page,
    controls_for,
    detect_resolution_slider,
    generation_controls,
    name_input_errors,
    param_control,
    result_column,
    shown_settings,
    speed_controls,
    unit_controls,
    upload_image,
    user_errors,
)
from ui.img2img import image_to_image_controls
from ui.pose_editor import editor_value, follow_annotator, pose_input
from ui.results import (
    png_settings,
    restored_values,
    stream_generation,
    unchanged,
    with_start_defaults,
)
from ui.running import run_buttons, run_with_stop
from ui.tab import canvas_image, drawing_paper
from ui.upscale import upscale_button

# (condition, switched on) for each unit slot: the paper's pose + depth, then edges, off.
UNIT_PRESETS = (("openpose", True), ("depth", True), ("canny", False))  # at most 3 units
UNIT_OPTIONS = ("enabled", "condition", "annotator", "strength", "control_start", "control_end")
# The conditions a unit can take (a drawing is uploaded as a scribble).
UNIT_CONDITIONS = tuple(c for c in CONDITIONS.values() if c.input_kind == "upload")
_OFFERED = frozenset(condition.name for condition in UNIT_CONDITIONS)


def _unit_params() -> dict[str, Param]:
    """Every parameter of every annotator a unit can choose, each name once (OpenPose's and
    MediaPipe's `include_hands` are one control per unit)."""
    params: dict[str, Param] = {}
    for condition in UNIT_CONDITIONS:
        for param in condition.params:
            params.setdefault(param.name, param)
    return params


UNIT_PARAMS = _unit_params()
# A unit's annotator settings, in API order (after the suffix `_k`).
UNIT_SETTINGS = ("detect_resolution", *UNIT_PARAMS)


def _annotator_choices(condition_name: str) -> list[tuple[str, str]]:
    """The condition's annotators under the names its tab gives them. The default one's value is
    "" (so API callers may change only the condition): `_shown_annotator` maps its name there."""
    names = CONDITIONS[condition_name].annotators
    return [(ANNOTATORS[names[0]].label, "")] + [
        (ANNOTATORS[name].label, name) for name in names[1:]
    ]


def _shown_annotator(condition_name: str, annotator: Any) -> Any:
    """The dropdown value for `annotator`: "" for the condition's default, named or not."""
    condition = CONDITIONS.get(condition_name) if isinstance(condition_name, str) else None
    return "" if condition and annotator == condition.annotators[0] else annotator


def _chosen_annotator(condition_name: Any, annotator: Any) -> Annotator | None:
    """The annotator a unit runs ("" = the condition's default); None if the engine will refuse
    the pair (it then says why)."""
    condition = CONDITIONS.get(condition_name) if isinstance(condition_name, str) else None
    if condition is None:
        return None
    name = annotator or condition.annotators[0]
    return ANNOTATORS[name] if name in condition.annotators else None


def _unit_settings(condition: Any, annotator: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The unit's `detect_resolution` and `params` for the engine: the chosen annotator's only.

    A classical annotator (Canny) runs at the output size, so it gets no detect resolution (and
    the PNG records none); the other annotators' parameters are left out, as the engine refuses
    names no annotator of the condition has.
    """
    chosen = _chosen_annotator(condition, annotator)
    if chosen is None:
        return {"detect_resolution": None, "params": {}}
    detect = values["detect_resolution"] if chosen.default_detect_resolution else None
    return {
        "detect_resolution": detect,
        "params": {param.name: values[param.name] for param in chosen.params},
    }


def _settings_updates(condition: Any, annotator: Any) -> list[dict]:
    """Updates for [detect resolution, each of `UNIT_PARAMS`, the "no settings" note]: show only
    the chosen annotator's, and reset its resolution to its reference default."""
    chosen = _chosen_annotator(condition, annotator) or _chosen_annotator(condition, "")
    detect, params = shown_settings(chosen, UNIT_PARAMS, reset=True)
    has_none = chosen is None or (chosen.default_detect_resolution is None and not chosen.params)
    return [detect, *params, gr.update(visible=has_none)]


def _condition_updates(condition_name: str, annotator: str) -> list[dict]:
    """Updates for [annotator, detect resolution, each of `UNIT_PARAMS`, the note] when a unit
    takes `condition_name`: its annotator choices, `annotator` chosen ("" = its default)."""
    return [
        gr.update(
            choices=_annotator_choices(condition_name),
            value=_shown_annotator(condition_name, annotator),
        ),
        *_settings_updates(condition_name, annotator),
    ]


def _unit_controls(number: int, condition_name: str, enabled: bool, engine, limits, defaults):
    """One unit's column; returns its controls and its annotator settings by API keyword (without
    the `_k` suffix)."""
    uploads = [(c.label, c.name) for c in UNIT_CONDITIONS]
    with gr.Column(variant="panel", min_width=260):
        controls = {
            "enabled": gr.Checkbox(label=f"Unit {number} on", value=enabled),
            "condition": gr.Dropdown(label="Condition", choices=uploads, value=condition_name),
            # The choices follow the condition; any name is accepted and the engine checks it.
            "annotator": gr.Dropdown(
                label="Annotator",
                choices=_annotator_choices(condition_name),
                value="",
                allow_custom_value=True,
            ),
            "image": upload_image(
                limits,
                label="Image" if number == 1 else "Image (empty: uses unit 1's)",
                sources=["upload", "clipboard"],
                height=220,
            ),
        }
        # A pose unit may take OpenPose JSON instead of its image (`pose_json_k`, after all).
        pose = pose_input(
            limits,
            f"pose-editor-unit-{number}",
            controls["image"],
            label="Edit a pose instead of the image (pose conditions)",
            find_button=True,
        )
        follow_annotator(f"pose-editor-unit-{number}", controls["annotator"])
        with gr.Accordion("Draw a scribble instead", open=False) as drawing:
            sketch = drawing_paper(show_label=False)
            use_sketch = gr.Button("Use this drawing", size="sm")
        drawing.expand(fn=None, js=BRUSH_ON_OPEN, api_visibility="private")
        controls.update(unit_controls(limits, defaults, label="Strength"))
        # The preset's default annotator decides what shows first; then the choice is followed.
        shown = _settings_updates(condition_name, "")
        with gr.Accordion("Annotator settings", open=False):
            settings = {
                "detect_resolution": detect_resolution_slider(limits, shown[0]["value"]),
                **{name: param_control(param) for name, param in UNIT_PARAMS.items()},
            }
            note = gr.Markdown("This annotator has no settings.")
        for component, update in zip([*settings.values(), note], shown, strict=True):
            component.visible = update["visible"]

    condition, annotator = controls["condition"], controls["annotator"]
    followers = [*settings.values(), note]
    # `.input`, not `.change`: these fire on the person's choice only. A restore from a PNG sets
    # the condition, annotator and settings together; `.change` would then reset the latter two.
    # Whatever sets a condition in code sends `_condition_updates` itself.
    condition.input(
        lambda name: _condition_updates(name, ""),
        inputs=condition,
        outputs=[annotator, *followers],
        api_visibility="private",
    )
    annotator.input(
        lambda name, chosen: _settings_updates(name, chosen),
        inputs=[condition, annotator],
        outputs=followers,
        api_visibility="private",
    )
    # A drawing becomes this unit's image, read as a scribble (dark strokes on white).
    use_sketch.click(
        user_errors(
            lambda value: (
                canvas_image(value),
                "scribble",
                True,
                *_condition_updates("scribble", ""),
            )
        ),
        inputs=sketch,
        outputs=[controls["image"], condition, controls["enabled"], annotator, *followers],
        api_visibility="private",
    )
    pose.find.click(
        user_errors(lambda *values: _found_pose(engine, number, *values)),
        inputs=[controls["image"], condition, annotator, *settings.values()],
        outputs=[pose.editor],
        api_visibility="private",
        concurrency_id=GPU_QUEUE,  # annotator networks run on the GPU too
    )
    return controls, settings, note, pose.text


def _found_pose(engine, number: int, image, condition, annotator, *values) -> dict[str, Any]:
    """The editor's value for the pose unit `number`'s annotator finds in its image."""
    chosen = _chosen_annotator(condition, annotator)
    if chosen is None or chosen.name not in POSE_ANNOTATORS:
        raise InvalidRequestError(
            f"Unit {number} does not find poses: choose the Pose condition (OpenPose, DWPose or "
            "MediaPipe) first."
        )
    if image is None:
        raise InvalidRequestError(f"Unit {number} has no image to find a pose in: upload one.")
    settings = _unit_settings(condition, annotator, dict(zip(UNIT_SETTINGS, values, strict=True)))
    control = engine.annotate(
        image, chosen.name, detect_resolution=settings["detect_resolution"], **settings["params"]
    )
    return editor_value(control.pose, "detect")


def _restorable_units(parameters: dict, slots: int) -> list[dict]:
    """The PNG's units that a Compose slot can take, in order; warns about those left out."""
    units = parameters.get("units")
    units = [unit for unit in units if isinstance(unit, dict)] if isinstance(units, list) else []
    kept = [unit for unit in units if unit.get("condition") in _OFFERED]
    skipped = [
        repr(unit.get("condition")) for unit in units if unit.get("condition") not in _OFFERED
    ]
    if skipped:
        gr.Warning(f"Skipped the unit(s) of {', '.join(skipped)}: not offered on the Compose tab.")
    if len(kept) > slots:
        gr.Warning(f"This PNG has {len(kept)} units; the first {slots} were restored.")
    return kept


def _restored_composition(
    file: Any,
    controls: dict[str, gr.components.Component],
    unit_columns: list[tuple[dict, dict, gr.Markdown, gr.Code]],
) -> dict[gr.components.Component, Any]:
    """Values for `controls` (by API keyword name) from a PNG made by this app: its shared
    settings, and unit k in slot k (the other slots switched off). Images are not restored."""
    parameters = png_settings(file) if file is not None else None
    if parameters is None:
        return unchanged(controls)
    units = _restorable_units(parameters, len(unit_columns))
    values = compose_restore_values({**parameters, "units": units}, len(unit_columns))
    if not units:  # nothing for the slots: keep them rather than switch every one off
        values = {name: value for name, value in values.items() if not name.startswith("enabled_")}
    values, _ = with_start_defaults(values)
    restored = restored_values(
        values, controls, parameters.get("seed"), note=" Drop the images again."
    )
    # The condition's `.input` handler does not run on a restore: send what it would, with the
    # restored annotator and settings in place of its defaults.
    for number, (unit, settings, note, _) in enumerate(unit_columns, start=1):
        condition = values.get(f"condition_{number}")
        if condition is None:
            continue
        updates = _condition_updates(condition, values.get(f"annotator_{number}", ""))
        for component, update in zip(
            [unit["annotator"], *settings.values(), note], updates, strict=True
        ):
            if component in restored:
                value = restored[component]
                update["value"] = (
                    _shown_annotator(condition, value) if component is unit["annotator"] else value
                )
            restored[component] = update
    return restored


def build_compose_tab(page: Page) -> None:
    engine, limits, defaults, models, store, _ = page
    units = UNIT_PRESETS[: limits.max_units]
    with gr.Tab("Compose", id="compose"):
        gr.Markdown(
            "Several conditions at once, as in the paper's Fig. 6 (pose + depth): each unit's "
            "ControlNet adds its residuals. A unit with no image of its own uses unit 1's."
        )
        # The prompt and Run first (as A1111 puts them above its units): on a phone the units'
        # details would push them thousands of pixels down.
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", placeholder="e.g. a chef in a kitchen")
                with gr.Row():
                    run, stop = run_buttons()
                with gr.Accordion("Advanced options", open=False):
                    options = generation_controls(limits, defaults, per_unit=False)
                    clip = controls_for("clip", limits, defaults)
                    speed = speed_controls(limits, defaults)
                start = image_to_image_controls(limits, defaults, photo=None)  # unit 1's photo
            with gr.Column():
                gallery, seed_used, restore = result_column(
                    "Control maps, then images", elem_id="result-compose"
                )
                page.to_upscale.append((gallery, prompt, upscale_button()))
        with gr.Row(equal_height=False):
            unit_columns = [
                _unit_controls(number, name, enabled, engine, limits, defaults)
                for number, (name, enabled) in enumerate(units, start=1)
            ]
        gr.Examples(
            examples=[[str(PROJECT_ROOT / "assets" / "astronaut.png"), "a chef in a kitchen"]],
            inputs=[unit_columns[0][0]["image"], prompt],
        )

    # API keywords: unit 1's image is `image`; every other unit field gets the suffix `_k`.
    first_image = unit_columns[0][0].pop("image")
    unit_inputs = {
        f"{name}_{number}": component
        for number, (controls, _, _, _) in enumerate(unit_columns, start=1)
        for name, component in controls.items()
    }
    # The annotator settings come last: existing positional callers are not shifted.
    settings_inputs = {
        f"{name}_{number}": component
        for number, (_, settings, _, _) in enumerate(unit_columns, start=1)
        for name, component in settings.items()
    }
    # Pose JSON per unit, after everything else in turn.
    pose_inputs = {
        f"pose_json_{number}": pose for number, (*_, pose) in enumerate(unit_columns, start=1)
    }

    # image_2 / image_3 default to None so API callers may leave them out (unit 1's is used).
    @user_errors
    def compose(
        image,
        prompt,
        request: gr.Request,
        image_2=None,
        image_3=None,
        progress=gr.Progress(),
        init_image=None,
        mask=None,
        **kwargs,
    ):
        images = (image, image_2, image_3)
        raw_units = []
        for number in range(1, len(units) + 1):
            unit = {name: kwargs.pop(f"{name}_{number}") for name in UNIT_OPTIONS}
            values = {name: kwargs.pop(f"{name}_{number}") for name in UNIT_SETTINGS}
            unit.update(_unit_settings(unit["condition"], unit["annotator"], values))
            unit["image"] = images[number - 1]
            unit["pose_json"] = kwargs.pop(f"pose_json_{number}", None) or None
            raw_units.append(unit)

        def call(on_progress, on_preview):
            return engine.compose(
                raw_units,
                prompt,
                init_image=init_image,
                mask=mask,
                on_progress=on_progress,
                on_preview=on_preview,
                **kwargs,
            )

        yield from stream_generation(call, progress, store, request)

    # The image-to-image keywords come last: positional callers are not shifted.
    inputs_kwargs = {
        **unit_inputs, **options, **models, **settings_inputs, **speed, **start, **clip,
        **pose_inputs,
    }  # fmt: skip
    name_input_errors(inputs_kwargs)
    run_with_stop(
        [run.click, prompt.submit],
        run,
        stop,
        seed_used,
        "result-compose",
        fn=compose,
        inputs=[first_image, prompt],
        inputs_kwargs=inputs_kwargs,
        outputs=[gallery, seed_used],
        api_name="compose",
        concurrency_id=GPU_QUEUE,
    )
    # Settings only: each unit's image (a file of the visitor's) is not in the PNG.
    restorable = {
        "prompt": prompt,
        **{
            name: component
            for name, component in unit_inputs.items()
            if not name.startswith("image")
        },
        **options,
        **models,
        **settings_inputs,
        **speed,
        **{name: c for name, c in start.items() if name not in ("init_image", "mask")},
        **clip,
    }
    notes = [note for _, _, note, _ in unit_columns]
    restore.upload(
        fn=lambda file: _restored_composition(file, restorable, unit_columns),
        inputs=restore,
        outputs=[*restorable.values(), *notes],
        api_visibility="private",
    )
