"""Odd prompts, GPU out-of-memory and requests arriving together (issue: nothing breaks it)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from errors import GpuOutOfMemoryError, InvalidRequestError

FAST = {"steps": 2, "image_resolution": 256, "seed": 11}


def test_unicode_and_control_characters_in_prompts(engine, astronaut):
    odd = engine.generate("canny", astronaut, "café 🚀\x00\x07 naïve\u202e résumé", **FAST)
    plain = engine.generate("canny", astronaut, "café 🚀 naïve résumé", **FAST)
    np.testing.assert_array_equal(odd.images[0], plain.images[0])  # control characters dropped


def test_empty_prompt_is_the_papers_no_prompt_setting(engine, astronaut):
    result = engine.generate(
        "canny", astronaut, "", added_prompt="", control_mode="controlnet", **FAST
    )
    assert len(result.images) == 1


def test_a_5000_character_prompt_is_read_in_full_and_a_longer_one_refused(engine, astronaut):
    long_prompt = "a red house by the sea " * 218
    result = engine.generate("canny", astronaut, long_prompt, added_prompt="", **FAST)
    assert not result.warnings
    # Its end steers too: the same prompt with its last words changed gives another image.
    changed = long_prompt[:-10] + "a blue car"
    other = engine.generate("canny", astronaut, changed, added_prompt="", **FAST)
    assert not np.array_equal(result.images[0], other.images[0])
    with pytest.raises(InvalidRequestError, match="limit is 10000"):
        engine.generate("canny", astronaut, "x" * 10_001, **FAST)


def test_out_of_memory_frees_memory_says_what_to_do_and_the_next_request_works(
    engine, astronaut, monkeypatch
):
    real_run = engine._run
    freed = []
    monkeypatch.setattr(engine, "_free_memory", lambda: freed.append(True))

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(engine, "_run", out_of_memory)
    with pytest.raises(GpuOutOfMemoryError, match="Lower the image resolution or the number"):
        engine.generate("canny", astronaut, "a", **FAST)
    assert freed
    monkeypatch.setattr(engine, "_run", real_run)
    assert len(engine.generate("canny", astronaut, "a", **FAST).images) == 1


def test_requests_on_different_tabs_together_equal_the_same_requests_alone(engine, astronaut):
    """A ControlNet swap while another request runs must not leak into it."""
    requests = [
        ("canny", {"seed": 1}),
        ("scribble", {"seed": 2}),
        ("hed", {"seed": 3}),
        ("canny", {"seed": 4, "control_mode": "controlnet"}),
    ]
    alone = [
        engine.generate(name, astronaut, "a", steps=2, image_resolution=256, **options).images[0]
        for name, options in requests
    ]
    together: list = [None] * len(requests)

    def run(index: int) -> None:
        name, options = requests[index]
        result = engine.generate(name, astronaut, "a", steps=2, image_resolution=256, **options)
        together[index] = result.images[0]

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    for index, image in enumerate(together):
        np.testing.assert_array_equal(image, alone[index], f"request {index} was disturbed")


def test_nan_images_are_decoded_again_in_fp32_then_reported(engine, astronaut, monkeypatch):
    vae = engine.base_pipeline().vae
    real_decode = vae.decode
    calls = []

    def decode(latents, **kwargs):
        calls.append(latents.dtype)
        images = real_decode(latents, **kwargs)[0]
        if len(calls) == 1 or fail_always:
            images = torch.full_like(images, float("nan"))
        return (images,)

    fail_always = False
    monkeypatch.setattr(vae, "decode", decode)
    retried = engine.generate("canny", astronaut, "a", **FAST)
    assert len(calls) == 2 and calls[1] == torch.float32
    assert any("decoded in float32" in warning for warning in retried.warnings)
    assert retried.images[0].std() > 1

    calls.clear()
    fail_always = True
    broken = engine.generate("canny", astronaut, "a", **FAST)
    assert any("came out empty" in warning for warning in broken.warnings)


@pytest.mark.parametrize(
    "options",
    [{"scheduler": ["UniPC"]}, {"control_mode": {"a": 1}}, {"annotator": ["canny"]}],
)
def test_values_of_the_wrong_type_get_a_message(engine, astronaut, options):
    with pytest.raises(InvalidRequestError):
        engine.generate("canny", astronaut, "a", **FAST, **options)
