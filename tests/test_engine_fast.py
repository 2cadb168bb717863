"""The engine with the fast path on (compile checked with Dynamo's eager backend: Inductor's
compile takes minutes on a CPU) and in low-memory mode, against the plain engine."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipelines.engine import Engine
from pipelines.speed import fast_path
from testkit.tolerances import ROUNDING_LEVELS, assert_levels_within

REQUEST = {"steps": 3, "image_resolution": 256, "seed": 4}


@pytest.fixture
def eager_compile(monkeypatch):
    """Capture the graphs (fullgraph: any graph break fails) without Inductor's compile."""
    real = fast_path.compile_in_place

    def capture_only(module, **options):
        return real(module, **{**options, "backend": "eager"})

    monkeypatch.setattr(fast_path, "compile_in_place", capture_only)


def test_fast_path_engine_matches_the_plain_engine(
    settings, engine, astronaut, eager_compile, monkeypatch
):
    fast_engine = Engine(dataclasses.replace(settings, fast_path="on"), device="cpu")
    assert fast_engine.fast_path and "Fast path: on" in fast_engine.describe()
    assert "Attention: PyTorch SDPA" in fast_engine.describe()
    steps_begun = []
    monkeypatch.setattr(fast_path, "mark_step_begin", lambda: steps_begun.append(1))
    first = fast_engine.generate("canny", astronaut, "a robot", **REQUEST)
    assert len(steps_begun) == REQUEST["steps"]  # CUDA graphs told at each step
    assert any("First request at 256x256" in warning for warning in first.warnings)
    steps = fast_path.applied(fast_engine.base_pipeline().unet)
    assert steps[:2] == ("channels_last", "fused_qkv") and steps[2].startswith("compile")
    assert fast_path.applied(fast_engine.controlnet("canny"))[-1].startswith("compile")
    again = fast_engine.generate("canny", astronaut, "a robot", **REQUEST)
    assert not any("First request" in warning for warning in again.warnings)  # compiled once
    steps_begun.clear()
    plain = engine.generate("canny", astronaut, "a robot", **REQUEST)
    assert not steps_begun  # nothing compiled, nothing to tell
    # channels_last, fused QKV and the traced graph reorder float32 sums only.
    assert_levels_within(first.images[0], plain.images[0], ROUNDING_LEVELS, "engine_fast:fast_path")


def test_low_memory_engine_generates_the_same_images(settings, engine, astronaut):
    small = Engine(dataclasses.replace(settings, low_memory=True), device="cpu")
    assert not small.fast_path and "Low-memory mode" in small.describe()
    result = small.generate("canny", astronaut, "a robot", **REQUEST)
    plain = engine.generate("canny", astronaut, "a robot", **REQUEST)
    # On a CPU low-memory mode is VAE slicing only, and one image is one slice: the same ops.
    assert np.array_equal(result.images[0], plain.images[0])


@pytest.mark.parametrize("always_flag", [True, False])
def test_safety_checker_setting_blackens_flagged_images(settings, astronaut, tmp_path, always_flag):
    from testkit.tiny_safety import build_tiny_safety_checker

    checker_dir = build_tiny_safety_checker(tmp_path / "checker", always_flag=always_flag)
    checked = dataclasses.replace(
        settings,
        safety_checker=True,
        model_ids={**settings.model_ids, "safety_checker": str(checker_dir)},
    )
    engine = Engine(checked, device="cpu")
    assert "NSFW filter on" in engine.describe()
    result = engine.generate("canny", astronaut, "a robot", num_images=2, **REQUEST)
    blackened = [int(image.max()) == 0 for image in result.images]
    assert blackened == [always_flag, always_flag]
    flagged_message = [w for w in result.warnings if "safety checker" in w]
    assert bool(flagged_message) == always_flag
    if always_flag:
        assert "Image 1, 2 may contain NSFW content" in flagged_message[0]


def test_previews_come_from_taesd_while_denoising(engine, astronaut):
    seen = []
    result = engine.generate(
        "canny",
        astronaut,
        "a robot",
        num_images=2,
        on_preview=lambda images, step, total: seen.append(
            (step, total, [image.shape for image in images])
        ),
        **{**REQUEST, "steps": 8},
    )
    assert engine.preview_decoder() is not None  # the tiny TAESD is in the tests' MODELS_DIR
    assert seen == [(step, 8, [(256, 256, 3)] * 2) for step in (2, 4, 6)]  # not the last step
    assert len(result.images) == 2


