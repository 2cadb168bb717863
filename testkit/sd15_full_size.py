"""Stable Diffusion 1.5 at full size with random weights: the UNet, VAE, CLIP text encoder and a
canny ControlNet, saved in the Hub layout under a MODELS_DIR, with nothing downloaded.

The configs are the Hub's (stable-diffusion-v1-5 and control_v11p_sd15_canny), so these models
cost what the real checkpoints cost (FLOPs, memory, compile work), which is all a speed benchmark
needs of them; their images are noise. The models are made on the meta device and only then given
storage on the target device, filled from one shared random pool, so that even 1.2 B parameters
are built quickly on a GPU.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import torch

SD15_DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
SD15_UP = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
# What the UNet's encoder and the ControlNet (its trainable copy, paper §3.2) share.
SD15_ENCODER: dict[str, Any] = {
    "in_channels": 4,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": SD15_DOWN,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
UNET_CONFIG: dict[str, Any] = {
    **SD15_ENCODER,
    "sample_size": 64,
    "out_channels": 4,
    "center_input_sample": False,
    "up_block_types": SD15_UP,
}
CONTROLNET_CONFIG: dict[str, Any] = {
    **SD15_ENCODER,
    "conditioning_channels": 3,
    "conditioning_embedding_out_channels": (16, 32, 96, 256),
    "controlnet_conditioning_channel_order": "rgb",
}
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
# CLIP ViT-L/14's text tower (openai/clip-vit-large-patch14, SD1.5's text_encoder).
CLIP_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
}
_POOL = 1 << 22  # random values shared by every weight: no per-parameter random generation


def fill_random(model: torch.nn.Module, seed: int) -> None:
    """Random weights at a sane scale, fast on any device: matrices and kernels ~ N(0, 1 / (3 x
    fan_in)) (PyTorch's default Linear scale), norm scales 1, biases 0. Values are slices of one
    random pool taken at different offsets, so no per-parameter random generation is needed."""
    first = next(model.parameters())
    generator = torch.Generator("cpu").manual_seed(seed)
    pool = torch.randn(_POOL, generator=generator).to(first.device, first.dtype)
    with torch.no_grad():
        for index, (name, parameter) in enumerate(model.named_parameters()):
            if parameter.ndim < 2:
                parameter.fill_(1.0 if name.endswith("weight") else 0.0)
                continue
            scale = (3 * parameter[0].numel()) ** -0.5
            flat = parameter.view(-1)
            start, offset = 0, (index * 104_729) % _POOL
            while start < flat.numel():
                count = min(flat.numel() - start, _POOL - offset)
                torch.mul(pool[offset : offset + count], scale, out=flat[start : start + count])
                start, offset = start + count, 0


def materialise(model: torch.nn.Module, device: torch.device, dtype, seed: int):
    """A model made on the meta device, given storage on `device` in `dtype` and random weights
    (`fill_random`); returns it."""
    model.to(dtype=dtype)  # still on the meta device: free
    model.to_empty(device=device)
    fill_random(model, seed)
    return model


def build_full_models(
    models_dir: Path, device: torch.device, control_role: str = "canny"
) -> dict[str, float]:
    """SD1.5-size base + the `control_role` ControlNet with random fp16 weights, saved under
    `models_dir` in the Hub layout (what MODELS_DIR holds), under their default ids. Built on
    `device` (quick on a GPU). Returns timings (`build_s`, `save_s`) and `parameters_m`."""
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from settings import DEFAULT_MODEL_IDS
    from testkit.tiny_models import SD15_SCHEDULER, build_tokenizer

    timings = {}
    started = time.perf_counter()
    base_dir = models_dir / DEFAULT_MODEL_IDS["base"]
    tokenizer = build_tokenizer(base_dir / "tokenizer")  # byte-level: 77 tokens all the same
    text_config = CLIPTextConfig(
        **CLIP_TEXT_CONFIG,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    dtype = torch.float16
    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET_CONFIG)
        vae = AutoencoderKL(**VAE_CONFIG)
        controlnet = ControlNetModel(**CONTROLNET_CONFIG)
        text_encoder = CLIPTextModel(text_config)
    for seed, model in enumerate((unet, vae, controlnet, text_encoder)):
        materialise(model, device, dtype, seed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timings["build_s"] = time.perf_counter() - started

    started = time.perf_counter()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(base_dir, safe_serialization=True)
    controlnet.save_pretrained(
        models_dir / DEFAULT_MODEL_IDS[control_role], safe_serialization=True
    )
    timings["save_s"] = time.perf_counter() - started
    parameters = sum(
        p.numel() for m in (unet, vae, controlnet, text_encoder) for p in m.parameters()
    )
    timings["parameters_m"] = round(parameters / 1e6, 1)
    del pipe, unet, vae, controlnet, text_encoder
    gc.collect()  # the caller's next models get the memory back
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    return timings
