"""Shared fixtures: tiny models in a MODELS_DIR tree, an engine on them, real images, a real server.

Nothing here touches the network: HF_HUB_OFFLINE is set before anything imports huggingface_hub.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["DISABLE_SAFETENSORS_CONVERSION"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402
from playwright.sync_api import expect  # noqa: E402

from settings import Settings, parse_base_models  # noqa: E402
from testkit.app_process import start_app, stop_app  # noqa: E402
from testkit.models_dir import COMMUNITY_BASE, COMMUNITY_BASE_MODELS, build_tiny_models  # noqa: E402
from testkit.paths import ASSETS  # noqa: E402

# The image-to-image tests' shared fixtures (small_engine, photo, mask).
pytest_plugins = ["start_image"]

# How long a browser check waits for the page: Playwright's 5 s default is less than a first
# render or one Gradio round trip can take on a busy 2-core machine (seen: a page still "Loading"
# after 5 s). A check that holds passes as soon as it holds; only a failure waits this long.
expect.set_options(timeout=30_000)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """Tiny models for every condition and annotator weights (testkit.models_dir); NormalBAE and
    OpenPose weights stay missing (their own tests build them)."""
    return build_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def settings(models_dir) -> Settings:
    """The default base, plus a community single-file checkpoint named "Tiny community"."""
    base_models = parse_base_models(COMMUNITY_BASE_MODELS, Settings().model_ids["base"])
    assert base_models["Tiny community"] == COMMUNITY_BASE
    return Settings(models_dir=models_dir, base_models=base_models)


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


class Server:
    def __init__(self, url: str, log: Path):
        self.url, self.log = url, log

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="session")
def server(models_dir, tmp_path_factory) -> Server:
    """`python app.py` in its own process, on tiny models, with small defaults so runs are quick."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    try:
        url, process = start_app(
            models_dir,
            log,
            extra_env={"DEFAULT_IMAGE_RESOLUTION": "256", "BASE_MODELS": COMMUNITY_BASE_MODELS},
        )
    except RuntimeError as error:
        pytest.fail(str(error))
    yield Server(url, log)
    stop_app(process)
