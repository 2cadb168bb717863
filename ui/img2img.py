"""Start from an image: the accordion every generate tab and Compose share for image-to-image and
inpainting.

The person paints the mask over the initial image in an image editor; the generate events take two
plain images instead (API keywords `init_image` and `mask`, hidden on the page), which the editor
fills on every change: API callers send files, never an editor's layers. With no initial image the
engine starts from the tab's input photo; "Paint on the input photo" puts that photo in the editor.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from settings import Limits
from ui.controls import BRUSH_ON_OPEN, controls_for

GROUP = "image_to_image"  # the request options of pipelines.request shown here
MASK_COLOUR = "#ff00ff"  # the brush: any painted pixel is in the mask, whatever its colour


def split_editor(value: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """An editor value -> (initial image RGB, mask L: 255 where painted), None where absent."""
    if not isinstance(value, dict):
        return None, None
    background = value.get("background")
    image = None
    if background is not None and np.asarray(background).size:
        background = np.asarray(background)
        transparent = (
            background.ndim == 3 and background.shape[-1] == 4 and not background[..., 3].any()
        )
        image = None if transparent else background[..., :3]  # no upload: a transparent sheet
    painted = None
    for layer in value.get("layers") or []:
        layer = np.asarray(layer)
        if layer.ndim == 3 and layer.shape[-1] == 4:
            alpha = layer[..., 3] > 0
            painted = alpha if painted is None else painted | alpha
    mask = None if painted is None or not painted.any() else painted.astype(np.uint8) * 255
    return image, mask


def image_to_image_controls(
    limits: Limits,
    defaults: dict[str, Any],
    photo: gr.components.Component | None,
    open_: bool = False,
) -> dict[str, gr.components.Component]:
    """The accordion's controls by API keyword: `init_image`, `mask`, then the group's options.
    `photo`: the tab's input image, for "Paint on the input photo" (None: no such button);
    `open_`: shown open (a tab that cannot run without a mask)."""
    label = "Start from an image: image to image, inpainting, outpainting"
    with gr.Accordion(label, open=open_):
        gr.Markdown(
            "Set the denoising strength below 1 to start from an image instead of noise: the "
            "input photo, or one you put here. Paint over it to repaint only there (inpainting); "
            "the rest is kept. The outpaint settings extend the canvas: the new area is painted."
        )
        editor = gr.ImageEditor(
            label="Initial image (empty: the input photo); paint the area to repaint",
            type="numpy",
            image_mode="RGBA",
            sources=["upload", "clipboard"],
            brush=gr.Brush(colors=[MASK_COLOUR], color_mode="fixed", default_size=24),
            layers=False,
            transforms=(),
            format="png",  # lossless: the kept pixels must come back exactly
            elem_classes=["init-editor"],
        )
        use_photo = gr.Button("Paint on the input photo", size="sm") if photo else None
        # What the generate events read (API keywords); the editor fills them.
        init_image = gr.Image(label="Initial image", type="filepath", format="png", visible=False)
        mask = gr.Image(label="Mask", type="filepath", image_mode="L", format="png", visible=False)
        options = controls_for(GROUP, limits, defaults)
    editor.change(
        split_editor,
        inputs=editor,
        outputs=[init_image, mask],
        api_visibility="private",
        show_progress="hidden",
    )
    if use_photo is not None:
        use_photo.click(
            lambda path: {"background": path, "layers": [], "composite": path} if path else None,
            inputs=photo,
            outputs=editor,
            api_visibility="private",
        ).then(fn=None, js=BRUSH_ON_OPEN, api_visibility="private")
    return {"init_image": init_image, "mask": mask, **options}
