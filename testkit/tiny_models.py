"""Tiny, randomly initialised Stable Diffusion 1.5 + ControlNet models for the tests and the
benchmarks' smoke runs, plus what the full-size factory shares with them (SD1.5's scheduler
config, the byte-level tokenizer).

Nothing can be downloaded when the tests run (``HF_HUB_OFFLINE=1``), so the tests build
architecturally real but tiny models in code and save them in the same file layout as the
Hugging Face Hub repos. The app's real loading code (``from_pretrained`` on a local folder,
``use_safetensors=True``) then loads them unchanged.

Geometry matches SD1.5: the VAE and the ControlNet's condition embedding both downsample by 8,
so a WxH control image pairs with a WxH output (latents of W/8 x H/8), and the UNet/ControlNet
have two down blocks, so ControlNet residuals come at two resolutions. The models are small
enough that a few-step generation at 128x128 is quick on a CPU.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    ControlNetModel,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

BASE_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"

# Shared by the UNet and every ControlNet (the ControlNet must mirror the UNet's down path).
_UNET_BLOCKS = (32, 64)
_LAYERS_PER_BLOCK = 2
_CROSS_ATTENTION_DIM = 32
_DOWN_BLOCKS = ("DownBlock2D", "CrossAttnDownBlock2D")
_ATTENTION_HEAD_DIM = 8
# Four channel entries -> three stride-2 convs -> /8, like SD1.5 and like the tiny VAE below.
_CONDITIONING_CHANNELS = (8, 8, 16, 16)
_VAE_BLOCKS = (8, 8, 16, 16)
# SD1.5's scheduler/scheduler_config.json (clip_sample is unused by PNDM but kept, as on the Hub,
# because schedulers built from this config, e.g. DDIM, read it).
SD15_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "trained_betas": None,
}


def build_tokenizer(folder: Path) -> CLIPTokenizer:
    """A real byte-level CLIP BPE tokenizer (514-entry vocab, no merges) read from ``folder``.

    Writes vocab.json and merges.txt like the Hub repo has; ``save_pretrained`` later adds
    tokenizer.json and tokenizer_config.json next to them.
    """
    chars = sorted(ByteLevel.alphabet())  # the 256 byte-level characters
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def _text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=32,
    )
    return CLIPTextModel(config)


def build_tiny_base(target: Path, seed: int = 0) -> Path:
    """Save a tiny SD1.5-layout pipeline into ``target`` and return it.

    Writes unet/, vae/, text_encoder/, tokenizer/, scheduler/ and model_index.json, with
    safety_checker / feature_extractor recorded as ``[null, null]``.
    """
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=_UNET_BLOCKS,
        layers_per_block=_LAYERS_PER_BLOCK,
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=_DOWN_BLOCKS,
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=_CROSS_ATTENTION_DIM,
        attention_head_dim=_ATTENTION_HEAD_DIM,
    )
    vae = AutoencoderKL(
        block_out_channels=_VAE_BLOCKS,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(_VAE_BLOCKS),
        up_block_types=("UpDecoderBlock2D",) * len(_VAE_BLOCKS),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=512,
    )
    tokenizer = build_tokenizer(target / "tokenizer")
    text_encoder = _text_encoder(tokenizer)
    scheduler = PNDMScheduler.from_config(SD15_SCHEDULER)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(target, safe_serialization=True)
    return target


def build_tiny_controlnet(target: Path, seed: int = 0) -> Path:
    """Save a tiny ControlNetModel matching the tiny UNet into ``target`` and return it.

    A fresh ControlNet has zero-initialised output convs (no effect at all, the same for every
    seed) and a condition embedding whose default init all but erases the control image, so
    those layers get Kaiming-normal weights instead: the control image and the ControlNet then
    visibly change the output.
    """
    torch.manual_seed(seed)
    controlnet = ControlNetModel(
        block_out_channels=_UNET_BLOCKS,
        layers_per_block=_LAYERS_PER_BLOCK,
        in_channels=4,
        down_block_types=_DOWN_BLOCKS,
        cross_attention_dim=_CROSS_ATTENTION_DIM,
        attention_head_dim=_ATTENTION_HEAD_DIM,
        conditioning_embedding_out_channels=_CONDITIONING_CHANNELS,
    )
    reinit = [
        controlnet.controlnet_cond_embedding,
        controlnet.controlnet_down_blocks,
        controlnet.controlnet_mid_block,
    ]
    for module in reinit:
        for conv in module.modules():
            if isinstance(conv, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(conv.weight)
    controlnet.save_pretrained(target, safe_serialization=True)
    return target


def build_tiny_taesd(target: Path, seed: int = 0) -> Path:
    """Save a tiny AutoencoderTiny (TAESD's architecture: x8 up from 4 latent channels) into
    ``target``: the preview decoder."""
    torch.manual_seed(seed)
    taesd = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
    )
    taesd.save_pretrained(target, safe_serialization=True)
    return target


def build_models_dir(models_dir: Path, controlnet_ids: Iterable[str]) -> Path:
    """Create ``models_dir/<BASE_ID>`` and ``models_dir/<id>`` for each ControlNet id.

    Each ControlNet gets its own seed, so they differ from one another.
    """
    build_tiny_base(models_dir / BASE_ID)
    for seed, controlnet_id in enumerate(controlnet_ids, start=1):
        build_tiny_controlnet(models_dir / controlnet_id, seed=seed)
    return models_dir


# What LCM-LoRA for SD1.5 adapts: the attention projections, the transformer blocks' in/out and
# feed-forward layers, and the resnets' convolutions and time projections.
_LORA_TARGETS = [
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "time_emb_proj",
]  # fmt: skip


def build_random_lcm_lora(target: Path, base: Path, seed: int = 0, rank: int = 4) -> Path:
    """Save a random LoRA for the tiny base's UNet into ``target`` as the Hub's LCM-LoRA repo
    holds it (``pytorch_lora_weights.safetensors``, diffusers' LoRA format), via PEFT and
    ``save_lora_weights``: what ``load_lora_weights`` reads."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    config = LoraConfig(
        r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=_LORA_TARGETS
    )
    unet.add_adapter(config)
    for name, parameter in unet.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero (no effect): give the LoRA one
            torch.nn.init.normal_(parameter, std=0.02)
    StableDiffusionPipeline.save_lora_weights(
        target, unet_lora_layers=get_peft_model_state_dict(unet), safe_serialization=True
    )
    return target


def save_lora_in_kohya_format(lora_file: Path, target: Path, alpha_fraction: float = 0.5) -> Path:
    """The same LoRA under the keys AUTOMATIC1111 and ComfyUI read (``lora_unet_<module>``,
    ``lora_down`` / ``lora_up``, ``alpha``), as community copies of LCM-LoRA are saved. With
    alpha = rank * `alpha_fraction` the up weights are divided by it, so the merged delta
    (up @ down * alpha / rank) is unchanged."""
    from safetensors.torch import load_file, save_file

    kohya = {}
    for key, value in load_file(lora_file).items():
        module, kind = key.removeprefix("unet.").rsplit(".lora_", 1)
        name = "lora_unet_" + module.replace(".", "_")
        if kind.startswith("A"):  # (rank, in): down
            kohya[f"{name}.lora_down.weight"] = value
            kohya[f"{name}.alpha"] = torch.tensor(value.shape[0] * alpha_fraction)
        else:
            kohya[f"{name}.lora_up.weight"] = value / alpha_fraction
    target.mkdir(parents=True, exist_ok=True)
    save_file(kohya, target / "pytorch_lora_weights.safetensors")
    return target
