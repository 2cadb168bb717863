"""Write a diffusers SD1.5-layout pipeline as one original-layout (LDM / A1111) .safetensors file.

Community base models usually come as such a single file: the UNet under
``model.diffusion_model.``, the VAE under ``first_stage_model.`` and the CLIP text encoder under
``cond_stage_model.transformer.``. This is the inverse of what diffusers' ``from_single_file``
converts, so a tiny test pipeline can be round-tripped through that loader.

Adapted from diffusers' ``scripts/convert_diffusers_to_original_stable_diffusion.py``
(Copyright The HuggingFace Team, Apache License 2.0). Unlike that script, which hardcodes SD1.5's
four UNet/VAE blocks, the block loops here are derived from each model's config, the VAE
attention names are today's (``to_q``, ``to_out.0``, ...), and the text encoder's keys work with
transformers' flattened ``CLIPTextModel`` (no ``text_model.`` wrapper).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer.text_model."

# (diffusers prefix, original prefix), applied to the first prefix that starts a key.
_UNET_FIXED = [
    ("time_embedding.linear_1.", "time_embed.0."),
    ("time_embedding.linear_2.", "time_embed.2."),
    ("conv_in.", "input_blocks.0.0."),
    ("conv_norm_out.", "out.0."),
    ("conv_out.", "out.2."),
    ("mid_block.resnets.0.", "middle_block.0."),
    ("mid_block.attentions.0.", "middle_block.1."),
    ("mid_block.resnets.1.", "middle_block.2."),
]
_UNET_RESNET_PARTS = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]
_VAE_ATTENTION_PARTS = [
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
]


def _unet_prefixes(config) -> list[tuple[str, str]]:
    per_block = config.layers_per_block + 1  # resnets, plus the downsampler / one more up resnet
    last = len(config.down_block_types) - 1
    prefixes = list(_UNET_FIXED)
    for i in range(last + 1):
        for j in range(config.layers_per_block):
            block = per_block * i + j + 1
            prefixes.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{block}.0."))
            prefixes.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{block}.1."))
        if i < last:
            block = per_block * (i + 1)
            prefixes.append(
                (f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{block}.0.op.")
            )
        for j in range(per_block):
            block = per_block * i + j
            prefixes.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{block}.0."))
            prefixes.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{block}.1."))
        if i < last:
            # The upsampler follows the attention in blocks that have one.
            slot = 2 if "CrossAttn" in config.up_block_types[i] else 1
            block = per_block * i + config.layers_per_block
            prefixes.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{block}.{slot}."))
    return prefixes


def _vae_prefixes(config) -> list[tuple[str, str]]:
    last = len(config.down_block_types) - 1
    prefixes = [("conv_norm_out.", "norm_out."), ("mid_block.attentions.0.", "mid.attn_1.")]
    prefixes += [(f"mid_block.resnets.{k}.", f"mid.block_{k + 1}.") for k in range(2)]
    for i in range(last + 1):
        up = last - i  # the original numbers decoder blocks from the bottom
        prefixes.append((f"down_blocks.{i}.resnets.", f"down.{i}.block."))
        prefixes.append((f"down_blocks.{i}.downsamplers.0.", f"down.{i}.downsample."))
        prefixes.append((f"up_blocks.{i}.resnets.", f"up.{up}.block."))
        prefixes.append((f"up_blocks.{i}.upsamplers.0.", f"up.{up}.upsample."))
    return prefixes


def _rename(key: str, prefixes: list[tuple[str, str]]) -> str:
    for diffusers_prefix, original_prefix in prefixes:
        if key.startswith(diffusers_prefix):
            return original_prefix + key[len(diffusers_prefix) :]
    return key


def _replace_parts(key: str, parts: list[tuple[str, str]]) -> str:
    for diffusers_part, original_part in parts:
        key = key.replace(diffusers_part, original_part)
    return key


def unet_to_original(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    prefixes = _unet_prefixes(unet.config)
    converted = {}
    for key, tensor in unet.state_dict().items():
        new_key = _rename(key, prefixes)
        if "resnets" in key:
            new_key = _replace_parts(new_key, _UNET_RESNET_PARTS)
        converted[UNET_PREFIX + new_key] = tensor
    return converted


def vae_to_original(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    prefixes = _vae_prefixes(vae.config)
    converted = {}
    for key, tensor in vae.state_dict().items():
        coder, _, rest = key.partition(".")  # encoder / decoder / quant_conv / post_quant_conv
        new_key = f"{coder}.{_rename(rest, prefixes)}".replace("conv_shortcut", "nin_shortcut")
        if "mid_block.attentions" in key:
            new_key = _replace_parts(new_key, _VAE_ATTENTION_PARTS)
            if tensor.ndim == 2:  # the original's attention projections are 1x1 convs
                tensor = tensor.reshape(*tensor.shape, 1, 1)
        converted[VAE_PREFIX + new_key] = tensor
    return converted


def text_encoder_to_original(text_encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        TEXT_ENCODER_PREFIX + key.removeprefix("text_model."): tensor
        for key, tensor in text_encoder.state_dict().items()
    }


def write_ldm_checkpoint(diffusers_folder: Path, target: Path) -> Path:
    """Save the pipeline in ``diffusers_folder`` as the single file ``target``; return it."""
    pipe = StableDiffusionPipeline.from_pretrained(
        diffusers_folder, safety_checker=None, use_safetensors=True, local_files_only=True
    )
    state_dict = {
        **unet_to_original(pipe.unet),
        **vae_to_original(pipe.vae),
        **text_encoder_to_original(pipe.text_encoder),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(target))
    return target
