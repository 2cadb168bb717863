"""Image to image and inpainting: the initial image's latents, the mask, the pixels kept.

The semantics are diffusers' `StableDiffusionControlNetImg2ImgPipeline` and, with a mask and a
4-channel UNet, `StableDiffusionControlNetInpaintPipeline`, so the same weights, seeds and settings
give their images (tests/test_img2img.py, tests/test_inpaint.py):

- The schedule is the sampler's own for `steps` steps, started at `start_index(steps, strength)`
  (`pipelines.loop.schedulers`), with the sampler's begin index set there; the run takes the
  remaining steps, and control windows are fractions of those.
- The initial latents are the VAE's encoding of the initial image (at the output size, in
  [-1, 1]), a sample of its latent distribution times the VAE's scaling factor, noised to the
  first step run (`scheduler.add_noise`). With a mask at strength 1 they are pure noise.
- Each image has its CPU generator, drawn from in diffusers' order: the latent sample, then the
  noise (then, with a mask, the sample diffusers' masked-image encoding takes, unused by a
  4-channel UNet but drawn so that the samplers' own noise comes next, as there).
- With a mask (downsampled to the latents by nearest neighbour, 1 = repaint), after each step
  `latents = (1 - mask) * proper + mask * latents`, where `proper` is the image's latents noised
  with the same noise to the next step's timestep (unnoised after the last step).

Then, outside diffusers: `keep_unmasked` pastes the original pixels back with the blurred mask
as alpha (`paste_back`). And a unit whose ControlNet role is in `MASKED_IMAGE_ROLES` (v1.1's
inpaint ControlNet) gets the initial image with the masked pixels set to -1 as its control image
(`masked_control_image`) instead of its annotator's map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# ControlNets whose control image is the initial image with the masked pixels at -1 (float), not a
# [0, 1] map: lllyasviel/control_v11p_sd15_inpaint is trained on such images.
MASKED_IMAGE_ROLES = frozenset({"inpaint"})


@dataclass
class ImageStart:
    """What the loop needs from the initial image."""

    latents: torch.Tensor  # (B, 4, h, w): the image's latents, scaled by the VAE's factor
    strength: float  # the denoising strength: where the schedule starts
    mask: torch.Tensor | None = None  # (1, 1, h, w), 1 = repaint; None: image to image only


def image_tensor(image: np.ndarray, device, dtype) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> (1, 3, H, W) in [-1, 1], as diffusers' image processor makes it:
    its values, and its memory layout too (a transposed view, channels last), which decides the
    order of the VAE encoder's first sums."""
    array = np.asarray(image).astype(np.float32) / 255.0
    tensor = torch.from_numpy(array[None].transpose(0, 3, 1, 2))
    return (2.0 * tensor - 1.0).to(device=device, dtype=dtype)


@torch.inference_mode()
def encode(vae, image: np.ndarray, device):
    """The VAE's latent distribution of `image` (its `mean` and `std`, (1, 4, h, w))."""
    return vae.encode(image_tensor(image, device, vae.dtype)).latent_dist


def sample_latents(distribution, generators, scaling_factor: float) -> torch.Tensor:
    """One sample of `distribution` per generator, times the VAE's scaling factor: (B, 4, h, w).

    Like diffusers' `latent_dist.sample(generator)`, mean + std * noise, the noise drawn in
    float32 on the CPU like the engine's other draws."""
    mean, std = distribution.mean, distribution.std
    samples = [
        mean + std * torch.randn(mean.shape, generator=generator).to(mean.device, mean.dtype)
        for generator in generators
    ]
    return scaling_factor * torch.cat(samples)


def latent_mask(repainted: np.ndarray, latent_size: tuple[int, int], device, dtype) -> torch.Tensor:
    """The pixels to repaint (H, W) bool -> (1, 1, h, w) of 0 and 1, downsampled to the latents by
    nearest neighbour (diffusers' rule)."""
    binary = torch.from_numpy(np.asarray(repainted, np.float32))[None, None]
    return torch.nn.functional.interpolate(binary, size=latent_size).to(device, dtype)


def masked_control_image(
    image: np.ndarray, repainted: np.ndarray | None, device, dtype
) -> torch.Tensor:
    """The inpaint ControlNet's control image: RGB uint8 (H, W, 3) -> (1, 3, H, W) in [0, 1], the
    pixels to repaint ((H, W) bool; None: none) set to -1."""
    array = np.asarray(image).astype(np.float32) / 255.0
    if repainted is not None:
        array[np.asarray(repainted, bool)] = -1.0
    tensor = torch.from_numpy(array.transpose(2, 0, 1).copy())[None]
    return tensor.to(device=device, dtype=dtype)


def paste_back(
    original: np.ndarray, images: list[np.ndarray], mask: np.ndarray
) -> list[np.ndarray]:
    """Each image with the original pixels outside the mask, blended across its blurred edge
    (AUTOMATIC1111's overlay): `original * (1 - alpha) + image * alpha`, alpha = mask / 255. Where
    the blurred mask is 0 the original pixel is kept exactly."""
    alpha = (np.asarray(mask, np.float32) / 255.0)[..., None]
    kept = np.asarray(original, np.float32)
    return [
        np.round(kept * (1.0 - alpha) + np.asarray(image, np.float32) * alpha).astype(np.uint8)
        for image in images
    ]
