"""The fast path's logic on CPU (pipelines/speed/fast_path.py) and the generation benchmark's
smoke run.

What needs a GPU (fp16, Inductor kernels, CUDA graphs, model CPU offload, the speed targets) is
measured by `python -m benchmarks.generate` on one; here: the switch, that channels_last and fused
QKV leave outputs unchanged, that the models trace as one graph (Dynamo with the eager backend:
Inductor's own compile of even a tiny model is too slow for a CPU test run), the shape tracker,
and the benchmark's JSON lines.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.speed import fast_path
from settings import DEFAULT_MODEL_IDS, Limits, Settings
from testkit.tolerances import (
    ROUNDING_LEVELS,
    assert_levels_within,
    assert_within,
    network_bound,
    reduction_lengths,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CANNY_ID = DEFAULT_MODEL_IDS["canny"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from testkit.tiny_models import build_models_dir

    return build_models_dir(tmp_path_factory.mktemp("fast_models"), [CANNY_ID])


@pytest.fixture(scope="module")
def unet(tiny_dir):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(tiny_dir / DEFAULT_MODEL_IDS["base"] / "unet")


@pytest.fixture(scope="module")
def controlnet(tiny_dir):
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(tiny_dir / CANNY_ID)


def _inputs(batch: int = 2, size: int = 16):
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(batch, 4, size, size, generator=generator)
    text = torch.randn(batch, 77, 32, generator=generator)
    image = torch.rand(batch, 3, size * 8, size * 8, generator=generator)
    return latents, torch.tensor(500), text, image


# ---- the switch ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "device", "zero_gpu", "expected"),
    [
        ("auto", "cuda", False, True),
        ("auto", "cuda:0", False, True),
        ("auto", "cuda", True, False),  # ZeroGPU: a compile would eat each request's GPU slice
        ("auto", "cpu", False, False),
        ("auto", "mps", False, False),
        ("on", "cpu", False, True),
        ("on", "cuda", True, True),
        ("off", "cuda", False, False),
        ("off", "cpu", False, False),
    ],
)
def test_fast_path_enabled(mode, device, zero_gpu, expected):
    assert fast_path.fast_path_enabled(mode, torch.device(device), zero_gpu) is expected


def test_fast_path_off_in_low_memory_mode_and_bad_modes_refused():
    assert not fast_path.fast_path_enabled("on", torch.device("cuda"), False, low_memory=True)
    assert fast_path.FAST_PATH_MODES == ("auto", "on", "off")
    with pytest.raises(ValueError, match="auto, on, off"):
        fast_path.fast_path_enabled("fast", torch.device("cuda"), False)


def test_configure_torch_raises_the_recompile_limit():
    from torch._dynamo import config as dynamo_config
    from torch._inductor import config as inductor_config

    saved = (
        dynamo_config.recompile_limit,
        inductor_config.conv_1x1_as_mm,
        torch.backends.cudnn.benchmark,
    )
    try:
        dynamo_config.recompile_limit = 8
        fast_path.configure_torch()
        assert dynamo_config.recompile_limit == fast_path.RECOMPILE_LIMIT
        assert inductor_config.conv_1x1_as_mm and torch.backends.cudnn.benchmark
    finally:
        (
            dynamo_config.recompile_limit,
            inductor_config.conv_1x1_as_mm,
            torch.backends.cudnn.benchmark,
        ) = saved


# ---- channels_last and fused QKV leave outputs unchanged -----------------------------------------
# channels_last convolutions (and a fused matmul's blocking) take the same sums in another order,
# as another CPU or thread count does: the outputs differ by float32 rounding through the network.
def _assert_reordered_only(got, expected, lengths, label):
    scale = float(expected.abs().max())
    assert_within(got, expected, network_bound(lengths, scale), label, scale=scale)


def test_unet_speed_up_without_compile_keeps_outputs(unet):
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    latents, timestep, text, _ = _inputs()
    fast_unet = fast_path.speed_up_unet(copy.deepcopy(unet), compile=False)
    assert fast_path.applied(fast_unet) == ("channels_last", "fused_qkv")
    assert {type(p) for p in fast_unet.attn_processors.values()} == {FusedAttnProcessor2_0}
    assert fast_unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    lengths = reduction_lengths(unet, lambda: unet(latents, timestep, encoder_hidden_states=text))
    with torch.inference_mode():
        expected = unet(latents, timestep, encoder_hidden_states=text).sample
        got = fast_unet(latents, timestep, encoder_hidden_states=text).sample
    _assert_reordered_only(got, expected, lengths, "fast_path:unet")


def test_controlnet_qkv_is_really_fused_and_outputs_unchanged(controlnet):
    # diffusers' ControlNetModel.fuse_qkv_projections() is a silent no-op on SD1.5's attention
    # classes; ours fuses them.
    fast_controlnet = fast_path.speed_up_controlnet(copy.deepcopy(controlnet), compile=False)
    fused = [m for m in fast_controlnet.modules() if getattr(m, "fused_projections", False)]
    assert fused and all(hasattr(m, "to_qkv") or hasattr(m, "to_kv") for m in fused)
    latents, timestep, text, image = _inputs()

    def run(model):
        return model(latents, timestep, text, controlnet_cond=image, return_dict=False)

    # Every reduction the ControlNet runs: more than any one output comes through.
    lengths = reduction_lengths(controlnet, lambda: run(controlnet))
    with torch.inference_mode():
        expected, got = run(controlnet), run(fast_controlnet)
    pairs = zip([*got[0], got[1]], [*expected[0], expected[1]], strict=True)
    for index, (a, b) in enumerate(pairs):
        _assert_reordered_only(a, b, lengths, f"fast_path:controlnet[{index}]")


def test_vae_speed_up_keeps_decoding(tiny_dir):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_dir / DEFAULT_MODEL_IDS["base"] / "vae")
    fast_vae = fast_path.speed_up_vae(copy.deepcopy(vae))  # no compile by default for the VAE
    assert fast_path.applied(fast_vae) == ("channels_last", "fused_qkv")
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    lengths = reduction_lengths(vae, lambda: vae.decode(latents))
    with torch.inference_mode():
        expected, got = vae.decode(latents).sample, fast_vae.decode(latents).sample
    _assert_reordered_only(got, expected, lengths, "fast_path:vae")


def test_speed_up_is_idempotent_and_respects_other_attention_backends(unet):
    from diffusers.models.attention_processor import AttnProcessor

    module = fast_path.speed_up(copy.deepcopy(unet), compile=False)
    assert fast_path.speed_up(module, compile=False) is module
    assert fast_path.applied(module) == ("channels_last", "fused_qkv")
    assert fast_path.fuse_qkv(module)  # already fused: nothing to do
    other = copy.deepcopy(unet)
    other.set_attn_processor(AttnProcessor())  # e.g. a backend chosen by measurement
    assert not fast_path.fuse_qkv(other)
    assert {type(p) for p in other.attn_processors.values()} == {AttnProcessor}
    assert not fast_path.fuse_qkv(torch.nn.Linear(2, 2))
    # Before compiling, attention goes back to SDPA (xformers would break the full graph).
    fast_path.speed_up(other, compile=False, sdpa=True)
    assert fast_path.applied(other) == ("sdpa", "channels_last", "fused_qkv")


# ---- one graph each: Dynamo fullgraph capture through the engine's real calls --------------------
def test_unet_and_controlnet_trace_as_one_graph_through_the_engine(tiny_dir):
    from pipelines.engine import Engine

    engine = Engine(Settings(models_dir=tiny_dir, limits=Limits(min_resolution=64)), device="cpu")
    image = np.zeros((128, 128, 3), np.uint8)
    image[::16] = 255

    def generate(**options):
        result = engine.generate(
            "canny", image, "a house", annotator="none", image_resolution=128, steps=2, **options
        )
        return np.stack(result.images)

    try:
        expected = generate(seed=3)
        pipe, model = engine.base_pipeline(), engine.controlnet("canny")
        torch._dynamo.reset()
        counters = torch._dynamo.utils.counters
        counters.clear()
        # fullgraph=True raises on any graph break; the eager backend skips Inductor's codegen.
        fast_path.speed_up_unet(pipe.unet, backend="eager")
        fast_path.speed_up_controlnet(model, backend="eager")
        assert fast_path.applied(model)[-1] == "compile:eager"
        got = generate(seed=3)
        assert counters["stats"]["unique_graphs"] >= 2  # the UNet and the ControlNet, traced
        # Reordered sums (as above) move the float images far less than one of 255 levels.
        assert_levels_within(got, expected, ROUNDING_LEVELS, "fast_path:engine_one_graph")
    finally:
        torch._dynamo.reset()


def test_control_windows_and_guess_mode_keep_one_unet_graph(tiny_dir):
    """Steps outside every control window give the compiled UNet zero residuals, so it never
    compiles a second graph (without residuals) in the middle of a request."""
    from pipelines.engine import Engine
    from pipelines.loop.denoise import zero_residuals

    engine = Engine(Settings(models_dir=tiny_dir, limits=Limits(min_resolution=64)), device="cpu")
    image = np.zeros((128, 128, 3), np.uint8)
    image[::16] = 255
    requests = [
        {"control_end": 0.5},
        {"control_start": 0.5},
        {"control_start": 0.25, "control_end": 0.5},
        {"strength": 0.0},
    ]

    def generate(**options):
        result = engine.generate(
            "canny", image, "a house", annotator="none", image_resolution=128, steps=4, **options
        )
        return np.stack(result.images)

    try:
        expected = [generate(seed=5, **request) for request in requests]
        pipe, model = engine.base_pipeline(), engine.controlnet("canny")
        real = model(
            torch.zeros(2, 4, 16, 24),
            torch.tensor(10),
            encoder_hidden_states=torch.zeros(2, 77, pipe.unet.config.cross_attention_dim),
            controlnet_cond=torch.zeros(2, 3, 128, 192),
            return_dict=False,
        )
        down, middle = zero_residuals(pipe.unet.config, torch.zeros(2, 4, 16, 24))
        assert [r.shape for r in down] == [r.shape for r in real[0]]
        assert middle.shape == real[1].shape and not any(r.any() for r in (*down, middle))

        torch._dynamo.reset()
        counters = torch._dynamo.utils.counters
        counters.clear()
        fast_path.speed_up_unet(pipe.unet, backend="eager")
        fast_path.speed_up_controlnet(model, backend="eager")
        for request, eager in zip(requests, expected, strict=True):
            got = generate(seed=5, **request)
            assert_levels_within(got, eager, ROUNDING_LEVELS, f"fast_path:windows {request}")
        assert counters["stats"]["unique_graphs"] == 2  # the UNet once, the ControlNet once
    finally:
        torch._dynamo.reset()


# ---- shapes, measurement, low memory -------------------------------------------------------------
def test_each_compiled_model_is_announced_once_per_shape():
    unet, controlnet, plain = (torch.nn.Linear(2, 2) for _ in range(3))
    unet.compile(backend="eager")
    controlnet.compile(backend="eager")
    key = fast_path.ShapeKey(batch=1, height=512, width=512, cfg=True)
    models = {"UNet": unet, "Canny ControlNet": controlnet, "plain": plain}
    assert fast_path.first_runs(models, key) == ["UNet", "Canny ControlNet"]  # plain never compiles
    message = fast_path.compile_notice(["UNet", "Canny ControlNet"], key)
    assert "512x512, 1 image for the UNet and the Canny ControlNet" in message
    assert fast_path.first_runs(models, key) == [] and fast_path.compile_notice([], key) is None
    assert "4 images" in fast_path.compile_notice(["UNet"], fast_path.ShapeKey(4, 512, 512, True))
    guess = fast_path.ShapeKey(1, 512, 512, True, conditional_only=True)
    assert fast_path.first_runs({"Canny ControlNet": controlnet}, guess) == ["Canny ControlNet"]
    assert fast_path.first_runs(models, fast_path.ShapeKey(1, 512, 768, True)) == [
        "UNet",
        "Canny ControlNet",
    ]

    # A model loaded again (evicted, then reloaded) is a new object: it compiles and is announced.
    reloaded = torch.nn.Linear(2, 2)
    reloaded.compile(backend="eager")
    assert fast_path.first_runs({"Canny ControlNet": reloaded}, key) == ["Canny ControlNet"]

    # Many threads, one new shape: exactly one of them is told it compiles.
    new_key = fast_path.ShapeKey(2, 256, 256, False)
    firsts = []
    threads = [
        threading.Thread(
            target=lambda: firsts.append(fast_path.first_runs({"UNet": unet}, new_key))
        )
        for _ in range(16)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert firsts.count(["UNet"]) == 1 and firsts.count([]) == 15


def test_low_memory_on_cpu_slices_the_vae(tiny_dir):
    from diffusers import StableDiffusionControlNetPipeline

    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        tiny_dir / DEFAULT_MODEL_IDS["base"],
        controlnet=None,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    assert fast_path.low_memory(pipe, "cpu") == ["vae_slicing"]  # nothing to offload to on a CPU
    assert pipe.vae.use_slicing


# ---- the benchmark's smoke run -------------------------------------------------------------------
def test_generate_benchmark_tiny_prints_json_lines():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.generate", "--tiny", "--repeats", "2"],
        capture_output=True,
        text=True,
        env=env,
        cwd=PROJECT_ROOT,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    records = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    by_phase = {record["phase"]: record for record in records}
    assert records[0]["phase"] == "setup" and records[-1]["phase"] == "summary"
    from benchmarks.generate import PHASES

    measured = list(PHASES)
    exact = [phase for phase in measured if not phase.startswith(("cache_", "lcm_"))]
    # The targets' own batch-1 pair before anything else compiles; batch-4 compiles last of the
    # exact path, and the opt-ins that change the images (feature caching, LCM) after it.
    assert exact[:4] == ["engine_eager", "engine_fast", "stock_eager", "stock_compiled"]
    assert all(phase.endswith("batch4") for phase in exact[-3:])
    assert measured[1] == "cache_eager" and measured[-2:] == ["cache_fast", "lcm_fast"]
    assert [r["phase"] for r in records[1:-1]] == measured
    for phase in measured:
        record = by_phase[phase]
        assert "error" not in record, record
        assert record["seconds_per_image"] > 0 and record["min"] > 0 and record["warmup_s"] > 0
        assert record["batch"] == (4 if phase.endswith("batch4") else 1)
        assert record["repeats"] == 2 and "peak_gib" in record and "compile_s" in record
    for phase in ("engine_fast", "engine_fast_batch4", "guess_mode"):
        assert by_phase[phase]["matches_eager"] is True, by_phase[phase]
        assert by_phase[phase]["fast_path"]["controlnet"] == ["channels_last", "fused_qkv"]
    for phase in ("engine_eager", "engine_fast", "engine_fast_batch4"):  # where the time goes
        parts = by_phase[phase]["breakdown_s"]
        assert parts["denoise"] > parts["controlnets"] > 0 and parts["sampler_steps"] > 0
        assert parts["decode"] > 0 and parts["unet_and_loop"] > 0
        assert parts["total"] >= parts["encode_prompt"] + parts["denoise"] + parts["decode"]
    for phase in ("cache_eager", "cache_fast", "lcm_fast"):  # reported, not held to tolerance
        assert by_phase[phase]["changes_images"] and by_phase[phase]["mean_abs_diff"] > 0
    assert by_phase["cache_fast"]["cache_interval"] == 3
    assert by_phase["lcm_fast"]["sampler"] == "LCM" and by_phase["lcm_fast"]["steps"] == 4
    assert records[0]["build"]["lcm_lora_s"] > 0  # a random LCM-LoRA built with the models
    assert by_phase["cache_fast"]["fast_path_feature_cache"]["unet"] == []  # --tiny: no compile
    summary = by_phase["summary"]
    assert summary["outputs_match"] and not summary["errors"]
    assert summary["ratio"]["engine_fast/cache_fast"] > 0
    assert summary["ratio"]["engine_fast/lcm_fast"] > 0
    assert summary["ratio"]["stock_compiled/engine_fast"] > 0
    assert summary["targets"]["applies"] is False  # tiny CPU numbers are not the GPU targets


def test_generate_benchmark_reports_a_failing_phase_and_goes_on(monkeypatch, capsys):
    from benchmarks import generate

    def broken(engine, cfg):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(generate, "apply_fast_path", broken)
    threads = torch.get_num_threads()
    try:
        status = generate.main(["--tiny", "--repeats", "1", "--phases", "engine_fast,low_memory"])
        lines = capsys.readouterr().out.splitlines()
        records = {r["phase"]: r for r in map(json.loads, filter(None, lines))}
        assert status == 1  # a failed phase fails the run, after everything is printed
        assert "no compiler here" in records["engine_fast"]["error"]
        assert records["low_memory"]["seconds_per_image"] > 0
        assert records["summary"]["errors"] == ["engine_fast"]

        assert generate.main(["--tiny", "--deadline-s", "0", "--phases", "stock_eager"]) == 0
        lines = capsys.readouterr().out.splitlines()
        records = {r["phase"]: r for r in map(json.loads, filter(None, lines))}
        assert records["stock_eager"]["skipped"]
        assert records["summary"]["skipped"] == ["stock_eager"]
    finally:
        torch.set_num_threads(threads)
