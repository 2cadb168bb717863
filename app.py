"""ControlNet web demo: `python app.py [--host H] [--port P] [--share]`.

Builds the engine (nothing is loaded until the first request) and the Gradio page from the
registries, then serves it. Every setting comes from the environment (see settings.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import threading

from settings import PROJECT_ROOT, Settings

# transformers asks the Hub's conversion service for safetensors (and then loads them from the
# bot's pull-request branch) when a repo has only .bin weights, in the foreground or in a thread.
# The app loads only what MODELS_DIR, the cache or the repo's main branch hold. Set before
# transformers is imported (pipelines.engine imports it in main).
os.environ.setdefault("DISABLE_SAFETENSORS_CONVERSION", "1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="interface to listen on (0.0.0.0 for all; default 127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        help="port to listen on (default 7860)",
    )
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    return parser.parse_args(argv)


def warm_up(engine) -> None:
    """Compile the fast path for the default request while the page already serves; a request
    arriving meanwhile waits for it (one generation at a time) instead of compiling again."""
    try:
        engine.warm_up()
    except Exception as error:  # noqa: BLE001 (e.g. models not downloaded yet: requests say so)
        logging.getLogger(__name__).warning("Fast-path warm-up skipped: %s", error)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from a1111.routes import add_routes
    from pipelines.engine import Engine  # torch is imported here, not for --help
    from serving import ServeSettings
    from ui import PAGE_CSS, build_demo

    settings = Settings.from_env()
    serving = ServeSettings.from_env()
    if serving.mode:  # Ray Serve replicas run the engine (serving/); Ray is imported only then
        from serving import remote_engine

        engine = remote_engine(settings, serving)
    else:
        engine = Engine(settings)
    if settings.warm_up and engine.fast_path:
        threading.Thread(target=warm_up, args=(engine,), daemon=True).start()
    demo = build_demo(engine, settings)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        css=PAGE_CSS,
        # Only the example images are served from disk; uploads live in Gradio's own cache.
        allowed_paths=[str(PROJECT_ROOT / "assets")],
        prevent_thread_lock=True,  # the A1111 routes join the page's server first
    )
    # The AUTOMATIC1111-compatible API on the same server and port (/sdapi/v1/..., /controlnet/...).
    add_routes(demo.server_app, engine, settings)
    demo.block_thread()


if __name__ == "__main__":
    main()
