"""`python app.py` in its own process on a given MODELS_DIR, on the CPU, and stopping it.

The tests' `server` fixture and the load benchmark drive the real app this way, through its own
launch code and HTTP, rather than a Blocks object built in the test process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from testkit.paths import PROJECT_ROOT


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it), for an app of one's own."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(
    models_dir: Path,
    log_path: Path,
    queue_size: int | None = None,
    timeout: float = 180,
    extra_env: dict[str, str] | None = None,
) -> tuple[str, subprocess.Popen]:
    """`python app.py` on `models_dir`, on CPU, output to `log_path`; (url, process) once it serves.

    Raises RuntimeError (with the log) if it exits or does not answer within `timeout` seconds.
    """
    port = free_port()
    env = {
        **os.environ,
        "MODELS_DIR": str(models_dir),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "DEVICE": "cpu",
        "PYTHONUNBUFFERED": "1",
    }
    if queue_size is not None:
        env["QUEUE_SIZE"] = str(queue_size)
    env.update(extra_env or {})
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(PROJECT_ROOT / "app.py"), "--port", str(port)],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            log = log_path.read_text(errors="replace")
            raise RuntimeError(f"app.py exited with {process.returncode}:\n{log}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return url, process
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_app(process)
            log = log_path.read_text(errors="replace")
            raise RuntimeError(f"app.py did not start within {timeout:.0f} s:\n{log}")
        time.sleep(0.5)


def stop_app(process: subprocess.Popen) -> None:
    """Ask the app to stop; kill it if it has not within 20 s."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
