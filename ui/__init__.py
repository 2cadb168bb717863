"""The web page: a header, one tab per condition (all from one factory) and the control-map tab.

The UI never imports torch: it receives the engine and calls its `generate` and `annotate`.
"""

from __future__ import annotations

import gradio as gr

from conditions import CONDITIONS
from pipelines.request import defaults as request_defaults
from settings import Settings
from ui.compose import build_compose_tab
from ui.controls import Page, model_controls
from ui.results import PngStore
from ui.tab import build_annotate_tab, build_condition_tab

TITLE = "ControlNet for Stable Diffusion 1.5"


def build_demo(engine, settings: Settings) -> gr.Blocks:
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(
            f"# {TITLE}\nSteer Stable Diffusion with edges, scribbles and more "
            "([Zhang, Rao, Agrawala 2023](https://arxiv.org/abs/2302.05543)). "
            "Upload an image or draw, type a prompt, press Run."
        )
        gr.Markdown(engine.describe(), elem_id="engine-info")
        limits, defaults = settings.limits, request_defaults(settings)
        with gr.Row():
            models = model_controls(engine.base_model_names, limits, defaults)
        page = Page(engine, limits, defaults, models, PngStore())
        with gr.Tabs():
            for condition in CONDITIONS.values():
                build_condition_tab(condition, page)
            build_compose_tab(page)
            build_annotate_tab(page)
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=1)
    return demo
