"""The web page: a header with what this server can run, one tab per condition (all from one
factory), Compose, the control-map tab, and a collapsed System panel.

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
from ui.status import StatusNotes, system_panel
from ui.tab import build_annotate_tab, build_condition_tab
from ui.upscale import build_upscale_tab, send_results_to_upscale

TITLE = "ControlNet for Stable Diffusion 1.5"
# Given to `launch(css=...)` (Gradio 6 takes a page's CSS there).
PAGE_CSS = """
/* Every result and its caption in view: the gallery grows with its items, never scrolls. */
.result-gallery .grid-wrap.fixed-height { max-height: none; height: auto; overflow: visible; }
/* The drawing paper is square: its frame too, so the paper shows whole and fills it. */
.drawing-paper.block { height: auto !important; }
.drawing-paper .image-container { aspect-ratio: 1 / 1; width: 100%; height: auto; max-height: none }
/* The server's status lines: small, so the work area starts high on a phone. */
#model-status .prose, #speed-hint .prose { font-size: var(--text-sm); line-height: 1.4; }
#model-status p, #speed-hint p { margin: 0; }
"""


def build_demo(engine, settings: Settings) -> gr.Blocks:
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(
            f"# {TITLE}\nSteer Stable Diffusion with edges, scribbles and more "
            "([Zhang, Rao, Agrawala 2023](https://arxiv.org/abs/2302.05543)). "
            "Upload an image or draw, type a prompt, press Run."
        )
        notes = StatusNotes(engine)
        limits, defaults = settings.limits, request_defaults(settings)
        with gr.Row():
            models = model_controls(engine.base_model_names, limits, defaults)
        page = Page(engine, limits, defaults, models, PngStore(), to_upscale=[])
        with gr.Tabs() as tabs:
            for condition in CONDITIONS.values():
                build_condition_tab(condition, page, notes)
            build_compose_tab(page)
            upscale_inputs = build_upscale_tab(page)
            build_annotate_tab(page)
        send_results_to_upscale(page.to_upscale, upscale_inputs, tabs)
        system_panel(engine)
        notes.refresh_on_load(demo)
    # Every GPU event shares one concurrency id (ui.controls.GPU_QUEUE) and takes this default:
    # one run at a time for one engine, one per replica when Ray Serve runs the engine.
    demo.queue(
        max_size=settings.queue_size,
        default_concurrency_limit=getattr(engine, "concurrent_runs", 1),
    )
    return demo
