"""The condition registry: one entry per tab and API endpoint.

A condition pairs the annotators that make its control maps with the ControlNet trained on them (a
role in `settings.DEFAULT_MODEL_IDS`). The UI builds one tab per entry with one factory; the engine
looks conditions up here. Adding a condition is adding an entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from annotators import ANNOTATORS, Param
from errors import look_up


@dataclass(frozen=True)
class Condition:
    name: str  # tab id and API endpoint (/name)
    label: str  # tab title
    controlnet_role: str  # key into Settings.model_ids
    annotators: tuple[str, ...]  # the first one is the default; "none" = my image is the map
    input_kind: Literal["upload", "canvas"] = "upload"
    description: str = ""
    # Annotators whose maps another ControlNet was trained on (e.g. MiDaS normals -> v1.0 normal).
    controlnet_role_by_annotator: Mapping[str, str] = field(default_factory=dict)
    # A mask is needed (the inpaint ControlNet): the page opens its "Start from an image" editor.
    needs_mask: bool = False
    # (file in assets/, prompt) pairs shown under the tab.
    examples: tuple[tuple[str, str], ...] = ()
    # What the prompt box suggests, where a prompt is not a description (ip2p: an instruction);
    # "" = the page's own suggestion.
    prompt_hint: str = ""
    # Request options whose default differs here, as the condition's model was trained (the anime
    # line-art ControlNet: CLIP skip 2). The tab, its endpoint and the CLI start from them.
    option_defaults: Mapping[str, Any] = field(default_factory=dict)

    def controlnet_role_for(self, annotator: str) -> str:
        return self.controlnet_role_by_annotator.get(annotator, self.controlnet_role)

    @property
    def params(self) -> tuple[Param, ...]:
        """Every parameter of every annotator this condition offers, each name once."""
        seen: dict[str, Param] = {}
        for name in self.annotators:
            for param in ANNOTATORS[name].params:
                seen.setdefault(param.name, param)
        return tuple(seen.values())

    @property
    def default_detect_resolution(self) -> int | None:
        resolutions = [ANNOTATORS[name].default_detect_resolution for name in self.annotators]
        return next((r for r in resolutions if r is not None), None)


CONDITIONS: dict[str, Condition] = {
    condition.name: condition
    for condition in (
        Condition(
            "canny",
            "Canny",
            "canny",
            ("canny", "none"),
            description="Edges of your photo (Canny) steer the composition.",
            examples=(
                ("astronaut.png", "a robot astronaut, studio photo"),
                ("coffee.jpg", "a cup of tea on a wooden table"),
            ),
        ),
        Condition(
            "mlsd",
            "Lines (M-LSD)",
            "mlsd",
            ("mlsd", "none"),
            description="Straight lines of your photo (M-LSD) steer the layout: rooms, buildings.",
            examples=(("rocket.jpg", "a futuristic tower at sunset"),),
        ),
        Condition(
            "hed",
            "Soft edge (HED, PiDiNet)",
            "softedge",
            ("hed", "hed_safe", "pidinet", "pidinet_safe", "none"),
            description="Soft edges of your photo (HED, or PiDiNet: a network of 0.7 M "
            "parameters against HED's 14.7 M) keep its shapes and details. The safe variants "
            "quantise the edges to three grey levels.",
            examples=(("chelsea.jpg", "a tiger, national geographic photo"),),
        ),
        Condition(
            "scribble",
            "Scribble",
            "scribble",
            ("scribble", "none"),
            description="Upload a drawing: dark strokes on light paper.",
            examples=(("scribble_house.png", "a cosy cottage by a tree, watercolour"),),
        ),
        Condition(
            "fake_scribble",
            "Fake scribble",
            "scribble",
            ("fake_scribble", "none"),
            description="A scribble made from your photo's soft edges steers the image loosely.",
            examples=(("coffee.jpg", "a bowl of ramen"),),
        ),
        Condition(
            "scribble_interactive",
            "Scribble (draw)",
            "scribble",
            ("scribble",),
            input_kind="canvas",
            description="Draw black strokes on the white canvas.",
            examples=(("scribble_house.png", "a cottage by a tree, oil painting"),),
        ),
        Condition(
            "openpose",
            "Pose",
            "openpose",
            ("openpose", "dw_openpose", "dw_openpose_full", "mediapipe_pose", "none"),
            description="A person's pose (OpenPose skeleton; hands and face optional). DWPose "
            "finds whole bodies (body only, or with hands and face) and draws the same skeleton. "
            "Without the OpenPose weights, MediaPipe's bundled models draw it.",
            examples=(("astronaut.png", "a chef in a kitchen, smiling"),),
        ),
        Condition(
            "depth",
            "Depth",
            "depth",
            ("depth_midas", "depth_zoe", "depth_anything_v2", "none"),
            description="Depth of your photo (near = bright: MiDaS, ZoeDepth or Depth Anything "
            "V2) keeps its 3D layout.",
            examples=(("chelsea.jpg", "a fox curled up, autumn leaves"),),
        ),
        Condition(
            "normal",
            "Normal map",
            "normal",
            ("normal_bae", "normal_midas", "none"),
            description="Surface normals of your photo keep its shapes and lighting geometry. "
            "NormalBAE maps go to the v1.1 model, MiDaS normals to the paper's v1.0 model.",
            controlnet_role_by_annotator={"normal_midas": "normal_midas"},
            examples=(("coffee.jpg", "a ceramic bowl of soup, top view"),),
        ),
        Condition(
            "seg",
            "Segmentation",
            "seg",
            ("seg_upernet", "seg_oneformer_ade20k", "seg_oneformer_coco", "none"),
            description="Segmentation of your photo (ADE20K classes, or COCO's with OneFormer "
            "COCO, each in its own palette; or your own colour map) sets what goes where.",
            examples=(("rocket.jpg", "a lighthouse on a cliff"),),
        ),
        Condition(
            "tile",
            "Tile (details)",
            "tile",
            ("tile_resample", "none"),
            description="Your photo, blurred by down-sampling, keeps its layout and colours while "
            "the model draws new detail into it: describe the picture in the prompt. A higher "
            "down sampling rate gives the model more freedom. There is no v1.0 tile model: with "
            "v1.0 chosen, this tab runs the v1.1 one.",
            examples=(("coffee.jpg", "a cup of coffee on a saucer, highly detailed, sharp focus"),),
        ),
        Condition(
            "ip2p",
            "Instruct Pix2Pix",
            "ip2p",
            ("none",),
            description="Edit your photo by instruction: the photo itself steers the image (no "
            'annotator), and the prompt says what to change, e.g. "make it winter" or '
            '"turn it into a painting". There is no v1.0 model: with v1.0 chosen, this tab runs '
            "the v1.1 one.",
            examples=(("chelsea.jpg", "make it winter"),),
            prompt_hint="e.g. make it winter",
        ),
        Condition(
            "lineart",
            "Line art",
            "lineart",
            ("lineart", "lineart_coarse", "lineart_standard", "line_drawing", "none"),
            description="Line art drawn from your photo (realistic or coarse, by a network; "
            "standard: from the image's dark lines, no network) steers the image, as in the "
            "paper's cartoon line drawings. For a drawing of your own choose line drawing: black "
            "lines on white become the white-on-black lines the model was trained on. There is "
            "no v1.0 line art model: with v1.0 chosen, this tab runs the v1.1 one.",
            examples=(
                ("lineart_teapot.png", "a porcelain teapot with a cup, watercolour illustration"),
                ("chelsea.jpg", "a cat, clean anime line art coloured"),
            ),
        ),
        Condition(
            "lineart_anime",
            "Anime line art",
            "lineart_anime",
            ("lineart_anime", "line_drawing", "none"),
            description="Anime line art drawn from your picture (by a network trained on anime "
            "drawings) steers the image. For a drawing of your own choose line drawing: black "
            "lines on white become the white-on-black lines the model was trained on. It works "
            "best with an anime base model, at CLIP skip 2 (the tab's default: the model was "
            "trained so) and with long prompts if you like. There is no v1.0 anime line art "
            "model: with v1.0 chosen, this tab runs the v1.1 one.",
            option_defaults={"clip_skip": 2},
            examples=(
                ("lineart_anime_girl.png", "1girl, smiling, short hair, school uniform, anime"),
            ),
        ),
        Condition(
            "shuffle",
            "Shuffle (style)",
            "shuffle",
            ("shuffle", "none"),
            description="Your photo's content, shuffled by a smooth random flow (the request's "
            "seed draws it), gives the image its colours and textures but not its layout: a "
            "style reference. The model steers the prompt's branch only, every depth alike. "
            "There is no v1.0 shuffle model: with v1.0 chosen, this tab runs the v1.1 one.",
            examples=(("chelsea.jpg", "a cosy living room"),),
        ),
        Condition(
            "inpaint",
            "Inpaint",
            "inpaint",
            ("none",),
            description="Repaint part of your photo: paint over the area to change in the "
            "Start from an image editor below (a mask is needed), or extend the canvas with the "
            "outpaint settings there; describe the whole picture in the prompt. The inpaint "
            "ControlNet sees the photo with the area to repaint blanked out (at -1, as it was "
            "trained), so the new pixels continue the kept ones. There is no v1.0 inpaint model: "
            "with v1.0 chosen, this tab runs the v1.1 one.",
            needs_mask=True,
        ),
    )
}


def get_condition(name: str) -> Condition:
    return look_up(CONDITIONS, name, "condition")