def test_no_previews_without_the_taesd_weights(settings, astronaut):
    missing = {**settings.model_ids, "preview_decoder": "nobody/no-taesd"}
    engine = Engine(dataclasses.replace(settings, model_ids=missing), device="cpu")
    seen = []
    engine.generate("canny", astronaut, "x", on_preview=lambda *preview: seen.append(1), **REQUEST)
    assert engine.preview_decoder() is None and seen == []


def test_warm_up_compiles_the_default_request_so_the_first_visitor_does_not(
    settings, astronaut, eager_compile
):
    plain = Engine(settings, device="cpu")  # FAST_PATH=auto: off on a CPU
    assert plain.warm_up() is None and plain.cached_base_models == []  # nothing loaded

    fast_engine = Engine(dataclasses.replace(settings, fast_path="on"), device="cpu")
    notice = fast_engine.warm_up()
    size = fast_engine.defaults["image_resolution"]
    assert f"First request at {size}x{size}, 1 image for the UNet and the Canny ControlNet" in (
        notice or ""
    )
    assert fast_engine.warm_up() is None  # compiled once
    first_visitor = fast_engine.generate("canny", astronaut, "a robot", steps=2, seed=1)
    assert astronaut.shape[:2] == (size, size)
    assert not any("First request" in warning for warning in first_visitor.warnings)
    other = fast_engine.generate("depth", astronaut, "a robot", steps=2, annotator="none")
    assert any("for the Depth ControlNet" in warning for warning in other.warnings)


def test_a_failed_compile_leaves_the_fast_path_and_still_gives_the_images(
    settings, engine, astronaut, monkeypatch
):
    real = fast_path.compile_in_place

    def no_compiler(graph, example_inputs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(
        fast_path, "compile_in_place", lambda module, **options: real(module, backend=no_compiler)
    )
    fast_engine = Engine(dataclasses.replace(settings, fast_path="on"), device="cpu")
    first = fast_engine.generate("canny", astronaut, "a robot", **REQUEST)
    assert any("could not compile" in w and "no C++ compiler" in w for w in first.warnings)
    assert not any("First request" in warning for warning in first.warnings)
    assert not fast_engine.fast_path and "Fast path: off (it failed to compile)" in (
        fast_engine.describe()
    )
    unet = fast_engine.base_pipeline().unet
    assert not fast_path.is_compiled(unet) and not fast_path.is_compiled(
        fast_engine.controlnet("canny")
    )
    plain = engine.generate("canny", astronaut, "a robot", **REQUEST)
    # The models keep channels_last and fused QKV: float32 sums reordered only.
    label = "engine_fast:failed_compile"
    assert_levels_within(first.images[0], plain.images[0], ROUNDING_LEVELS, label)
    again = fast_engine.generate("canny", astronaut, "a robot", **REQUEST)
    assert again.warnings == [] and np.array_equal(again.images[0], first.images[0])


def test_compile_mode_setting_reaches_every_compile_and_the_page(settings, astronaut, monkeypatch):
    real = fast_path.compile_in_place
    modes = []

    def capture_only(module, **options):
        modes.append((type(module).__name__, options.get("mode")))
        return real(module, **{**options, "backend": "eager"})

    monkeypatch.setattr(fast_path, "compile_in_place", capture_only)
    tuned = dataclasses.replace(settings, fast_path="on", compile_mode="max-autotune")
    fast_engine = Engine(tuned, device="cpu")
    assert "Fast path: on (max-autotune)" in fast_engine.describe()
    result = fast_engine.generate("canny", astronaut, "a robot", cache_interval=2, **REQUEST)
    notice = next(w for w in result.warnings if w.startswith("First request"))
    assert "several minutes" in notice
    compiled = dict(modes)
    assert set(compiled) == {
        "UNet2DConditionModel",
        "ControlNetModel",
        "CachingUNet",
        "ShallowControlNet",
    }
    assert set(compiled.values()) == {"max-autotune"}
