"""The pose input of the pose tabs and Compose units: a skeleton editor, and OpenPose JSON.

The editor (`ui/static/pose_editor.js`, in a `gr.HTML`) draws the people over the photo, lets a
person drag joints, add, remove, move and scale people and hide joints, and redraws the control
map in the browser at every move with `ui/static/pose_draw.js`, a port of the server's drawing
(annotators/pose_draw.py) that gives the same pixels. Its value is `{"source", "pose"}`; an edit
is written into the JSON text box, which is the API keyword `pose_json`: Run then draws the map
from the edited pose, as an API caller's JSON is drawn. A pose found by the annotator (Preview
map, or Compose's "Find the pose") only fills the editor: until it is edited, Run annotates the
photo again and gets the same map.

The JSON box takes an upload or pasted text; leaving it loads the pose into the editor (checked
by the server's reader, so a bad file gets the same message as from the API).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr

from annotators.pose_json import DRAWN_AT_ONCE, poses_from_json
from ui.controls import user_errors

STATIC = Path(__file__).parent / "static"
SCRIPTS = ("pose_draw.js", "pose_editor.js")

TEMPLATE = """
<div class="pose-editor" data-people="0">
  <div class="pose-editor-tools" role="toolbar" aria-label="Pose editor">
    <button type="button" data-action="add">Add a person</button>
    <button type="button" data-action="remove">Remove person</button>
    <button type="button" data-action="toggle" title="H">Hide / show joint</button>
    <button type="button" data-action="bigger" title="+">Bigger</button>
    <button type="button" data-action="smaller" title="-">Smaller</button>
    <button type="button" data-action="undo" title="Ctrl+Z">Undo</button>
    <button type="button" data-action="download">Download JSON</button>
    <button type="button" data-action="clear">Clear</button>
    <label><input type="checkbox" data-action="details"> Drag finger and facial points</label>
  </div>
  <canvas class="pose-editor-view" tabindex="0" width="512" height="512"
    aria-label="Pose: drag a joint, or press N and P to pick joints, arrow keys to move them
    (Shift: 10 pixels), H to hide or show one, + and - to scale the person"></canvas>
  <p class="pose-editor-status" aria-live="polite"></p>
  <details class="pose-editor-map-box" open>
    <summary>Control map (what Run draws from this pose)</summary>
    <canvas class="pose-editor-map" width="512" height="512"></canvas>
  </details>
</div>
"""

CSS = """
.pose-editor { display: flex; flex-direction: column; gap: 6px; }
.pose-editor-tools { display: flex; flex-wrap: wrap; gap: 4px; align-items: center; }
.pose-editor-tools button { padding: 4px 8px; border: 1px solid var(--border-color-primary);
  border-radius: var(--radius-sm); background: var(--button-secondary-background-fill);
  font-size: var(--text-sm); min-height: 32px; }
.pose-editor-tools label { font-size: var(--text-sm); display: flex; gap: 4px;
  align-items: center; }
