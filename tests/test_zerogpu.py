"""ZeroGPU: with the `spaces` package present, the GPU work of each request runs in spaces.GPU.

The real `spaces` package only acts on a ZeroGPU Space; here a stand-in with the same decorator
records what the engine asks for.
"""

from __future__ import annotations

import sys
import types

import pytest

from pipelines.zerogpu import MAX_GPU_SECONDS, gpu_seconds


@pytest.fixture
def fake_spaces(monkeypatch):
    calls = []

    def gpu(duration):
        def decorate(function):
            def run(*args, **kwargs):
                seconds = duration(*args, **kwargs) if callable(duration) else duration
                calls.append((function.__name__, seconds))
                return function(*args, **kwargs)

            return run

        return decorate

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    return calls


def test_gpu_seconds_grow_with_the_work_and_are_capped():
    small = gpu_seconds(steps=20, num_images=1, height=512, width=512)
    assert 20 < small < gpu_seconds(steps=20, num_images=4, height=512, width=512)
    assert gpu_seconds(steps=100, num_images=12, height=768, width=1024) == MAX_GPU_SECONDS
    cached = gpu_seconds(steps=100, num_images=2, height=512, width=512, cache_interval=3)
    assert 20 < cached < gpu_seconds(steps=100, num_images=2, height=512, width=512)


def test_requests_run_inside_spaces_gpu(fake_spaces, settings, astronaut):
    from pipelines.engine import Engine

    engine = Engine(settings, device="cpu")
    assert "ZeroGPU" in str(engine.attention)  # no CUDA probe at start on ZeroGPU
    result = engine.generate("canny", astronaut, "a", steps=2, image_resolution=256, seed=3)
    engine.annotate(astronaut, "canny", image_resolution=256)
    assert len(result.images) == 1
    assert fake_spaces == [
        ("_generate_checked", gpu_seconds(steps=2, num_images=1, height=256, width=256)),
        ("_annotate_checked", 30),
    ]


def test_bad_requests_are_refused_before_asking_for_a_gpu(fake_spaces, settings, astronaut):
    from errors import InvalidRequestError
    from pipelines.engine import Engine

    engine = Engine(settings, device="cpu")
    with pytest.raises(InvalidRequestError):
        engine.generate("canny", astronaut, "a", steps=10**6)
    assert fake_spaces == []


def test_bad_annotator_params_and_shapes_are_refused_before_the_gpu(fake_spaces, settings):
    import numpy as np

    from errors import InvalidRequestError
    from pipelines.engine import Engine

    engine = Engine(settings, device="cpu")
    strip = np.zeros((64, 640, 3), np.uint8)  # 10:1
    with pytest.raises(InvalidRequestError, match="aspect ratio"):
        engine.generate("canny", strip, "a")
    with pytest.raises(InvalidRequestError, match="low_threshold"):
        engine.annotate(np.zeros((64, 64, 3), np.uint8), "canny", low_threshold=0)
    assert fake_spaces == []
