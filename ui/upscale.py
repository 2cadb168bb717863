"""The Upscale tab and the /upscale endpoint: an image enlarged and repainted in tiles with the tile
ControlNet (`pipelines.upscale`).

Its options come from the request's declarations like every tab's: the upscale's own (factor, tile
size, overlap), the denoising strength (the upscale's default: low), the tile ControlNet's
strength, and the sampling, model and speed options a generation has.
"""

from __future__ import annotations

import gradio as gr

from pipelines.request import SHARED_OPTIONS
from pipelines.upscale import DEFAULT_STRENGTH
from ui.controls import (
    GPU_QUEUE,
    Page,
    controls_for,
    name_input_errors,
    option_control,
    result_column,
    sampling_controls,
    speed_controls,
    upload_image,
    user_errors,
)
from ui.results import stream_generation
from ui.running import run_buttons, run_with_stop

TAB_ID = "upscale"
DESCRIPTION = (
    "Make an image larger with new detail: it is enlarged, then repainted at a low denoising "
    "strength with the tile ControlNet, in overlapping tiles blended together when the result is "
    "larger than one tile. Drop a PNG made here (or any image) and describe it in the prompt."
)


def build_upscale_tab(page: Page) -> tuple[gr.Image, gr.Textbox]:
    """The tab; returns its image and prompt, which other tabs' results can be sent to."""
    engine, limits, defaults, models, store, _ = page
    with gr.Tab("Upscale", id=TAB_ID):
        gr.Markdown(DESCRIPTION)
        with gr.Row():
            with gr.Column():
                image = upload_image(limits, label="Image to upscale")
                prompt = gr.Textbox(label="Prompt", placeholder="what the image shows")
                with gr.Row():
                    run, stop = run_buttons()
                own = controls_for("upscale", limits, defaults)
                strength = {
                    "denoising_strength": option_control(
                        SHARED_OPTIONS["denoising_strength"],
                        limits,
                        DEFAULT_STRENGTH,
                        maximum=0.95,  # 1 would repaint from noise: refused
                        info="How much each tile is repainted: 0.2-0.5 keeps the image and adds "
                        "detail; higher invents more.",
                    ),
                }
                with gr.Accordion("Advanced options", open=False):
                    unit = controls_for("unit", limits, defaults)
                    sampling = sampling_controls(limits, defaults)
                    clip = controls_for("clip", limits, defaults)
                    speed = speed_controls(limits, defaults)
            with gr.Column():
                gallery, seed_used, _ = result_column(
                    "Upscaled image", "result-upscale", restorable=False
                )

    @user_errors
    def upscale(image, prompt, request: gr.Request, progress=gr.Progress(), **kwargs):
        def call(on_progress, on_preview):
            return engine.upscale(image, prompt, on_progress=on_progress, **kwargs)

        yield from stream_generation(call, progress, store, request)

    controls = {**own, **strength, **unit, **sampling, **models, **speed, **clip}
    name_input_errors(controls)
    run_with_stop(
        [run.click, prompt.submit],
        run,
        stop,
        seed_used,
        "result-upscale",
        fn=upscale,
        inputs=[image, prompt],
        inputs_kwargs=controls,
        outputs=[gallery, seed_used],
        api_name=TAB_ID,
        concurrency_id=GPU_QUEUE,
    )
    return image, prompt


def upscale_button() -> gr.Button:
    """Under a tab's results: send the chosen image (and the prompt) to the Upscale tab."""
    return gr.Button("Upscale the selected image", size="sm")


def chosen_image(items: list | None, index: int | None) -> str | None:
    """The gallery item to upscale: the one selected, if it is an image (not a control map or a
    preview), else the first image; None when the gallery holds none."""
    images = [
        position
        for position, (_, caption) in enumerate(items or [])
        if (caption or "").startswith("Image")
    ]
    if not images:
        return None
    return items[index if index in images else images[0]][0]


def selected_index(event: gr.SelectData) -> int:
    return event.index


def send_results_to_upscale(
    sources: list, inputs: tuple[gr.Image, gr.Textbox], tabs: gr.Tabs
) -> None:
    """Each (gallery, prompt, button) of `sources`: the button puts the gallery's chosen image
    and the prompt into the Upscale tab's `inputs` and opens that tab."""
    image, prompt = inputs

    def send(items, index, text):
        path = chosen_image(items, index)
        if path is None:
            gr.Warning("Generate an image first: there is none to upscale yet.")
            return gr.update(), gr.update(), gr.update()
        return path, text, gr.Tabs(selected=TAB_ID)

    for gallery, source_prompt, button in sources:
        selected = gr.State(None)
        gallery.select(
            selected_index,
            outputs=selected,
            api_visibility="private",
            show_progress="hidden",
        )
        gallery.change(lambda: None, outputs=selected, api_visibility="private")
        button.click(
            send,
            inputs=[gallery, selected, source_prompt],
            outputs=[image, prompt, tabs],
            api_visibility="private",
        )
