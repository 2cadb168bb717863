"""What the page says about this server at each visit: which tabs can run (their models are here,
or downloadable, or missing with the command that fetches them), and on a CPU how long an image
takes. The developer's details (device, precision, attention, fast path) sit in a collapsed
"System" panel at the foot of the page.
"""

from __future__ import annotations

import gradio as gr

from annotators import ANNOTATORS
from availability import ConditionStatus, command, lcm_available, statuses


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def tab_note(status: ConditionStatus) -> str:
    """The tab's own note: empty when it is ready; else what is missing, what still works, and
    the command that fixes it."""
    condition = status.condition
    default = ANNOTATORS[condition.annotators[0]]
    if status.ready:
        return ""
    if status.downloads:
        needs = [*status.run_missing, *status.default_annotator_missing]
        return (
            f"The first Run here downloads {_join([need.words for need in needs])} (this can "
            f"take a while); `{command(needs)}` fetches them beforehand."
        )
    sentences = []
    if status.run_missing:
        sentences.append(
            f"**Run cannot work here yet:** {_join([need.words for need in status.run_missing])} "
            "is not on this server, and downloads are off (HF_HUB_OFFLINE). Run "
            f"`{command(status.run_missing)}` with internet access, then reload the page."
        )
        if not status.default_annotator_missing:
            sentences.append("Preview map works already.")
    if status.default_annotator_missing:
        missing = status.default_annotator_missing
        others = [
            ANNOTATORS[name].label
            for name in condition.annotators[1:]
            if name not in status.annotator_missing
        ]
        sentences.append(
            f"**Missing model:** the {default.label} annotator needs "
            f"{_join([need.words for need in missing])}, which is not on this server: run "
            f"`{command(missing)}`."
            + (f" Until then, choose {' or '.join(others)}." if others else "")
        )
    return " ".join(sentences)


def page_summary(by_condition: dict[str, ConditionStatus]) -> str:
    """One line for the top of the page when some tab lacks models; empty when all are ready."""
    waiting = [status for status in by_condition.values() if not status.ready]
    if not waiting:
        return ""
    names = _join([status.condition.label for status in waiting])
    if all(status.downloads for status in waiting):
        return f"Models for {names} are downloaded on their first Run."
    needs = [
        need
        for status in waiting
        for need in (*status.run_missing, *status.default_annotator_missing)
    ]
    return (
        f"{names} {'lacks' if len(waiting) == 1 else 'lack'} models on this server "
        f"(`{command(needs)}` fetches them); the other tabs are ready."
    )


def speed_hint(engine) -> str:
    """On a CPU, how long an image takes (measured on the last run, once there is one) and what
    makes it faster; nothing on a GPU."""
    if engine.device.type != "cpu":
        return ""
    faster = ["fewer steps", "a lower resolution"]
    if lcm_available(engine.settings):
        faster.append("the LCM sampler (4-8 steps)")
    faster_words = f"{_join(faster)} are faster" if len(faster) > 1 else f"{faster[0]} is faster"
    last = engine.last_timing
    if last is None:
        return f"Runs on a CPU: an image takes a while; {faster_words}."
    height, width = last.size
    return (
        f"On this CPU the last image took {last.seconds_per_image:.0f} s ({last.steps} steps, "
        f"{width}x{height}); {faster_words}."
    )


class StatusNotes:
    """The page's status texts: the summary and hint at the top, one note per condition tab;
    each is refreshed when a page loads (models may have been downloaded meanwhile)."""

    def __init__(self, engine):
        self.engine = engine
        self.summary = gr.Markdown(visible=False, elem_id="model-status")
        self.hint = gr.Markdown(visible=False, elem_id="speed-hint")
        self.tabs: dict[str, gr.Markdown] = {}

    def tab(self, condition_name: str) -> gr.Markdown:
        note = gr.Markdown(visible=False, elem_classes=["model-note"])
        self.tabs[condition_name] = note
        return note

    def _updates(self) -> list[dict]:
        by_condition = statuses(self.engine.settings)
        texts = [page_summary(by_condition), speed_hint(self.engine)]
        texts += [tab_note(by_condition[name]) for name in self.tabs]
        return [gr.update(value=text, visible=bool(text)) for text in texts]

    def refresh_on_load(self, demo: gr.Blocks) -> None:
        demo.load(
            self._updates,
            outputs=[self.summary, self.hint, *self.tabs.values()],
            api_visibility="private",
            show_progress="hidden",
        )


def system_panel(engine) -> None:
    """The developer's details, collapsed at the foot of the page."""
    with gr.Accordion("System", open=False, elem_id="system-panel"):
        gr.Markdown(engine.describe(), elem_id="engine-info")