.pose-editor-view { display: block; max-width: 100%; max-height: 70vh; width: auto; height: auto;
  touch-action: none; cursor: crosshair; background: #000; margin: 0 auto; }
.pose-editor-view:focus-visible { outline: 3px solid #ffd400; }
.pose-editor-status { font-size: var(--text-sm); margin: 0; min-height: 1.4em; }
.pose-editor-map { display: block; max-width: 50%; height: auto; }
"""


def _script() -> str:
    sources = "\n".join((STATIC / name).read_text() for name in SCRIPTS)
    return f"{sources}\nwindow.PoseEditor.mount(element, props, trigger, watch);"


def _editor_js(elem_id: str, call: str) -> str:
    """A browser-only event handler that calls the editor mounted in `elem_id`."""
    return (
        f"(...values) => {{ const editor = document.querySelector('#{elem_id} .pose-editor')"
        f"?.poseEditor; if (editor) {{ {call} }} return []; }}"
    )


# An edit becomes the JSON text (what Run uses); a detected pose leaves it empty (Run annotates
# again); a pose read from the text leaves the text as the person wrote it.
TEXT_FROM_EDITOR = """(value, text) => !value ? "" : value.source === "edit"
  ? JSON.stringify(value.pose) : value.source === "json" ? text : "" """


def editor_value(pose: dict[str, Any] | None, source: str) -> dict[str, Any] | None:
    """The editor's value for a pose: `source` "detect" or "json"."""
    return None if pose is None else {"source": source, "pose": pose}


class PoseInput(NamedTuple):
    text: gr.Code  # the JSON text: the API keyword `pose_json`
    editor: gr.HTML  # takes `editor_value`s: a detected pose goes here
    accordion: gr.Accordion  # to open when a pose arrives
    find: gr.Button | None  # "Find the pose in the image", when asked for


def pose_input(
    limits,
    elem_id: str,
    photo: gr.components.Component | None,
    label: str = "Edit the pose",
    find_button: bool = False,
) -> PoseInput:
    """The editor and the JSON box in an accordion called `label` (closed until a pose arrives),
    with a button to find the pose in the photo when `find_button`."""
    with gr.Accordion(label, open=False) as accordion:
        gr.Markdown(
            "Drag a joint to move it, the box around a person to move the person, its corner "
            "to scale it. Once edited, Run uses this pose instead of finding one in the photo.",
        )
        find = gr.Button("Find the pose in the image", size="sm") if find_button else None
        editor = gr.HTML(
            value=None,
            html_template=TEMPLATE,
            css_template=CSS,
            js_on_load=_script(),
            elem_id=elem_id,
            elem_classes=["pose-editor-block"],
            apply_default_css=False,
        )
        with gr.Accordion("Pose JSON (OpenPose format)", open=False):
            upload = gr.File(
                label="Upload a pose JSON",
                file_types=[".json"],
                type="filepath",
                elem_classes=["pose-json-upload"],
            )
            text = gr.Code(
                value="",
                label="…or paste it (used instead of the image; empty: the image)",
                language="json",
            )
    load = user_errors(lambda value: _loaded(value, limits))
    editor.change(
        fn=None,
        js=TEXT_FROM_EDITOR,
        inputs=[editor, text],
        outputs=text,
        api_visibility="private",
    )
    text.blur(load, inputs=text, outputs=editor, api_visibility="private")
    upload.upload(_read_text, inputs=upload, outputs=text, api_visibility="private").success(
        load, inputs=text, outputs=editor, api_visibility="private"
    )
    if photo is not None:
        photo.change(
            fn=None,
            js=_editor_js(elem_id, "editor.photoChanged(values[0] ? values[0].url : null);"),
            inputs=photo,
            api_visibility="private",
        )
    return PoseInput(text, editor, accordion, find)


def follow_annotator(elem_id: str, annotator: gr.components.Component) -> None:
    """The editor in `elem_id` draws in the chosen annotator's order (DWPose: every body first),
    as the server draws JSON for that annotator."""
    at_once = json.dumps(list(DRAWN_AT_ONCE))
    annotator.change(
        fn=None,
        js=_editor_js(elem_id, f"editor.setOrder({at_once}.includes(values[0]));"),
        inputs=annotator,
        api_visibility="private",
    )


def _loaded(text: str | None, limits) -> dict[str, Any] | None:
    """The editor's value for the JSON text: the server's reader checks it and writes it in
    pixels (so the editor reads one format); empty text: no pose."""
    if not text or not text.strip():
        return None
    pose = poses_from_json(text, limits.max_pose_people, limits.max_aspect_ratio)
    return editor_value(pose.to_json(), "json")


MAX_POSE_JSON_BYTES = 4 * 1024 * 1024  # 20 people of 137 points are about 100 KiB


def _read_text(path: str | None) -> str:
    if not path:
        return ""
    with open(path, "rb") as file:
        data = file.read(MAX_POSE_JSON_BYTES + 1)
    if len(data) > MAX_POSE_JSON_BYTES:
        raise gr.Error(f"The pose JSON is over {MAX_POSE_JSON_BYTES // 1024} KiB.")
    return data.decode("utf-8", errors="replace")
