"""What a generation shows: the gallery (control maps, then PNGs carrying their parameters) and
restoring a tab's settings from such a PNG.

Gradio's gallery would re-encode arrays (as webp by default), dropping any text chunk, so each
image is written here as a PNG with its parameters (png_info) and handed to the gallery as a file.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import queue
import tempfile
import threading
import uuid
from collections import deque
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import gradio as gr

from pipelines.request import SHARED_OPTIONS, UNIT_OPTIONS
from png_info import read_parameters, restore_values, save_png
from ui.running import STOPS, checked_progress, session_of

logger = logging.getLogger(__name__)


class PngStore:
    """Writes result PNGs to one temp folder and keeps only the newest `keep` of them (Gradio
    copies each into its own cache when it serves it, so older ones are no longer needed)."""

    def __init__(self, keep: int = 256, folder: Path | None = None):
        self.folder = folder or Path(tempfile.mkdtemp(prefix="controlnet-demo-"))
        self.keep = keep
        self._written: deque[Path] = deque()
        self._lock = threading.Lock()

    def write(self, image, parameters: dict[str, Any]) -> str:
        """The PNG, named as a person would save it (`canny-1299626776.png`), in a folder of
        its own (two runs may make the same name)."""
        folder = self.folder / uuid.uuid4().hex
        folder.mkdir()
        path = save_png(image, folder / download_name(parameters), parameters)
        with self._lock:
            self._written.append(path)
            while len(self._written) > self.keep:
                old = self._written.popleft()
                old.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    old.parent.rmdir()
        return str(path)


def download_name(parameters: dict[str, Any]) -> str:
    """`<condition>[-<condition>...]-<seed>.png`: what made the image, and how to make it again."""
    units = parameters.get("units") or []
    conditions = [unit.get("condition") for unit in units if isinstance(unit, dict)]
    stem = "-".join(str(name) for name in conditions if name) or "image"
    return f"{stem}-{parameters.get('seed', 'unknown')}.png"


def gallery_items(result, store: PngStore) -> list[tuple[Any, str]]:
    """Control maps first (captioned with their condition when several), then the images."""
    several = len(result.control_maps) > 1
    maps = [
        (control_map, f"Control map: {label}" if several else "Control map")
        for control_map, label in zip(result.control_maps, result.map_labels, strict=True)
    ]
    images = [
        (store.write(image, parameters), f"Image {index + 1} · seed {parameters['seed']}")
        for index, (image, parameters) in enumerate(
            zip(result.images, result.parameters, strict=True)
        )
    ]
    return maps + images


def with_previews(
    run: Callable[[Callable], Any], show: Callable[[list, int, int], Any]
) -> Generator[Any, None, Any]:
    """Run `run(on_preview)` in a worker thread; yield `show(images, step, total)` for each
    preview it sends, then return its result (or raise its error).

    The worker runs in a copy of this context, so Gradio's progress bar (which finds its event
    through context variables) still follows the denoising steps.
    """
    updates: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = run(lambda *preview: updates.put(preview))
        except BaseException as error:  # noqa: BLE001 (re-raised in the caller's thread)
            outcome["error"] = error
        finally:
            updates.put(None)

    context = contextvars.copy_context()
    worker = threading.Thread(target=context.run, args=(work,), daemon=True)
    worker.start()
    while (preview := updates.get()) is not None:
        yield show(*preview)
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def stream_generation(
    call: Callable[[Callable, Callable], Any],
    progress,
    store: PngStore,
    request: gr.Request | None = None,
    with_pose: bool = False,
) -> Generator[tuple[Any, ...], None, None]:
    """A generate handler's outputs, (gallery, seed used): TAESD previews while denoising, then
    the result. `call(on_progress, on_preview)` runs the engine; Stop in `request`'s session
    ends it at the next step. `with_pose` adds a third output, the pose the run drew (OpenPose
    JSON, or None), given with the result only."""
    switch = STOPS.arm(session_of(request))
    waiting = (gr.skip(),) if with_pose else ()

    @functools.partial(checked_progress, switch=switch)
    def report(step: int, total: int) -> None:
        progress((step, total), desc="Denoising", unit="steps")

    def show(images, step, total):
        return preview_items(images, step, total), gr.update(), *waiting

    result = yield from with_previews(lambda on_preview: call(report, on_preview), show)
    for warning in result.warnings:
        gr.Warning(warning)
    yield gallery_items(result, store), result.seed, *((result.pose,) if with_pose else ())


def preview_items(images: list, step: int, total: int) -> list[tuple[Any, str]]:
    """The gallery while denoising: TAESD's rough decode of each image so far."""
    return [
        (image, f"Preview {number}, step {step} of {total}")
        for number, image in enumerate(images, start=1)
    ]


