"""The Compose tab and `/compose`: several conditions at once (paper Fig. 6, pose + depth).

Each unit has its own switch, condition, annotator, image (or drawing), strength and control
window; the engine sums the units' ControlNet residuals. A unit without an image of its own uses
unit 1's, so one photo can give both its pose and its depth. API keywords: `image` and `prompt`
(unit 1's image), then per unit k: `enabled_k`, `condition_k`, `annotator_k`, `image_k` (k > 1),
`strength_k`, `control_start_k`, `control_end_k`, then the shared options.
"""

from __future__ import annotations

import gradio as gr

from conditions import CONDITIONS
from settings import PROJECT_ROOT, Defaults, Limits
from ui.controls import (
    GPU_QUEUE,
    generation_controls,
    name_input_errors,
    strength_slider,
    upload_image,
    user_errors,
    window_sliders,
)
from ui.results import PngStore, stream_generation
from ui.tab import CANVAS_SIZE, canvas_image

# (condition, switched on) for each unit slot: the paper's pose + depth, then edges, off.
UNIT_PRESETS = (("openpose", True), ("depth", True), ("canny", False))  # at most 3 units
UNIT_OPTIONS = ("enabled", "condition", "annotator", "strength", "control_start", "control_end")


def _annotator_choices(condition_name: str) -> list[tuple[str, str]]:
    """ "" (the condition's own default, so API callers can change only the condition) first."""
    from annotators import ANNOTATORS

    names = CONDITIONS[condition_name].annotators
    return [(f"Default ({ANNOTATORS[names[0]].label})", "")] + [
        (ANNOTATORS[name].label, name) for name in names
    ]


def _unit_controls(number: int, condition_name: str, enabled: bool, limits, defaults):
    """One unit's column; returns its controls by API keyword (without the `_k` suffix)."""
    uploads = [(c.label, c.name) for c in CONDITIONS.values() if c.input_kind == "upload"]
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
                label="Image" if number == 1 else "Image (empty: uses unit 1's)",
                sources=["upload", "clipboard"],
                height=220,
            ),
        }
        with gr.Accordion("Draw a scribble instead", open=False):
            sketch = gr.Sketchpad(
                type="numpy",
                image_mode="RGBA",
                canvas_size=CANVAS_SIZE,
                brush=gr.Brush(colors=["#000000"], color_mode="fixed", default_size=6),
                show_label=False,
            )
            use_sketch = gr.Button("Use this drawing", size="sm")
        controls["strength"] = strength_slider(limits, defaults, label="Strength")
        controls.update(window_sliders(defaults))

    condition, annotator = controls["condition"], controls["annotator"]
    condition.change(
        lambda name: gr.update(
            choices=_annotator_choices(name), value=CONDITIONS[name].annotators[0]
        ),
        inputs=condition,
        outputs=annotator,
        api_visibility="private",
    )
    # A drawing becomes this unit's image, read as a scribble (dark strokes on white).
    use_sketch.click(
        user_errors(lambda value: (canvas_image(value), "scribble", True)),
        inputs=sketch,
        outputs=[controls["image"], condition, controls["enabled"]],
        api_visibility="private",
    )
    return controls


def build_compose_tab(
    engine,
    limits: Limits,
    defaults: Defaults,
    models: dict[str, gr.components.Component],
    store: PngStore,
) -> None:
    units = UNIT_PRESETS[: limits.max_units]
    with gr.Tab("Compose", id="compose"):
        gr.Markdown(
            "Several conditions at once, as in the paper's Fig. 6 (pose + depth): each unit's "
            "ControlNet adds its residuals. A unit with no image of its own uses unit 1's."
        )
        with gr.Row(equal_height=False):
            unit_controls = [
                _unit_controls(number, name, enabled, limits, defaults)
                for number, (name, enabled) in enumerate(units, start=1)
            ]
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", placeholder="e.g. a chef in a kitchen")
                run = gr.Button("Run", variant="primary")
                with gr.Accordion("Advanced options", open=False):
                    options = generation_controls(limits, defaults, per_unit=False)
                gr.Examples(
                    examples=[
                        [str(PROJECT_ROOT / "assets" / "astronaut.png"), "a chef in a kitchen"]
                    ],
                    inputs=[unit_controls[0]["image"], prompt],
                )
            with gr.Column():
                gallery = gr.Gallery(
                    label="Control maps, then images", format="png", columns=2, height="auto"
                )
                seed_used = gr.Number(
                    label="Seed used", precision=0, interactive=False, placeholder="after a run"
                )

    # API keywords: unit 1's image is `image`; every other unit field gets the suffix `_k`.
    first_image = unit_controls[0].pop("image")
    unit_inputs = {
        f"{name}_{number}": component
        for number, controls in enumerate(unit_controls, start=1)
        for name, component in controls.items()
    }

    # image_2 / image_3 default to None so API callers may leave them out (unit 1's is used).
    @user_errors
    def compose(image, prompt, image_2=None, image_3=None, progress=gr.Progress(), **kwargs):
        images = (image, image_2, image_3)
        raw_units = []
        for number in range(1, len(units) + 1):
            unit = {name: kwargs.pop(f"{name}_{number}") for name in UNIT_OPTIONS}
            unit["image"] = images[number - 1]
            raw_units.append(unit)

        def call(on_progress, on_preview):
            return engine.compose(
                raw_units, prompt, on_progress=on_progress, on_preview=on_preview, **kwargs
            )

        yield from stream_generation(call, progress, store)

    name_input_errors({**unit_inputs, **options, **models})
    gr.on(
        triggers=[run.click, prompt.submit],
        fn=compose,
        inputs=[first_image, prompt],
        inputs_kwargs={**unit_inputs, **options, **models},
        outputs=[gallery, seed_used],
        api_name="compose",
        concurrency_id=GPU_QUEUE,
    )
