"""The engine: one SD1.5 base loaded once, ControlNets loaded on first use and cached with a bound.

The UI and the API call `annotate` and `generate` with plain values; everything is checked here
against `settings.Limits`. Models load lazily (never at import), the base once; switching conditions
only swaps ControlNets, and evicting one frees its memory.
"""

from __future__ import annotations

import gc
import logging
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from annotators import ANNOTATORS, Detector, LoadContext, get_annotator, make_control_map
from annotators.util import load_image, output_size
from conditions import Condition, get_condition
from errors import GpuOutOfMemoryError, InvalidRequestError
from pipelines.attention import (
    SDPA,
    AttentionBackend,
    apply_attention_backend,
    probe_attention_backend,
)
from pipelines.cache import ModelCache
from pipelines.control import get_control_mode
from pipelines.denoise import (
    ControlUnit,
    broken_images,
    control_image_tensor,
    decode_latents,
    denoise,
    to_uint8,
)
from pipelines.loading import load_model
from pipelines.request import GenerationOptions
from pipelines.schedulers import make_scheduler
from pipelines.zerogpu import gpu_seconds, gpu_task, on_zero_gpu
from settings import MAX_SEED, Settings

logger = logging.getLogger(__name__)
OVERHEAD_ANNOTATE_SECONDS = 30  # ZeroGPU slice for a control map alone


@dataclass
class ControlMap:
    image: np.ndarray  # RGB uint8 (H, W, 3), at the output size
    warnings: list[str] = field(default_factory=list)  # e.g. an annotator's fallback notice


@dataclass
class GenerationResult:
    control_map: np.ndarray  # RGB uint8 (H, W, 3)
    images: list[np.ndarray]  # RGB uint8 (H, W, 3) each
    seed: int  # the seed actually used
    warnings: list[str] = field(default_factory=list)


