"""The LCM sampler: LCM-LoRA merged into the UNet for few steps, and the exact path untouched."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention

from errors import ModelUnavailableError
from pipelines.engine import Engine
from pipelines.speed import fast_path, lcm_lora
from settings import DEFAULT_MODEL_IDS, OPTIONAL_MODEL_IDS
from testkit.tiny_models import save_lora_in_kohya_format
from testkit.tolerances import ROUNDING_LEVELS, assert_levels_within

LCM = {"scheduler": "LCM", "steps": 4, "guidance_scale": 1.0, "image_resolution": 256, "seed": 5}
EXACT = {"steps": 3, "image_resolution": 256, "seed": 5}


def test_lcm_merges_the_lora_and_other_samplers_get_the_exact_unet_back(settings, astronaut):
    engine = Engine(settings, device="cpu")
    before = engine.generate("canny", astronaut, "a robot", **EXACT)
    unet = engine.base_pipeline().unet
    own = {name: p.detach().clone() for name, p in unet.named_parameters()}

    lcm = engine.generate("canny", astronaut, "a robot", **LCM)
    assert lcm_lora.merged_lora(unet) is not None and lcm.warnings == []
    assert lcm.parameters[0]["lora_id"] == settings.model_ids["lcm_lora"]  # in the PNG
    assert before.parameters[0]["lora_id"] is None
    changed = [name for name, p in unet.named_parameters() if not torch.equal(p, own[name])]
    assert any("conv1" in name for name in changed) and any("to_q" in name for name in changed)
    assert all("lora" not in name for name, _ in unet.named_parameters())  # merged, not layered

    after = engine.generate("canny", astronaut, "a robot", **EXACT)
    assert lcm_lora.merged_lora(unet) is None
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


def test_a_kohya_style_copy_merges_the_same_weights(models_dir, tmp_path):
    """Community copies of LCM-LoRA use A1111 / ComfyUI's keys (lora_unet_*, lora_down, lora_up,
    alpha): diffusers converts them, and the merged UNet equals the one from diffusers' format
    (here with alpha at half the rank, which the loader must scale by)."""
    from diffusers import StableDiffusionControlNetPipeline

    diffusers_format = models_dir / OPTIONAL_MODEL_IDS["lcm_lora"]
    kohya_format = save_lora_in_kohya_format(
        diffusers_format / "pytorch_lora_weights.safetensors", tmp_path / "kohya"
    )
    merged = []
    for source in (diffusers_format, kohya_format):
        pipe = StableDiffusionControlNetPipeline.from_pretrained(
            models_dir / DEFAULT_MODEL_IDS["base"], controlnet=None, safety_checker=None
        )
        own = {name: weight.clone() for name, weight in pipe.unet.state_dict().items()}
        lcm_lora.use_lora(pipe, str(source), models_dir)
        merged.append(pipe.unet.state_dict())
    changed = [name for name in own if not torch.equal(own[name], merged[0][name])]
    assert len(changed) > 50  # attention, feed-forward, resnet convolutions and time projections
    # The kohya copy differs by powers of two only (up weights / 0.5, alpha / rank = 0.5), which
    # scale binary floats exactly: the same products, the same sums, equal bit for bit.
    assert all(torch.equal(merged[1][name], merged[0][name]) for name in own)


def test_lcm_on_the_fast_path_matches_eager_with_fused_projections(
    settings, astronaut, monkeypatch
):
    """The fast path fuses q/k/v into one projection: the merged LoRA must reach it too."""
    real = fast_path.compile_in_place
    monkeypatch.setattr(
        fast_path,
        "compile_in_place",
        lambda module, **options: real(module, **{**options, "backend": "eager"}),
    )
    eager = Engine(settings, device="cpu").generate("canny", astronaut, "a robot", **LCM)
    fast_engine = Engine(dataclasses.replace(settings, fast_path="on"), device="cpu")
    exact_before = fast_engine.generate("canny", astronaut, "a robot", **EXACT)
    lcm = fast_engine.generate("canny", astronaut, "a robot", **LCM)
    unet = fast_engine.base_pipeline().unet
    assert "fused_qkv" in fast_path.applied(unet)
    fused = [m for m in unet.modules() if isinstance(m, Attention) and m.fused_projections]
    assert fused
    for attention in fused:  # the fused weights are the merged q / k / v ones
        if attention.is_cross_attention:
            projection, parts = attention.to_kv, (attention.to_k, attention.to_v)
        else:
            projection, parts = attention.to_qkv, (attention.to_q, attention.to_k, attention.to_v)
        assert torch.equal(projection.weight, torch.cat([part.weight for part in parts]))
    # Fused projections, channels_last and the traced graph reorder float32 sums only.
    assert_levels_within(lcm.images[0], eager.images[0], ROUNDING_LEVELS, "lcm_lora:fast_path")
    exact_after = fast_engine.generate("canny", astronaut, "a robot", **EXACT)
    assert np.array_equal(exact_after.images[0], exact_before.images[0])
