"""Normal maps: from MiDaS depth for the v1.0 model, from NormalBAE for the v1.1 one.

- `normal_midas` is lllyasviel/ControlNet's v1.0 recipe (`annotator/midas/__init__.py`, Apache-2.0,
  `apply_midas(image, a=np.pi * 2.0, bg_th)`): Sobel x / y of the raw depth, z = a, x and y zeroed
  where the min-max normalised depth is below the background threshold, normalised to unit length,
  `* 127.5 + 127.5`. Its app (`gradio_normal2image.py`) then feeds the ControlNet
  `detected_map[:, :, ::-1]`, so the v1.0 normal model was trained on channels (z, y, x); this map
  is already in that order (controlnet_aux's `MidasDetector` does the same), so a flat background
  is (255, 127, 127).
- `normal_bae` is controlnet_aux's NormalBAE (Bae et al., ICCV 2021; ControlNet v1.1
  `annotator/normalbae`): the NNET network with `scannet.pt` from `lllyasviel/Annotators`, output
  `(normal + 1) / 2 * 255` in the network's own (x, y, z) order, fed as is in v1.1.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import types
from typing import Any

import cv2
import numpy as np

from annotators.base import Annotator, Detector, LoadContext, Param
from annotators.depth import load_depth_estimator, normalise_depth, round_to_multiple
from annotators.util import resize_to
from annotators.weights import load_state_dict, weights_file
from errors import ModelUnavailableError

# The reference's z component before normalising: larger a, flatter normals.
MIDAS_NORMAL_A = np.pi * 2.0
# NormalBAE's EfficientNet-B5 encoder downsamples by 32; other sizes are resized to a multiple.
BAE_MULTIPLE = 32
# ImageNet statistics, NormalBAE's input normalisation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BAE_WEIGHTS = "scannet.pt"


def normals_from_depth(
    depth: np.ndarray, bg_threshold: float, a: float = MIDAS_NORMAL_A
) -> np.ndarray:
    """Raw MiDaS depth (H, W) -> uint8 (H, W, 3) normals in the v1.0 ControlNet's (z, y, x) order.

    Pixels whose normalised depth is below `bg_threshold` (far away) get x = y = 0: a flat wall
    facing the camera, (255, 127, 127).
    """
    depth = np.asarray(depth, dtype=np.float32)
    x = cv2.Sobel(depth, cv2.CV_32F, 1, 0, ksize=3)
    y = cv2.Sobel(depth, cv2.CV_32F, 0, 1, ksize=3)
    z = np.full_like(x, a)
    background = normalise_depth(depth) < bg_threshold
    x[background] = 0
    y[background] = 0
    normal = np.stack([x, y, z], axis=2)  # (H, W, 3), the reference's order
    normal /= np.sum(normal**2.0, axis=2, keepdims=True) ** 0.5
    normal_map = (normal * 127.5 + 127.5).clip(0, 255).astype(np.uint8)
    return np.ascontiguousarray(normal_map[:, :, ::-1])  # (z, y, x): what the v1.0 model saw


class MidasNormalAnnotator(Annotator):
    name = "normal_midas"
    needs = (("depth_estimator", None),)
    label = "Normals from MiDaS depth (v1.0 model)"
    params = (
        Param(
            "bg_threshold",
            "Normal background threshold",
            0.4,
            0.0,
            1.0,
            0.01,
            info="Farther than this (0 = farthest, 1 = nearest) counts as flat background",
        ),
    )
    default_detect_resolution = 384  # the reference normal app's default

    def load(self, context: LoadContext) -> Detector:
        estimate = load_depth_estimator(context)

        def detect(image: np.ndarray, bg_threshold: float = 0.4) -> np.ndarray:
            return normals_from_depth(estimate(image), bg_threshold)  # (H, W, 3) uint8

        return detect


def build_normal_bae() -> Any:
    """NormalBAE's NNET with the arguments of controlnet_aux's `from_pretrained`, random weights.

    Its EfficientNet-B5 encoder comes from the copy of gen-efficientnet inside controlnet_aux
    (`torch.hub.load(..., source="local", pretrained=False)`): nothing is downloaded.
    """
    from controlnet_aux.normalbae.nets.NNET import NNET

    args = types.SimpleNamespace(
        mode="client",
        architecture="BN",
        pretrained="scannet",
        sampling_ratio=0.4,  # used in training only
        importance_ratio=0.7,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # its encoder prints its progress
        return NNET(args)


def _load_normal_bae(context: LoadContext) -> Any:
    path = weights_file(context, BAE_WEIGHTS)
    model = build_normal_bae()
    try:
        checkpoint = load_state_dict(path)
        state = checkpoint.get("model", checkpoint)  # scannet.pt: {"model": state dict}
        # Saved from DataParallel: keys may start with "module.".
        model.load_state_dict({key.removeprefix("module."): value for key, value in state.items()})
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError) as error:
        # Not tensors only, keys or shapes that do not match, not a dict: not NormalBAE weights.
        raise ModelUnavailableError(
            f"{path} could not be loaded as NormalBAE weights ({type(error).__name__}: {error}). "
            f"Replace it with `{BAE_WEIGHTS}` from the Hub repo "
            f"`{context.model_ids['annotators']}`."
        ) from error
    return model


class NormalBaeAnnotator(Annotator):
    name = "normal_bae"
    needs = (("annotators", BAE_WEIGHTS),)
    label = "Normals (NormalBAE, v1.1 model)"
    default_detect_resolution = 512  # the v1.1 reference app's default

    def load(self, context: LoadContext) -> Detector:
        import torch

        model = _load_normal_bae(context).to(context.device).eval()
        mean = torch.tensor(IMAGENET_MEAN, device=context.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=context.device).view(1, 3, 1, 1)

        def detect(image: np.ndarray) -> np.ndarray:
            height, width = image.shape[:2]
            net_input = resize_to(
                image,
                round_to_multiple(height, BAE_MULTIPLE),
                round_to_multiple(width, BAE_MULTIPLE),
            )
            with torch.inference_mode():
                # torch.tensor copies: the input may be a read-only array (decoded uploads are).
                pixels = torch.tensor(net_input, device=context.device).permute(2, 0, 1)[None]
                pixels = (pixels.float() / 255.0 - mean) / std  # (1, 3, H, W)
                normal = model(pixels)[0][-1][:, :3]  # finest prediction, unit (x, y, z)
                normal = ((normal + 1.0) * 0.5).clip(0, 1)
                normal = normal[0].permute(1, 2, 0).cpu().numpy()  # (H, W, 3)
            normal_map = (normal * 255.0).clip(0, 255).astype(np.uint8)
            return resize_to(normal_map, height, width, cv2.INTER_LINEAR)

        return detect
