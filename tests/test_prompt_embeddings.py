"""Text embeddings kept per base: the same prompt again skips the text encoder, exactly."""

from __future__ import annotations

import numpy as np
import torch

from pipelines.engine import Engine
from pipelines.loop import prompt_embeddings

REQUEST = {"steps": 2, "image_resolution": 256, "seed": 9}


def _encoder_calls(pipe) -> list[int]:
    calls = []
    pipe.text_encoder.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_the_same_prompt_again_skips_the_text_encoder_and_gives_the_same_images(
    settings, astronaut
):
    engine = Engine(settings, device="cpu")  # its own models: the hook stays off the shared ones
    calls = _encoder_calls(engine.base_pipeline())
    first = engine.generate("canny", astronaut, "a robot", **REQUEST)
    assert len(calls) == 2  # the prompt and the negative prompt
    again = engine.generate("canny", astronaut, "a robot", **{**REQUEST, "strength": 0.9})
    assert len(calls) == 2
    fresh = Engine(settings, device="cpu").generate("canny", astronaut, "a robot", **REQUEST)
    assert np.array_equal(first.images[0], fresh.images[0])
    assert not np.array_equal(again.images[0], first.images[0])  # the strength did change
    engine.generate("canny", astronaut, "a robot", negative_prompt="blurry", **REQUEST)
    assert len(calls) == 4  # another negative prompt: both encoded again
    engine.generate("canny", astronaut, "a robot", guidance_scale=1.0, **REQUEST)
    assert len(calls) == 5  # no CFG: the prompt alone


def test_cached_embeddings_equal_diffusers_for_several_images(engine):
    pipe = engine.base_pipeline()
    expected = pipe.encode_prompt(
        "a cat",
        engine.device,
        num_images_per_prompt=3,
        do_classifier_free_guidance=True,
        negative_prompt="a dog",
    )
    for _ in range(2):  # encoded, then from the cache
        got = prompt_embeddings.encode_prompt(pipe, engine.device, "a cat", "a dog", 3)
        for mine, theirs in zip(got, expected, strict=True):
            assert torch.equal(mine, theirs)
            assert not mine.requires_grad


def test_the_cache_is_bounded(engine, monkeypatch):
    monkeypatch.setattr(prompt_embeddings, "PROMPT_CACHE_SIZE", 2)
    pipe = engine.base_pipeline()
    for prompt in ("one", "two", "three"):
        prompt_embeddings.encode_prompt(pipe, engine.device, prompt, None, 1)
    kept = list(pipe.__dict__[prompt_embeddings._CACHE_ATTRIBUTE])
    assert ("one", None) not in kept and kept[-2:] == [("two", None), ("three", None)]
