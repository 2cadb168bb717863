"""Shared fixtures: tiny models in a MODELS_DIR tree, an engine on them, real images, a real server.

Nothing here touches the network: HF_HUB_OFFLINE is set before anything imports huggingface_hub.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ASSETS = PROJECT_ROOT / "assets"
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from annotator_weights import (  # noqa: E402
    save_hed_and_mlsd,
    save_tiny_dpt_hybrid,
    save_tiny_upernet,
)
from conditions import CONDITIONS  # noqa: E402
from settings import DEFAULT_MODEL_IDS, Settings  # noqa: E402
from tiny_models import build_models_dir  # noqa: E402


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """Tiny SD1.5 + a tiny ControlNet for every condition, and annotator weights (HED, M-LSD,
    DPT-Hybrid, UperNet). NormalBAE and OpenPose weights stay missing: their tests build them."""
    folder = tmp_path_factory.mktemp("models")
    roles = sorted({condition.controlnet_role for condition in CONDITIONS.values()})
    roles += ["normal_midas"]
    build_models_dir(folder, [DEFAULT_MODEL_IDS[role] for role in roles])
    save_hed_and_mlsd(folder)
    save_tiny_dpt_hybrid(folder)
    save_tiny_upernet(folder)
    return folder


@pytest.fixture(scope="session")
def settings(models_dir) -> Settings:
    return Settings(models_dir=models_dir)


@pytest.fixture(scope="session")
def engine(settings):
    from pipelines.engine import Engine

    return Engine(settings, device="cpu")


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """A real photo with a person, RGB uint8 (512, 512, 3)."""
    return np.asarray(Image.open(ASSETS / "astronaut.png").convert("RGB"))


@pytest.fixture(scope="session")
def coffee() -> np.ndarray:
    """A real non-square photo, RGB uint8 (400, 600, 3)."""
    return np.asarray(Image.open(ASSETS / "coffee.jpg").convert("RGB"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, url: str, process: subprocess.Popen, log: Path):
        self.url, self.process, self.log = url, process, log

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="session")
def server(models_dir, tmp_path_factory) -> Server:
    """`python app.py` in its own process, on tiny models, with small defaults so runs are quick."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {
        **os.environ,
        "MODELS_DIR": str(models_dir),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "DEFAULT_IMAGE_RESOLUTION": "256",
        "DEVICE": "cpu",
        "PYTHONUNBUFFERED": "1",
    }
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(PROJECT_ROOT / "app.py"), "--port", str(port)],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    server = Server(url, process, log)
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            pytest.fail(f"app.py exited with {process.returncode}:\n{server.log_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"app.py did not start within 180 s:\n{server.log_text()}")
        time.sleep(0.5)
    yield server
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