def pick_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Engine:
    def __init__(self, settings: Settings, device: str | None = None):
        self.settings = settings
        self.device = pick_device(device or settings.device)
        # fp16 on CUDA; CPU kernels for fp16 are slow or missing, so fp32 there.
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        if on_zero_gpu():  # no CUDA outside spaces.GPU functions: no probe at start
            self.attention = AttentionBackend(SDPA, "ZeroGPU: the GPU is attached per request")
        else:
            self.attention = probe_attention_backend(self.device)
        self._base = None
        self._controlnets: ModelCache[torch.nn.Module] = ModelCache(
            settings.controlnet_cache_size, self._free_memory
        )
        self._detectors: ModelCache[Detector] = ModelCache(
            settings.annotator_cache_size, self._free_memory
        )
        self.annotator_context = LoadContext(
            settings.models_dir, settings.model_ids, str(self.device)
        )
        # One generation at a time per process: a ControlNet evicted while another request still
        # uses it, or two requests filling the GPU together, are the classic bugs this prevents.
        self._lock = threading.RLock()
        # The GPU part of each request; on ZeroGPU it runs inside spaces.GPU for a fitting time.
        self._generate_on_gpu = gpu_task(self._generate_checked, duration=self._generate_seconds)
        self._annotate_on_gpu = gpu_task(self._control_map, duration=OVERHEAD_ANNOTATE_SECONDS)

    # ---- what the page shows -------------------------------------------------------------------
    def describe(self) -> str:
        return (
            f"Device: {self.device} ({str(self.dtype).removeprefix('torch.')}) · "
            f"Attention: {self.attention} · Base model: `{self.settings.model_ids['base']}`"
        )

    # ---- models --------------------------------------------------------------------------------
    def base_pipeline(self):
        """The StableDiffusionControlNetPipeline holding the base model, loaded on first use."""
        with self._lock:
            if self._base is None:
                from diffusers import StableDiffusionControlNetPipeline

                pipe = load_model(
                    StableDiffusionControlNetPipeline.from_pretrained,
                    "base",
                    self.settings.model_ids["base"],
                    self.settings.models_dir,
                    controlnet=None,  # ControlNets are passed to our loop per request
                    safety_checker=None,
                    feature_extractor=None,
                    requires_safety_checker=False,
                    dtype=self.dtype,
                )
                pipe.to(self.device)
                pipe.set_progress_bar_config(disable=True)
                apply_attention_backend(self.attention, pipe.unet)
                self._base = pipe
            return self._base

    def controlnet(self, role: str) -> torch.nn.Module:
        """The ControlNet for `role`, from the cache or loaded (evicting the least recent)."""
        model_id = self.settings.model_ids[role]
        with self._lock:
            return self._controlnets.get_or_load(model_id, lambda: self._load_controlnet(role))

    def _load_controlnet(self, role: str) -> torch.nn.Module:
        from diffusers import ControlNetModel

        model = load_model(
            ControlNetModel.from_pretrained,
            role,
            self.settings.model_ids[role],
            self.settings.models_dir,
            dtype=self.dtype,
        )
        model.to(self.device)
        apply_attention_backend(self.attention, model)
        return model

    def detector(self, annotator: str) -> Detector:
        """The annotator's detector, its weights loaded on first use and cached with a bound."""
        chosen = get_annotator(annotator)
        with self._lock:
            return self._detectors.get_or_load(
                chosen.name, lambda: chosen.load(self.annotator_context)
            )

    @property
    def cached_controlnets(self) -> list[str]:
        return self._controlnets.keys()

    def _free_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ---- control maps --------------------------------------------------------------------------
    def load_image(self, source: Any) -> np.ndarray:
        if source is None:
            raise InvalidRequestError("No image given: upload an image (or draw one).")
        limits = self.settings.limits
        return load_image(
            source, max_bytes=limits.max_upload_bytes, max_pixels=limits.max_upload_pixels
        )

    def annotate(
        self,
        image: Any,
        annotator: str,
        image_resolution: int | None = None,
        detect_resolution: int | None = None,
        **params: Any,
    ) -> ControlMap:
        """The control map only (no diffusion model needed)."""
        chosen = get_annotator(annotator)
        self._refuse_unknown_params(params, ANNOTATORS)
        options = GenerationOptions.checked(
            self.settings.limits,
            self.settings.defaults,
            image_resolution=image_resolution,
            detect_resolution=detect_resolution,
        )
        source = self.load_image(image)
        self._check_map_inputs(chosen.name, source, params)
        return self._annotate_on_gpu(chosen.name, source, options, params)

    def _control_map(
        self, annotator: str, image: np.ndarray, options: GenerationOptions, params: dict
    ) -> ControlMap:
        chosen = get_annotator(annotator)
        # Classical annotators run at the output size; networks at their detect resolution.
        detect = None
        if chosen.default_detect_resolution is not None:
            detect = options.detect_resolution or chosen.default_detect_resolution
        detector = self.detector(chosen.name)
        control_map = make_control_map(
            chosen, detector, image, options.image_resolution, detect, chosen.check_params(params)
        )
        notice = getattr(detector, "notice", None)  # e.g. "no OpenPose weights: used MediaPipe"
        return ControlMap(control_map, [notice] if notice else [])

    def _check_map_inputs(self, annotator: str, image: np.ndarray, params: dict) -> None:
        """Refuse what would fail later, before any model (or ZeroGPU slice) is asked for."""
        get_annotator(annotator).check_params(params)
        height, width = image.shape[:2]
        if max(height, width) / min(height, width) > self.settings.limits.max_aspect_ratio:
            raise InvalidRequestError(
                f"The image is {width}x{height}; its aspect ratio is over "
                f"{self.settings.limits.max_aspect_ratio:g}:1. Crop it first."
            )

    @staticmethod
    def _refuse_unknown_params(params: dict, annotator_names) -> None:
        known = {param.name for name in annotator_names for param in ANNOTATORS[name].params}
        unknown = sorted(set(params) - known)
        if unknown:
            raise InvalidRequestError(
                f"Unknown parameter(s): {', '.join(unknown)}. "
                f"Annotator parameters here: {', '.join(sorted(known)) or 'none'}."
            )

    # ---- generation ----------------------------------------------------------------------------
    def generate(
        self,
        condition: str,
        image: Any,
        prompt: str = "",
        *,
        annotator: str | None = None,
        on_progress=None,
        **raw_options: Any,
    ) -> GenerationResult:
        # 1. Check inputs: condition, annotator, every option, the image.
        chosen_condition = get_condition(condition)
        annotator = annotator or chosen_condition.annotators[0]
        if annotator not in chosen_condition.annotators:
            raise InvalidRequestError(
                f"The {chosen_condition.label} tab has no annotator {annotator!r}; choose one "
                f"of: {', '.join(chosen_condition.annotators)}."
            )
        options = GenerationOptions.checked(
            self.settings.limits, self.settings.defaults, prompt=prompt, **raw_options
        )
        self._refuse_unknown_params(options.annotator_params, chosen_condition.annotators)
        source = self.load_image(image)
        self._check_map_inputs(annotator, source, options.annotator_params)
        return self._generate_on_gpu(chosen_condition, annotator, source, options, on_progress)

    def _generate_seconds(self, condition, annotator, source, options, on_progress) -> int:
        height, width = output_size(source.shape[0], source.shape[1], options.image_resolution)
        return gpu_seconds(options.steps, options.num_images, height, width)

    def _generate_checked(
        self,
        condition: Condition,
        annotator: str,
        source: np.ndarray,
        options: GenerationOptions,
        on_progress,
    ) -> GenerationResult:
        # 2. The control map, at the output size.
        control = self._control_map(annotator, source, options, options.annotator_params)

        # 3. Models (the base once, this condition's ControlNet from the cache) and the run.
        seed = options.seed if options.seed >= 0 else secrets.randbelow(MAX_SEED + 1)
        with self._lock:
            pipe = self.base_pipeline()
            controlnet = self.controlnet(condition.controlnet_role_for(annotator))
            try:
                images, warnings = self._run(
                    pipe, controlnet, control.image, options, seed, on_progress
                )
            except torch.OutOfMemoryError as error:
                self._free_memory()  # the next request starts with the memory given back
                raise GpuOutOfMemoryError(
                    f"The GPU ran out of memory for {options.num_images} image(s) at "
                    f"{control.image.shape[1]}x{control.image.shape[0]}. Lower the image "
                    "resolution or the number of images, and try again."
                ) from error
        return GenerationResult(control.image, images, seed, control.warnings + warnings)

    def _run(self, pipe, controlnet, control_map, options: GenerationOptions, seed, on_progress):
        warnings = []
        prompt = options.full_prompt
        max_tokens = pipe.tokenizer.model_max_length
        token_count = len(pipe.tokenizer(prompt).input_ids)
        if token_count > max_tokens:
            warnings.append(
                f"The prompt is {token_count} tokens long; CLIP reads only the first "
                f"{max_tokens}, so the rest was ignored."
            )
        use_cfg = options.guidance_scale > 1.0  # at <= 1, CFG adds nothing but cost
        prompt_embeds, negative_embeds = pipe.encode_prompt(
            prompt,
            self.device,
            num_images_per_prompt=options.num_images,
            do_classifier_free_guidance=use_cfg,
            negative_prompt=options.negative_prompt if use_cfg else None,
        )
        height, width = control_map.shape[:2]
        generator = torch.Generator("cpu").manual_seed(seed)
        # Noise drawn on the CPU: the same seed gives the same image on any device.
        latents = torch.randn(
            (
                options.num_images,
                pipe.unet.config.in_channels,
                height // pipe.vae_scale_factor,
                width // pipe.vae_scale_factor,
            ),
            generator=generator,
            dtype=torch.float32,
        ).to(self.device, self.dtype)
        unit = ControlUnit(
            controlnet, control_image_tensor(control_map, self.device, self.dtype), options.strength
        )
        latents = denoise(
            unet=pipe.unet,
            scheduler=make_scheduler(options.scheduler, pipe.scheduler.config),
            units=[unit],
            prompt_embeds=prompt_embeds,
            negative_embeds=negative_embeds if use_cfg else None,
            latents=latents,
            steps=options.steps,
            guidance_scale=options.guidance_scale,
            mode=get_control_mode(options.control_mode),
            gamma=options.resolution_weighting,
            generator=generator,
            eta=options.eta,
            on_progress=on_progress,
        )
        return self._decode(pipe.vae, latents, warnings), warnings

    def _decode(self, vae, latents: torch.Tensor, warnings: list[str]) -> list[np.ndarray]:
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
                warnings.append(
                    f"Image {numbers} came out empty (NaN or black) even with the VAE in fp32. "
                    "Try another seed, fewer steps or a lower guidance scale."
                )
            else:
                warnings.append("The VAE overflowed in fp16; the images were decoded in fp32.")
        return to_uint8(images)
