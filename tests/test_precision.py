"""The models' precision: fp16 on CUDA; on a CPU float32, or bfloat16 where it is measured
faster; the engine generating in bfloat16 on the tiny models."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipelines.engine import Engine
from pipelines.speed import precision
from settings import Settings
from testkit.tolerances import BFLOAT16_U, report

REQUEST = {"steps": 4, "image_resolution": 256, "seed": 11}


def test_cuda_takes_fp16_and_a_cpu_takes_what_is_set():
    assert precision.choose_precision(torch.device("cuda"), "auto").dtype == torch.float16
    cpu = torch.device("cpu")
    assert precision.choose_precision(cpu, "float32") == precision.Precision(
        torch.float32, "set by CPU_PRECISION"
    )
    assert precision.choose_precision(cpu, "bfloat16").dtype == torch.bfloat16


@pytest.mark.parametrize(
    "timings, dtype, reason",
    [
        ({"float32": 30.0, "bfloat16": 10.0}, torch.bfloat16, "measured 3.0x faster than float32"),
        ({"float32": 12.0, "bfloat16": 10.0}, torch.float32, "bfloat16 measured only 1.2x as fast"),
        ({"float32": 10.0, "bfloat16": 40.0}, torch.float32, "bfloat16 measured only 0.2x as fast"),
    ],
)
def test_auto_takes_bfloat16_only_when_clearly_faster(monkeypatch, timings, dtype, reason):
    monkeypatch.setattr(precision, "time_cpu_precisions", lambda: timings)
    chosen = precision.choose_precision(torch.device("cpu"), "auto")
    assert (chosen.dtype, chosen.reason) == (dtype, reason)


def test_the_probe_times_both_precisions_on_this_cpu():
    timings = precision.time_cpu_precisions()
    assert set(timings) == {"float32", "bfloat16"} and min(timings.values()) > 0


def test_the_environment_default_is_auto_and_bad_values_are_refused():
    assert Settings.from_env({}).cpu_precision == "auto"
    assert Settings.from_env({"CPU_PRECISION": " BFloat16 "}).cpu_precision == "bfloat16"
    with pytest.raises(ValueError, match="CPU_PRECISION must be one of auto, float32, bfloat16"):
        Settings.from_env({"CPU_PRECISION": "fp8"})
    assert Settings().cpu_precision == "float32"  # settings built in code: the reference numbers


def test_the_engine_generates_in_bfloat16_close_to_float32(settings, engine, astronaut):
    half = Engine(dataclasses.replace(settings, cpu_precision="bfloat16"), device="cpu")
    assert "cpu (bfloat16, set by CPU_PRECISION)" in half.describe()
    result = half.generate("canny", astronaut, "a robot", **REQUEST)
    pipe = half.base_pipeline()
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.bfloat16}
    assert half.controlnet("canny").dtype == torch.bfloat16
    reference = engine.generate("canny", astronaut, "a robot", **REQUEST)
    np.testing.assert_array_equal(result.control_map, reference.control_map)  # same annotator
    mine, theirs = (np.asarray(r.images[0], dtype=np.float32) for r in (result, reference))
    assert mine.shape == theirs.shape and mine.std() > 5  # a real image, not a flat one
    # bfloat16 keeps 8 significant bits: each step's prediction moves by about u = 2**-8 of its
    # scale, the steps add up, over the image's 255 levels (another seed moves the mean by ~45).
    bound = REQUEST["steps"] * BFLOAT16_U * 255  # 4 levels
    difference = float(np.abs(mine - theirs).mean())
    report("precision:bfloat16_images mean", difference, bound)
    assert difference <= bound, difference


def test_a_vae_that_overflows_in_bfloat16_decodes_again_in_float32(
    settings, astronaut, monkeypatch
):
    from pipelines.loop import decode as decode_module

    real = decode_module.decode_latents

    def overflowing(vae, latents):  # what an fp16 VAE does on some latents: NaN
        images = real(vae, latents)
        return images if vae.dtype == torch.float32 else torch.full_like(images, float("nan"))

    monkeypatch.setattr(decode_module, "decode_latents", overflowing)
    half = Engine(dataclasses.replace(settings, cpu_precision="bfloat16"), device="cpu")
    result = half.generate("canny", astronaut, "a robot", **REQUEST)
    assert "The VAE overflowed in bfloat16; the images were decoded in float32." in result.warnings
    assert np.asarray(result.images[0]).std() > 5
    assert half.base_pipeline().vae.dtype == torch.bfloat16  # given back its precision


@pytest.mark.parametrize(
    "options",
    [
        {"scheduler": "LCM", "guidance_scale": 1.0},  # the LoRA merged into a bfloat16 UNet
        {"cache_interval": 2},  # feature caching's shallow steps
        {"scheduler": "Euler a"},  # noise drawn ahead, in the latents' precision
    ],
    ids=["lcm", "feature-caching", "euler-a"],
)
def test_the_opt_ins_run_in_bfloat16(settings, astronaut, options):
    half = Engine(dataclasses.replace(settings, cpu_precision="bfloat16"), device="cpu")
    result = half.generate("canny", astronaut, "a robot", **{**REQUEST, **options})
    assert np.asarray(result.images[0]).std() > 5
