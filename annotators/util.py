"""Image helpers shared by every annotator: reading uploads safely, HWC3 and resize_image.

`HWC3` and `resize_image` are adapted from lllyasviel/ControlNet (annotator/util.py, Apache-2.0):
RGBA is composited onto white instead of the reference's black-blend, and the rounding to
multiples of 64 is kept.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from errors import ImageTooLargeError, InvalidImageError

# SD1.5's VAE downsamples by 8 and its UNet by another 8: sizes must be multiples of 64.
SIZE_MULTIPLE = 64


def HWC3(image: np.ndarray) -> np.ndarray:  # noqa: N802 (the reference name, kept on purpose)
    """Return an RGB uint8 (H, W, 3) array from grey, grey+alpha, RGB or RGBA input.

    Transparent pixels become white, like paper under a drawing.
    """
    if image.dtype != np.uint8:
        raise InvalidImageError(f"Expected an 8-bit image, got pixel type {image.dtype}.")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise InvalidImageError(f"Expected an image of shape (H, W, C), got {image.shape}.")
    channels = image.shape[2]
    if channels == 3:
        return image
    if channels == 1:
        return np.repeat(image, 3, axis=2)
    colour = image[:, :, :-1].astype(np.float32)
    if channels == 2:
        colour = np.repeat(colour, 3, axis=2)
    alpha = image[:, :, -1:].astype(np.float32) / 255.0
    blended = colour * alpha + 255.0 * (1.0 - alpha)
    return blended.clip(0, 255).round().astype(np.uint8)


def output_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """(H, W) with the short side scaled to `resolution`, each rounded to a multiple of 64."""
    scale = resolution / min(height, width)
    new_height = max(SIZE_MULTIPLE, int(np.round(height * scale / SIZE_MULTIPLE)) * SIZE_MULTIPLE)
    new_width = max(SIZE_MULTIPLE, int(np.round(width * scale / SIZE_MULTIPLE)) * SIZE_MULTIPLE)
    return new_height, new_width


def resize_to(image: np.ndarray, height: int, width: int, interpolation: int | None = None):
    """Resize: area averaging when shrinking, Lanczos when enlarging (the reference's choice)."""
    if image.shape[:2] == (height, width):
        return image
    if interpolation is None:
        enlarging = height * width > image.shape[0] * image.shape[1]
        interpolation = cv2.INTER_LANCZOS4 if enlarging else cv2.INTER_AREA
    return cv2.resize(image, (width, height), interpolation=interpolation)


def resize_image(image: np.ndarray, resolution: int) -> np.ndarray:
    """Scale so the short side is `resolution`, keeping the aspect, sizes multiples of 64."""
    height, width = output_size(image.shape[0], image.shape[1], resolution)
    return resize_to(image, height, width)


# Output aspect ratios (width:height); "image" keeps the input image's own aspect.
ASPECT_RATIOS: dict[str, tuple[int, int] | None] = {
    "image": None,
    "1:1": (1, 1),
    "4:3": (4, 3),
    "3:4": (3, 4),
    "3:2": (3, 2),
    "2:3": (2, 3),
    "16:9": (16, 9),
    "9:16": (9, 16),
}

# How a control image whose aspect differs from the output's is fitted (the AUTOMATIC1111
# ControlNet extension's meanings): stretch; scale to cover and crop the centre; scale to fit
# inside and fill the border with the map's median border colour.
RESIZE_MODES: dict[str, str] = {
    "just_resize": "Just resize",
    "crop_and_resize": "Crop and resize",
    "resize_and_fill": "Resize and fill",
}


def target_size(height: int, width: int, resolution: int, aspect_ratio: str) -> tuple[int, int]:
    """The output (H, W): short side `resolution`, aspect of the image or of `aspect_ratio`."""
    ratio = ASPECT_RATIOS[aspect_ratio]
    if ratio is None:
        return output_size(height, width, resolution)
    ratio_width, ratio_height = ratio
    return output_size(ratio_height, ratio_width, resolution)


def crop_to_aspect(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The largest centred crop of `image` with the aspect of (height, width)."""
    old_height, old_width = image.shape[:2]
    scale = max(height / old_height, width / old_width)  # cover the target
    crop_height = min(old_height, round(height / scale))
    crop_width = min(old_width, round(width / scale))
    top = (old_height - crop_height) // 2
    left = (old_width - crop_width) // 2
    return image[top : top + crop_height, left : left + crop_width]


def fitted_size(image_height: int, image_width: int, height: int, width: int) -> tuple[int, int]:
    """The size of the image scaled to fit inside (height, width), aspect kept."""
    scale = min(height / image_height, width / image_width)
    return (
        min(height, max(1, round(image_height * scale))),
        min(width, max(1, round(image_width * scale))),
    )


def pixel_perfect_resolution(
    image_height: int, image_width: int, height: int, width: int, resize_mode: str
) -> int:
    """The annotator resolution (short side) that matches an output of (height, width): the
    image's short side scaled as `resize_mode` scales the image into the output (to fit inside
    for "resize_and_fill", to cover otherwise). The rule of the AUTOMATIC1111 ControlNet
    extension's "Pixel Perfect" (`pixel_perfect_resolution` in sd-webui-controlnet)."""
    scale_height, scale_width = height / image_height, width / image_width
    fit = min if resize_mode == "resize_and_fill" else max
    return int(np.round(fit(scale_height, scale_width) * min(image_height, image_width)))


def fill_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre `image` (no larger than the target) on a (height, width) canvas filled with the
    median colour of its border, like the AUTOMATIC1111 extension's "Resize and fill"."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]], axis=0)
    colour = np.median(border, axis=0).astype(image.dtype)
    canvas = np.tile(colour[None, None], (height, width, 1))
    top = (height - image.shape[0]) // 2
    left = (width - image.shape[1]) // 2
    canvas[top : top + image.shape[0], left : left + image.shape[1]] = image
    return canvas


def _to_rgb_array(picture: Image.Image) -> np.ndarray:
    """Any PIL mode to RGB uint8: alpha onto white, 16-bit scaled down, CMYK / palette converted."""
    if picture.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(picture, dtype=np.float64)
        top = 65535.0 if wide.max() > 255 else 255.0
        return HWC3((wide / top * 255.0).clip(0, 255).round().astype(np.uint8))
    if picture.mode == "F":
        values = np.asarray(picture, dtype=np.float64)
        return HWC3((values.clip(0.0, 1.0) * 255.0).round().astype(np.uint8))
    has_alpha = picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info
    picture = picture.convert("RGBA" if has_alpha else "RGB")
    return HWC3(np.asarray(picture))


def load_image(
    source: str | os.PathLike | Image.Image | np.ndarray,
    *,
    max_bytes: int,
    max_pixels: int,
) -> np.ndarray:
    """Read an upload (path, PIL image or array) into RGB uint8 (H, W, 3), upright per EXIF.

    The pixel count is checked from the header, before the image is decoded in full.
    """
    if isinstance(source, np.ndarray):
        if source.ndim >= 2:
            _check_pixels(source.shape[1], source.shape[0], max_pixels)
        return HWC3(source)
    if isinstance(source, Image.Image):
        return _to_rgb_array(_checked_upright(source, max_pixels))
    path = Path(source)
    if not path.is_file():
        raise InvalidImageError(f"No image file at {path.name!r}: upload an image.")
    size = path.stat().st_size
    if size == 0:
        raise InvalidImageError("The uploaded file is empty: upload a PNG, JPEG or WebP image.")
    if size > max_bytes:
        raise ImageTooLargeError(
            f"The file is {size / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB. "
            "Upload a smaller image."
        )
    try:
        with Image.open(path) as picture:
            return _to_rgb_array(_checked_upright(picture, max_pixels))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InvalidImageError(
            f"Could not read the file as an image ({type(error).__name__}): upload a PNG, JPEG "
            "or WebP image."
        ) from error


def _checked_upright(picture: Image.Image, max_pixels: int) -> Image.Image:
    _check_pixels(*picture.size, max_pixels)
    picture.load()
    return ImageOps.exif_transpose(picture)


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"The image is {width}x{height} pixels; the limit is {max_pixels / 1e6:.0f} "
            "megapixels. Downscale it first."
        )
    if width < 8 or height < 8:
        raise InvalidImageError(f"The image is {width}x{height} pixels; it needs at least 8x8.")
