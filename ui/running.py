"""Run and Stop: what a tab's buttons do while a generation runs.

Run shows as busy (and cannot be pressed again) until the run ends; Stop cancels it. Cancelling
the Gradio event frees the GPU queue slot at once; the engine, which runs in a worker thread, sees
the session's stop switch at its next denoising step and gives the models back. On a narrow
screen (a phone) Run also scrolls to the result, which sits below the controls there.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import gradio as gr

from errors import UserFacingError

logger = logging.getLogger(__name__)
RUN_LABEL, BUSY_LABEL = "Run", "Running…"
NARROW_SCREEN_PX = 768  # below this Gradio stacks the columns: the result is under the controls


class RunStoppedError(UserFacingError):
    """The person pressed Stop: the run ends at its next step."""


class StopSwitches:
    """One switch per browser session: Stop sets it, the session's running generation sees it."""

    def __init__(self):
        self._switches: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def arm(self, session: str | None) -> threading.Event:
        """A fresh, unset switch for a run of `session` (an API call without one gets its own)."""
        switch = threading.Event()
        if session:
            with self._lock:
                self._switches[session] = switch
        return switch

    def stop(self, session: str | None) -> bool:
        """Set `session`'s switch; whether a run of it was listening."""
        with self._lock:
            switch = self._switches.pop(session, None) if session else None
        if switch is None:
            return False
        switch.set()
        return True


STOPS = StopSwitches()


def checked_progress(report: Callable[[int, int], None], switch: threading.Event) -> Callable:
    """`report` for the engine's progress callback, raising RunStoppedError once `switch` is set."""

    def on_progress(step: int, total: int) -> None:
        if switch.is_set():
            logger.info("Run stopped at step %d of %d", step, total)
            raise RunStoppedError("Stopped: the run was cancelled before it finished.")
        report(step, total)

    return on_progress


def session_of(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None)


def run_buttons() -> tuple[gr.Button, gr.Button]:
    """Run, and Stop beside it (shown only while a run goes)."""
    run = gr.Button(RUN_LABEL, variant="primary", elem_classes=["run-button"])
    stop = gr.Button("Stop", variant="stop", visible=False, elem_classes=["stop-button"])
    return run, stop


def _busy() -> tuple[dict, dict]:
    return gr.update(value=BUSY_LABEL, interactive=False), gr.update(visible=True)


def _idle() -> tuple[dict, dict]:
    return gr.update(value=RUN_LABEL, interactive=True), gr.update(visible=False)


def _scroll_to(elem_id: str) -> str:
    return (
        f"() => {{ if (window.innerWidth < {NARROW_SCREEN_PX}) "
        f"document.getElementById('{elem_id}')?.scrollIntoView({{block: 'start'}}); }}"
    )


def run_with_stop(
    triggers: list,
    run: gr.Button,
    stop: gr.Button,
    seed_used: gr.Number,
    result_id: str,
    **generation: Any,
) -> Any:
    """The generation event (`gr.on(triggers, **generation)`), with Run busy while it runs and
    idle after, Stop to cancel it, the seed used shown once a run has given one, and a narrow
    screen scrolled to `result_id`. Returns the generation's event."""
    # Registered before the generation: the page runs a trigger's events in this order, and a
    # busy state set after the generation would show only once it ended.
    gr.on(
        triggers=triggers,
        fn=_busy,
        outputs=[run, stop],
        queue=False,
        api_visibility="private",
        show_progress="hidden",
    )
    gr.on(triggers=triggers, fn=None, js=_scroll_to(result_id), api_visibility="private")
    event = gr.on(triggers=triggers, **generation)
    event.then(_idle, outputs=[run, stop], api_visibility="private", show_progress="hidden")
    event.success(
        lambda: gr.update(visible=True),
        outputs=seed_used,
        api_visibility="private",
        show_progress="hidden",
    )

    def stopped(request: gr.Request):
        if STOPS.stop(session_of(request)):
            gr.Info("Stopped.")
        return _idle()

    stop.click(
        stopped,
        outputs=[run, stop],
        cancels=[event],
        api_visibility="private",
        show_progress="hidden",
    )
    return event
