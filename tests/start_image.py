"""What the image-to-image and inpainting tests share: an engine that allows their small output,
the coffee photo at that output size, a rectangular mask (fixtures, registered by conftest as a
plugin), and diffusers' reference pipelines built on the engine's own loaded models."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from pipelines.loop.schedulers import make_scheduler
from settings import Limits

SIZE = 128  # the output's short side: the coffee photo is 128 x 192 there
PROMPT = "a cup of coffee"
# The tiny models' byte-level tokenizer takes a token per character, so the app's default negative
# prompt is two 75-token chunks there, which diffusers' pipelines cut at 77 tokens instead (real
# CLIP reads it in one chunk). A negative prompt of one chunk compares them like for like.
NEGATIVE_PROMPT = "lowres, bad anatomy, worst quality"


@pytest.fixture(scope="module")
def small_engine(settings):
    from pipelines.engine import Engine

    limits = replace(Limits(), min_resolution=SIZE)
    return Engine(replace(settings, limits=limits, previews=False), device="cpu")


@pytest.fixture(scope="module")
def photo(coffee) -> np.ndarray:
    """The coffee photo at the output size (128 x 192): no resizing between it and the images."""
    return np.asarray(Image.fromarray(coffee).resize((192, 128), Image.LANCZOS))


@pytest.fixture(scope="module")
def mask() -> np.ndarray:
    """White (repaint) in a rectangle of a 128 x 192 mask, black elsewhere."""
    drawn = np.zeros((128, 192), np.uint8)
    drawn[40:88, 60:140] = 255
    return drawn


def reference_pipeline(pipeline_class, engine, controlnet_role: str, scheduler: str):
    """`pipeline_class` (a diffusers ControlNet pipeline) on the engine's own base and ControlNet
    of `controlnet_role`, with the sampler the engine makes for `scheduler`."""
    pipe = engine.base_pipeline()
    theirs = pipeline_class(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=pipe.unet,
        controlnet=engine.controlnet(controlnet_role),
        scheduler=make_scheduler(scheduler, pipe.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    theirs.set_progress_bar_config(disable=True)
    return theirs
