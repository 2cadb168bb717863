"""Feature caching: DeepCache (Ma, Fang, Wang, CVPR 2024) adapted to ControlNet. Opt-in: it
changes the images a little, in exchange for cheaper steps.

Adjacent denoising steps compute nearly the same deep UNet features. Every `interval` steps a full
step runs and keeps the input of the UNet's last up block: everything below its skip level, the
ControlNet's deep residuals included. The steps between run only the shallow branch (conv_in, the
first down block, the last up block on the kept features) and each ControlNet only its own shallow
branch (conditioning embedding, conv_in, first down block, and the zero convolutions of the
residuals that reach that up block: 3 of 13 for SD1.5). `interval` 1 is the exact path.

The two UNet forwards follow diffusers' `UNet2DConditionModel.forward` (Apache-2.0) step by step
for SD1.5-style UNets (no class or added embeddings), and `shallow_controlnet` the first steps of
`ControlNetModel.forward`: with the kept features from the same inputs, a shallow step gives exactly
what a full step gives (tested). Each is an `nn.Module` so the fast path can compile it in place.
"""

from __future__ import annotations

import torch

from errors import InvalidRequestError

# Where the wrappers are kept on the model they wrap: made once, so compiled graphs are reused.
_WRAPPER_ATTRIBUTE = "_feature_cache_wrapper"


def is_full_step(index: int, interval: int) -> bool:
    """DeepCache's uniform schedule: a full step every `interval` steps, the first one included."""
    return interval <= 1 or index % interval == 0


def shallow_count(unet: torch.nn.Module) -> int:
    """How many skip connections reach the last up block (conv_in and the first down block's
    layers: 3 for SD1.5); the ControlNet residuals a shallow step uses."""
    return len(unet.up_blocks[-1].resnets)


def check_supported(unet: torch.nn.Module) -> None:
    """Feature caching follows SD1.5's UNet; refuse what it does not cover, saying so."""
    config = unet.config
    plain = (
        getattr(unet, "class_embedding", None) is None
        and config.addition_embed_type is None
        and getattr(unet, "encoder_hid_proj", None) is None
        and getattr(unet, "time_embed_act", None) is None
        and not config.center_input_sample
        and len(unet.down_blocks[0].resnets) + 1 == shallow_count(unet)
    )
    if not plain:
        raise InvalidRequestError(
            "Feature caching (cache_interval > 1) supports SD1.5-style UNets only, and this base "
            "model's UNet is different. Set cache_interval to 1."
        )


def _onload(module: torch.nn.Module) -> None:
    """Low-memory mode's model CPU offload moves a model to the GPU in a hook on its forward
    (accelerate's `_hf_hook`), which calling its blocks directly skips: run that step here."""
    hook = getattr(module, "_hf_hook", None)
    if hook is not None:
        hook.pre_forward(module)


def _down(block, hidden, emb, embeds):
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=hidden, temb=emb, encoder_hidden_states=embeds)
    return block(hidden_states=hidden, temb=emb)


def _up(block, hidden, skips, emb, embeds, upsample_size):
    if getattr(block, "has_cross_attention", False):
        return block(
            hidden_states=hidden,
            temb=emb,
            res_hidden_states_tuple=skips,
            encoder_hidden_states=embeds,
            upsample_size=upsample_size,
        )
    return block(
        hidden_states=hidden, temb=emb, res_hidden_states_tuple=skips, upsample_size=upsample_size
    )