def png_settings(file: Any) -> dict | None:
    """The parameters of a PNG made by this app; for any other file a message saying what to
    drop, and None: the handler then changes nothing (an error would mark every field it
    restores as failed, as if the person's settings were lost)."""
    parameters = read_parameters(file)
    if parameters is None:
        gr.Warning(
            "This PNG carries no settings from this app, so nothing was changed. Drop an image "
            "generated here (the files in the gallery, saved as PNG)."
        )
    return parameters


def unchanged(controls: dict[str, gr.components.Component]) -> dict:
    """A restore's answer that changes nothing (an empty dict would count as one value)."""
    return {component: gr.skip() for component in controls.values()}


def restored_values(
    values: dict[str, Any],
    controls: dict[str, gr.components.Component],
    seed: Any,
    note: str = "",
) -> dict[gr.components.Component, Any]:
    """`values` (by API keyword name) for those of `controls` the page has, with a message.

    A base model this server does not offer is kept out: the dropdown would refuse it.
    """
    base = values.get("base_model")
    base_choices = _choice_values(controls.get("base_model"))
    if base is not None and base_choices is not None and base not in base_choices:
        values = {name: value for name, value in values.items() if name != "base_model"}
        gr.Warning(f"The base model {base!r} is not offered here; the current one was kept.")
    restored = {controls[name]: value for name, value in values.items() if name in controls}
    logger.info("Restored %d settings from a PNG", len(restored))
    gr.Info(f"Restored {len(restored)} settings (seed {seed}).{note}")
    return restored


def restored_settings(
    file: Any, condition_name: str, controls: dict[str, gr.components.Component]
) -> dict[gr.components.Component, Any]:
    """Values for `controls` (by API keyword name) from a PNG made by this app, with a message."""
    parameters = png_settings(file) if file is not None else None
    if parameters is None:
        return unchanged(controls)
    values = restore_values(parameters)
    made_on = values.pop("condition", None)
    if made_on != condition_name:
        # Another tab's annotator and its parameters mean nothing here: restore the rest.
        for name in (
            "annotator",
            "detect_resolution",
            "pixel_perfect",
            *_unit_param_names(parameters),
        ):
            values.pop(name, None)
        gr.Warning(f"This PNG was made on the {made_on!r} tab: its shared settings were restored.")
    elif isinstance(parameters.get("units"), list):  # recorded only when on: off without it
        values.setdefault("pixel_perfect", UNIT_OPTIONS["pixel_perfect"].default)
    values, note = with_start_defaults(values)
    return restored_values(values, controls, parameters.get("seed"), note=note)


def with_start_defaults(values: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """`values` with every image-to-image option a PNG does not record set to its default (a
    text-to-image PNG records none: its denoising strength was 1), and the note for a PNG made
    from an initial image or a mask, which the PNG does not hold."""
    values = dict(values)
    for name, spec in SHARED_OPTIONS.items():
        if spec.group == "image_to_image":
            values.setdefault(name, spec.default)
    sources = [values.pop(name, None) for name in ("init_image_source", "mask_source")]
    words = ("an initial image", "a mask")
    used = [what for what, source in zip(words, sources, strict=True) if source]
    if not used:
        return values, ""
    them = "them" if len(used) > 1 else "it"
    return values, f" It was made from {' and '.join(used)}: drop {them} again."


def _unit_param_names(parameters: dict) -> list[str]:
    units = parameters.get("units") or [{}]
    params = units[0].get("params") if isinstance(units[0], dict) else None
    return list(params) if isinstance(params, dict) else []


def _choice_values(component) -> list[Any] | None:
    choices = getattr(component, "choices", None)
    if choices is None:
        return None
    return [choice[1] if isinstance(choice, tuple | list) else choice for choice in choices]
