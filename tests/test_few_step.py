"""The LCM sampler: LCM-LoRA merged into the UNet for few steps, and the exact path untouched."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention

from errors import ModelUnavailableError
from pipelines import fast, few_step
from pipelines.engine import Engine

LCM = {"scheduler": "LCM", "steps": 4, "guidance_scale": 1.0, "image_resolution": 256, "seed": 5}
EXACT = {"steps": 3, "image_resolution": 256, "seed": 5}


def test_lcm_merges_the_lora_and_other_samplers_get_the_exact_unet_back(settings, astronaut):
    engine = Engine(settings, device="cpu")
    before = engine.generate("canny", astronaut, "a robot", **EXACT)
    unet = engine.base_pipeline().unet
    own = {name: p.detach().clone() for name, p in unet.named_parameters()}

    lcm = engine.generate("canny", astronaut, "a robot", **LCM)
    assert few_step.merged_lora(unet) is not None and lcm.warnings == []
    assert lcm.parameters[0]["lora_id"] == settings.model_ids["lcm_lora"]  # in the PNG
    assert before.parameters[0]["lora_id"] is None
    changed = [name for name, p in unet.named_parameters() if not torch.equal(p, own[name])]
    assert any("conv1" in name for name in changed) and any("to_q" in name for name in changed)
    assert all("lora" not in name for name, _ in unet.named_parameters())  # merged, not layered

    after = engine.generate("canny", astronaut, "a robot", **EXACT)
    assert few_step.merged_lora(unet) is None
    assert all(torch.equal(p, own[name]) for name, p in unet.named_parameters())
    assert np.array_equal(after.images[0], before.images[0])
    again = engine.generate("canny", astronaut, "a robot", **LCM)  # merged again, the same way
    assert np.array_equal(again.images[0], lcm.images[0])


def test_lcm_advice_on_steps_and_guidance(engine, astronaut):
    result = engine.generate(
        "canny", astronaut, "a robot", **{**LCM, "steps": 20, "guidance_scale": 7.0}
    )
    assert any("4-8 steps" in warning for warning in result.warnings)
    assert any("images burn" in warning for warning in result.warnings)


def test_lcm_without_its_lora_says_how_to_get_it(settings, astronaut):
    missing = {**settings.model_ids, "lcm_lora": "nobody/no-lcm-lora"}
    engine = Engine(dataclasses.replace(settings, model_ids=missing), device="cpu")
    with pytest.raises(ModelUnavailableError, match="nobody/no-lcm-lora.*MODEL_LCM_LORA"):
        engine.generate("canny", astronaut, "a robot", **LCM)
    unet = engine.base_pipeline().unet
    assert all("lora" not in name for name, _ in unet.named_parameters())
    engine.generate("canny", astronaut, "a robot", **EXACT)  # still serving


def test_lcm_on_the_fast_path_matches_eager_with_fused_projections(
    settings, astronaut, monkeypatch
):
    """The fast path fuses q/k/v into one projection: the merged LoRA must reach it too."""
    real = fast.compile_in_place
    monkeypatch.setattr(
        fast,
        "compile_in_place",
        lambda module, **options: real(module, **{**options, "backend": "eager"}),
    )
    eager = Engine(settings, device="cpu").generate("canny", astronaut, "a robot", **LCM)
    fast_engine = Engine(dataclasses.replace(settings, fast_path="on"), device="cpu")
    exact_before = fast_engine.generate("canny", astronaut, "a robot", **EXACT)
    lcm = fast_engine.generate("canny", astronaut, "a robot", **LCM)
    unet = fast_engine.base_pipeline().unet
    assert "fused_qkv" in fast.applied(unet)
    fused = [m for m in unet.modules() if isinstance(m, Attention) and m.fused_projections]
    assert fused
    for attention in fused:  # the fused weights are the merged q / k / v ones
        if attention.is_cross_attention:
            projection, parts = attention.to_kv, (attention.to_k, attention.to_v)
        else:
            projection, parts = attention.to_qkv, (attention.to_q, attention.to_k, attention.to_v)
        assert torch.equal(projection.weight, torch.cat([part.weight for part in parts]))
    assert np.abs(lcm.images[0].astype(int) - eager.images[0].astype(int)).max() <= 2
    exact_after = fast_engine.generate("canny", astronaut, "a robot", **EXACT)
    assert np.array_equal(exact_after.images[0], exact_before.images[0])