class _Wrapper(torch.nn.Module):
    """A module around one model (`self.model`, its only submodule) that calls into its parts."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model


class CachingUNet(_Wrapper):
    """`forward(..., cached=None)` is a full step that also returns the features to keep;
    `forward(..., cached=features)` is a shallow step on them. Returns (noise, features)."""

    def forward(
        self,
        sample: torch.Tensor,  # (B, 4, h, w)
        timestep: torch.Tensor,
        embeds: torch.Tensor,  # (B, 77, D)
        down: list[torch.Tensor] | None = None,  # ControlNet residuals: 12 (full) or 3 (shallow)
        middle: torch.Tensor | None = None,  # full steps only
        cached: torch.Tensor | None = None,  # the last up block's input from a full step
    ) -> tuple[torch.Tensor, torch.Tensor]:
        unet = self.model
        _onload(unet)
        # 1. Time embedding, and whether upsamplers must be told their size (odd latent sizes).
        factor = 2**unet.num_upsamplers
        forward_upsample_size = any(dim % factor != 0 for dim in sample.shape[-2:])
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)

        # 2. Down: all blocks on a full step, the first one on a shallow step.
        hidden = unet.conv_in(sample)
        skips = (hidden,)
        for block in unet.down_blocks if cached is None else unet.down_blocks[:1]:
            hidden, outputs = _down(block, hidden, emb, embeds)
            skips += outputs
        if down is not None:  # zip stops at the residuals given, as diffusers' does
            skips = tuple(skip + residual for skip, residual in zip(skips, down, strict=False))

        last = unet.up_blocks[-1]
        if cached is None:
            # 3. Middle and every up block but the last: the features a shallow step reuses.
            hidden = _middle(unet.mid_block, hidden, emb, embeds)
            if middle is not None:
                hidden = hidden + middle
            upsample_size = None
            for block in unet.up_blocks[:-1]:
                count = len(block.resnets)
                block_skips, skips = skips[-count:], skips[:-count]
                if forward_upsample_size:
                    upsample_size = skips[-1].shape[2:]
                hidden = _up(block, hidden, block_skips, emb, embeds, upsample_size)
            cached = hidden
        skips = skips[: len(last.resnets)]

        # 4. The last up block and the output head.
        hidden = _up(last, cached, skips, emb, embeds, None)
        if unet.conv_norm_out is not None:
            hidden = unet.conv_act(unet.conv_norm_out(hidden))
        return unet.conv_out(hidden), cached


def _middle(block, hidden, emb, embeds):
    if getattr(block, "has_cross_attention", False):
        return block(hidden, emb, encoder_hidden_states=embeds)
    return block(hidden, emb)


class ShallowControlNet(_Wrapper):
    """A ControlNet's first `count` residuals only, unweighted: what `ControlNetModel.forward`
    computes for them, without the blocks below."""

    def forward(
        self,
        sample: torch.Tensor,  # (B, 4, h, w)
        timestep: torch.Tensor,
        embeds: torch.Tensor,  # (B, 77, D)
        control: torch.Tensor,  # (B, 3, H, W) in [0, 1]
        count: int,
    ) -> list[torch.Tensor]:
        controlnet = self.model
        _onload(controlnet)
        if controlnet.config.controlnet_conditioning_channel_order == "bgr":
            control = torch.flip(control, dims=[1])
        timesteps = timestep[None] if timestep.dim() == 0 else timestep
        timesteps = timesteps.to(sample.device).expand(sample.shape[0])
        emb = controlnet.time_embedding(controlnet.time_proj(timesteps).to(sample.dtype), None)
        hidden = controlnet.conv_in(sample) + controlnet.controlnet_cond_embedding(control)
        skips = (hidden,)
        hidden, outputs = _down(controlnet.down_blocks[0], hidden, emb, embeds)
        skips = (skips + outputs)[:count]
        return [
            zero_conv(skip)
            for skip, zero_conv in zip(skips, controlnet.controlnet_down_blocks, strict=False)
        ]


def caching_unet(unet: torch.nn.Module) -> CachingUNet:
    """The `CachingUNet` of `unet`, made once and kept on it (not as a submodule)."""
    return _wrapper(unet, CachingUNet)


def shallow_controlnet(controlnet: torch.nn.Module) -> ShallowControlNet:
    """The `ShallowControlNet` of `controlnet`, made once and kept on it."""
    return _wrapper(controlnet, ShallowControlNet)


def _wrapper(module: torch.nn.Module, kind: type[_Wrapper]):
    wrapper = module.__dict__.get(_WRAPPER_ATTRIBUTE)
    if wrapper is None:
        wrapper = kind(module)
        module.__dict__[_WRAPPER_ATTRIBUTE] = wrapper  # bypasses nn.Module's registration
    return wrapper


def existing_wrapper(module: torch.nn.Module) -> torch.nn.Module | None:
    """The wrapper made for `module`, if any (to undo its compile)."""
    return module.__dict__.get(_WRAPPER_ATTRIBUTE)
