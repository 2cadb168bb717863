"""The last step: latents to RGB images, with the fp16 VAE's overflow caught and decoded again."""

from __future__ import annotations

import numpy as np
import torch

from pipelines.loop.denoise import broken_images, decode_latents, to_uint8
from pipelines.notices import Notices


def decode_checked(vae, latents: torch.Tensor, notices: Notices) -> list[np.ndarray]:
    """Decode; NaN or black images are decoded again with the VAE in fp32, then reported."""
    images = decode_latents(vae, latents)
    if broken_images(images):
        dtype = vae.dtype
        vae.to(torch.float32)  # the fp16 VAE overflows on some latents; fp32 does not
        try:
            images = decode_latents(vae, latents.float())
        finally:
            vae.to(dtype)
        still_broken = broken_images(images)
        if still_broken:
            numbers = ", ".join(str(index + 1) for index in still_broken)
            notices.add(
                f"Image {numbers} came out empty (NaN or black) even with the VAE in fp32. "
                "Try another seed, fewer steps or a lower guidance scale."
            )
        else:
            precision = str(dtype).removeprefix("torch.")
            notices.add(f"The VAE overflowed in {precision}; the images were decoded in float32.")
    return to_uint8(images)
