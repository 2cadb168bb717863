"""One Ray Serve replica: an `Engine` of its own, and a streaming method that runs one request.

Serve starts this class in a worker process per replica (one GPU each where there are GPUs). The
engine keeps its caches (base model, ControlNets, annotators, compiled graphs) for the replica's
life, and loads each model on first use as the single engine does. Requests arrive already
checked by the front process (`serving.remote`): the replica runs them, it does not parse them.

`stream` is an async generator: the engine runs in a thread, and its progress and TAESD
previews are sent back as they come, then the result (or the request's user-facing error). When
the caller cancels (Stop on the page, a closed connection), Serve cancels the generator; the
stop switch set then ends the engine's run at its next denoising step, as Stop does today.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

from errors import UserFacingError

logger = logging.getLogger(__name__)
ENDING_EVENTS = ("result", "error")


class CallerLeftError(Exception):
    """Raised in the engine's thread once the caller has cancelled: the run ends at its next
    step and gives the device back to the next request."""


class EngineReplica:
    def __init__(self, settings):
        from pipelines.engine import Engine  # torch is imported in the replica only from here

        self.engine = Engine(settings)
        if settings.warm_up and self.engine.fast_path:  # as app.py does for its one engine
            threading.Thread(target=self._warm_up, daemon=True).start()

    def _warm_up(self) -> None:
        try:
            self.engine.warm_up()
        except Exception as error:  # noqa: BLE001 (e.g. models missing: requests say so)
            logger.warning("Fast-path warm-up skipped: %s", error)

    def info(self) -> dict[str, Any]:
        """What the page shows about the engine, and this replica's process id."""
        engine = self.engine
        return {
            "device": str(engine.device),
            "describe": engine.describe(),
            "fast_path": engine.fast_path,
            "pid": os.getpid(),
        }

    async def stream(self, kind: str, request, progress: bool = False, previews: bool = False):
        """Run one checked request of `kind` ("generate", "map" or "upscale"), yielding
        ("progress", step, total), ("preview", images, step, total), then ("result", result,
        timing) or ("error", user_facing_error). Any other error is raised (a bug: Serve hands
        it to the caller with its traceback)."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def send(*event) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        def on_progress(step: int, total: int) -> None:
            if stop.is_set():
                raise CallerLeftError(f"the caller left at step {step} of {total}")
            if progress:
                send("progress", step, total)

        def on_preview(images, step: int, total: int) -> None:
            send("preview", images, step, total)

        def work() -> None:
            try:
                result = self._run(kind, request, on_progress, on_preview if previews else None)
                send("result", result, self.engine.last_timing)
            except UserFacingError as error:
                send("error", error)
            except CallerLeftError as error:
                logger.info("Request stopped: %s", error)
                send("crash", error)
            except BaseException as error:  # noqa: BLE001 (raised below, in the caller's stream)
                logger.exception("The request failed")
                send("crash", error)

        threading.Thread(target=work, daemon=True).start()
        try:
            while True:
                event = await events.get()
                if event[0] == "crash":
                    raise event[1]
                yield event
                if event[0] in ENDING_EVENTS:
                    return
        finally:
            stop.set()  # cancelled or done: a run still going ends at its next step

    def _run(self, kind: str, request, on_progress, on_preview):
        if kind == "generate":
            return self.engine.run(request, on_progress, on_preview)
        if kind == "upscale":
            return self.engine.run_upscale(request, on_progress)
        if kind == "map":
            return self.engine.run_map(request)
        raise ValueError(f"unknown request kind {kind!r}")
