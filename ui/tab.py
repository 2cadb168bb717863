"""One tab factory for every condition, and the control-map tab behind /annotate.

A tab is built from its `Condition` entry: input (upload or canvas), prompt, Run, Preview map, an
Advanced accordion with every option and the annotator's own parameters, and the gallery (control
map first) with the seed used. Its Run button is the API endpoint `/<condition name>`, whose
keyword names are the keys of the `inputs_kwargs` dict below.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from annotators import ANNOTATORS
from annotators.pose_json import POSE_ANNOTATORS, poses_from_json
from conditions import Condition
from errors import InvalidRequestError
from settings import PROJECT_ROOT
from ui.controls import (
    BRUSH_ON_OPEN,
    GPU_QUEUE,
    MAP_DETECT_RESOLUTION,
    Page,
    annotator_choice,
    controls_for,
    detect_resolution_slider,
    generation_controls,
    geometry_controls,
    name_input_errors,
    param_control,
    pixel_perfect_checkbox,
    pose_json_download,
    pose_json_file,
    resolution_slider,
    result_column,
    shown_settings,
    speed_controls,
    upload_image,
    user_errors,
)
from ui.img2img import image_to_image_controls
from ui.pose_editor import editor_value, follow_annotator, pose_input
from ui.results import restored_settings, stream_generation
from ui.running import run_buttons, run_with_stop
from ui.status import StatusNotes
from ui.upscale import upscale_button

CANVAS_SIZE = (512, 512)  # the reference interactive scribble canvas


def canvas_image(value: Any) -> Any:
    """An ImageEditor value (dict with 'composite') or a plain image -> the image to annotate."""
    if isinstance(value, dict):
        composite = value.get("composite")
        if composite is None:
            raise InvalidRequestError("The canvas is empty: draw something first.")
        return composite
    return value


def drawing_paper(**kwargs) -> gr.Sketchpad:
    """The white paper to draw a scribble on: black brush only, the frame as square as the paper
    (so it shows whole and fills it: page CSS `.drawing-paper`), the brush picked by
    `BRUSH_ON_OPEN` when it comes into view."""
    return gr.Sketchpad(
        type="numpy",
        image_mode="RGBA",
        canvas_size=CANVAS_SIZE,
        brush=gr.Brush(colors=["#000000"], color_mode="fixed", default_size=6),
        layers=False,
        elem_classes=["drawing-paper"],
        **kwargs,
    )


def input_component(condition: Condition, limits) -> gr.components.Component:
    if condition.input_kind == "canvas":
        return drawing_paper(label="Draw here")
    return upload_image(limits, label="Input image", sources=["upload", "clipboard"])


def build_condition_tab(condition: Condition, page: Page, notes: StatusNotes | None = None) -> None:
    engine, limits, defaults, models, store, _ = page
    with gr.Tab(condition.label, id=condition.name) as tab:
        if condition.description:
            gr.Markdown(condition.description)
        if notes is not None:
            notes.tab(condition.name)  # what this tab lacks, if anything, from each page load
        with gr.Row():
            with gr.Column():
                image = input_component(condition, limits)
                # Pose conditions: OpenPose JSON instead of the photo (its keyword after all).
                last: dict[str, gr.components.Component] = {}
                editor_id = f"pose-editor-{condition.name}"
                if any(name in POSE_ANNOTATORS for name in condition.annotators):
                    pose = pose_input(limits, editor_id, image)
                    last["pose_json"] = pose.text
                prompt = gr.Textbox(
                    label="Prompt",
                    placeholder=condition.prompt_hint or "e.g. a cosy house by a lake",
                )
                with gr.Row():
                    run, stop = run_buttons()
                    preview = gr.Button("Preview map")
                # The annotator and its own settings shape the map: shown, not tucked away.
                map_controls: dict[str, gr.components.Component] = {
                    "annotator": annotator_choice(condition.annotators),
                }
                if last:
                    follow_annotator(editor_id, map_controls["annotator"])
                # Each parameter once (OpenPose's and MediaPipe's hands are one control), shown
                # from the first paint only when the default annotator has it.
                first = ANNOTATORS[condition.annotators[0]]
                for param in condition.params:
                    map_controls[param.name] = param_control(param, visible=first.has(param))
                # Added after every other keyword: positional callers are not shifted.
                auto: dict[str, gr.components.Component] = {}
                with gr.Accordion("Advanced options", open=False):
                    if condition.default_detect_resolution is not None:
                        map_controls["detect_resolution"] = detect_resolution_slider(
                            limits,
                            first.default_detect_resolution or condition.default_detect_resolution,
                            visible=first.default_detect_resolution is not None,
                        )
                        auto["pixel_perfect"] = pixel_perfect_checkbox(limits, defaults)
                    options = generation_controls(limits, defaults)
                    # Its own defaults where the condition's model was trained so (anime: 2).
                    clip = controls_for("clip", limits, {**defaults, **condition.option_defaults})
                    speed = speed_controls(limits, defaults)
                start = image_to_image_controls(
                    limits,
                    defaults,
                    photo=image if condition.input_kind == "upload" else None,
                    open_=condition.needs_mask,
                )
                # API keyword order: shared options, detect resolution, the annotator's own.
                detect = map_controls.pop("detect_resolution", None)
                map_controls = {
                    "annotator": map_controls.pop("annotator"),
                    **({"detect_resolution": detect} if detect else {}),
                    **map_controls,
                }
                if condition.examples:
                    gr.Examples(
                        examples=[
                            [str(PROJECT_ROOT / "assets" / name), text]
                            for name, text in condition.examples
                        ],
                        inputs=[image, prompt],
                    )
            with gr.Column():
                gallery, seed_used, restore = result_column(
                    "Control map, then images", elem_id=f"result-{condition.name}"
                )
                pose_file = pose_json_download() if last else None
                drawn_pose = gr.State(None) if last else None  # the pose Run drew (not in the API)
                page.to_upscale.append((gallery, prompt, upscale_button()))

    if condition.input_kind == "canvas":
        tab.select(fn=None, js=BRUSH_ON_OPEN, api_visibility="private")

    @user_errors
    def generate(
        image,
        prompt,
        request: gr.Request,
        progress=gr.Progress(),
        init_image=None,
        mask=None,
        **kwargs,
    ):
        def call(on_progress, on_preview):
            return engine.generate(
                condition.name,
                canvas_image(image),
                prompt,
                init_image=init_image,
                mask=mask,
                on_progress=on_progress,
                on_preview=on_preview,
                **kwargs,
            )

        yield from stream_generation(call, progress, store, request, with_pose=bool(last))

    @user_errors
    def preview_map(image, pose_json=None, **kwargs):
        if pose_json:  # the map drawn from the JSON, at its canvas size (the editor has it)
            pose = poses_from_json(pose_json, limits.max_pose_people, limits.max_aspect_ratio)
            drawn = [(pose.draw(), "Control map (pose JSON)")]
            return drawn, pose_json_file(pose.to_json()), gr.skip(), gr.skip()
        control = engine.annotate(canvas_image(image), **kwargs)
        for warning in control.warnings:
            gr.Warning(warning)
        gallery_value = [(control.image, "Control map")]
        if not last:
            return gallery_value
        found = editor_value(control.pose, "detect")  # into the editor, opened to show it
        return gallery_value, pose_json_file(control.pose), found, gr.Accordion(open=True)

    name_input_errors(
        {**options, **models, **map_controls, **speed, **start, **auto, **clip, **last}
    )
    generation = run_with_stop(
        [run.click, prompt.submit],
        run,
        stop,
        seed_used,
        f"result-{condition.name}",
        fn=generate,
        inputs=[image, prompt],
        # The image-to-image keywords come last: positional callers are not shifted.
        inputs_kwargs={
            **options,
            **models,
            **map_controls,
            **speed,
            **start,
            **auto,
            **clip,
            **last,
        },  # fmt: skip
        outputs=[gallery, seed_used, *([drawn_pose] if last else [])],
        api_name=condition.name,
        concurrency_id=GPU_QUEUE,
    )
    if last:  # the pose the run drew, found or edited, offered for download as after Preview map
        generation.success(
            pose_json_file, inputs=drawn_pose, outputs=pose_file, api_visibility="private"
        )
    geometry = {name: options[name] for name in ("image_resolution", "aspect_ratio", "resize_mode")}
    preview.click(
        fn=preview_map,
        inputs=[image],
        inputs_kwargs={**geometry, **map_controls, **auto, **last},
        outputs=[gallery, pose_file, pose.editor, pose.accordion] if last else [gallery],
        api_visibility="private",
        concurrency_id=GPU_QUEUE,  # annotator networks run on the GPU too
    )
    settings_only = {name: c for name, c in start.items() if name not in ("init_image", "mask")}
    restorable = {
        "prompt": prompt,
        **options,
        **models,
        **map_controls,
        **speed,
        **settings_only,
        **auto,
        **clip,
    }
    restored = restore.upload(
        fn=lambda file: restored_settings(file, condition.name, restorable),
        inputs=restore,
        outputs=list(restorable.values()),
        api_visibility="private",
    )
    show_chosen = _show_params_of_chosen_annotator(map_controls)
    if show_chosen is not None:  # the restored annotator's sliders, with the restored values
        restored.success(**show_chosen, api_visibility="private")


def _show_params_of_chosen_annotator(
    map_controls: dict[str, gr.components.Component],
) -> dict[str, Any] | None:
    """Show only the chosen annotator's own sliders, and reset the annotator resolution to its
    reference default (e.g. 384 for MiDaS, 512 for NormalBAE) when the person picks it.

    `.input`, not `.change`: a restore from a PNG sets the annotator and its resolution together,
    and `.change` would then reset the resolution. Returns the event arguments (fn, inputs,
    outputs) that show the chosen annotator's sliders without changing any value, for a restore
    to run after itself; None when there is nothing to show or hide.
    """
    choice = map_controls["annotator"]
    every_param = {param.name for annotator in ANNOTATORS.values() for param in annotator.params}
    names = [name for name in map_controls if name in every_param]
    detect = map_controls.get("detect_resolution")
    outputs = [map_controls[name] for name in names] + ([detect] if detect else [])
    if not outputs:
        return None

    def updates(annotator: str, reset: bool) -> list[dict]:
        detect_update, param_updates = shown_settings(ANNOTATORS[annotator], names, reset)
        return param_updates + ([detect_update] if detect else [])

    choice.input(
        lambda annotator: updates(annotator, reset=True),
        inputs=choice,
        outputs=outputs,
        api_visibility="private",
    )
    return {
        "fn": lambda annotator: updates(annotator, reset=False),
        "inputs": choice,
        "outputs": outputs,
    }


def build_annotate_tab(page: Page) -> None:
    engine, limits, defaults = page.engine, page.limits, page.defaults
    """Every annotator's map on its own: the page's map tool and the /annotate endpoint."""
    with gr.Tab("Control maps", id="annotate"):
        gr.Markdown("Make a control map without generating: preview it, or download it to reuse.")
        with gr.Row():
            with gr.Column():
                image = upload_image(limits, label="Input image")
                first = next(iter(ANNOTATORS.values()))  # the one chosen at page load
                controls: dict[str, gr.components.Component] = {
                    "annotator": gr.Dropdown(
                        label="Annotator",
                        choices=[(a.label, a.name) for a in ANNOTATORS.values()],
                        value=first.name,
                    ),
                    "image_resolution": resolution_slider(limits, defaults),
                    "detect_resolution": detect_resolution_slider(
                        limits,
                        first.default_detect_resolution or MAP_DETECT_RESOLUTION,
                        visible=first.default_detect_resolution is not None,
                    ),
                    **geometry_controls(limits, defaults),
                }
                for annotator in ANNOTATORS.values():
                    for param in annotator.params:
                        if param.name not in controls:  # a name shared by annotators: one control
                            controls[param.name] = param_control(param, first.has(param))
                controls["pixel_perfect"] = pixel_perfect_checkbox(limits, defaults)
                make = gr.Button("Make map", variant="primary")
            with gr.Column():
                output = gr.Image(label="Control map", format="png")
                # Pose annotators: the people found, as OpenPose JSON (None for the others).
                pose = gr.JSON(label="Pose JSON (pose annotators)")
                pose_file = pose_json_download()

    @user_errors
    def annotate(image, **kwargs) -> tuple[np.ndarray, dict | None]:
        control = engine.annotate(image, **kwargs)
        for warning in control.warnings:
            gr.Warning(warning)
        return control.image, control.pose

    name_input_errors(controls)
    make.click(
        fn=annotate,
        inputs=[image],
        inputs_kwargs=controls,
        outputs=[output, pose],
        api_name="annotate",
        concurrency_id=GPU_QUEUE,
    ).success(pose_json_file, inputs=pose, outputs=pose_file, api_visibility="private")
    _show_params_of_chosen_annotator(controls)
