"""The web page: a header, one tab per condition (all from one factory) and the control-map tab.

The UI never imports torch: it receives the engine and calls its `generate` and `annotate`.
"""

from __future__ import annotations

import gradio as gr

from conditions import CONDITIONS
from settings import Settings
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
        with gr.Tabs():
            for condition in CONDITIONS.values():
                build_condition_tab(condition, engine, settings.limits, settings.defaults)
            build_annotate_tab(engine, settings.limits, settings.defaults)
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=1)
    return demo
