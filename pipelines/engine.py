"""The engine runs requests: a control map, a generation, a composition.

The page, the API and the CLI hand it plain values; it builds the checked request
(`pipelines.request`) and runs it as a numbered script. Models come from the model store
(`pipelines.models.store`), which loads them on first use and keeps them with a bound. On ZeroGPU
the GPU part of each request runs inside `spaces.GPU`, for a time that fits its work.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from annotators import Detector, get_annotator, make_control_map
from annotators.pose_json import POSE_JSON_MAP
from errors import GpuOutOfMemoryError
from pipelines.loop import img2img
from pipelines.loop.decode import decode_checked
from pipelines.loop.denoise import (
    ControlUnit,
    control_image_tensor,
    decode_latents,
    denoise,
    runs_at,
    to_uint8,
)
from pipelines.loop.prompt_embeddings import encode_prompt
from pipelines.loop.schedulers import make_scheduler
from pipelines.models.store import ModelStore
from pipelines.notices import COMPILE, Notices
from pipelines.request import (
    GenerationRequest,
    MapRequest,
    UnitRequest,
    check_base_model,
    fitted_to,
)
from pipelines.request import defaults as request_defaults
from pipelines.results import ControlMap, GenerationResult
from pipelines.speed import compile_guard, feature_cache, lcm_lora
from pipelines.upscale import UpscaleRequest, run_upscale
from pipelines.zerogpu import gpu_seconds, gpu_task
from settings import MAX_SEED, Settings

logger = logging.getLogger(__name__)
OVERHEAD_ANNOTATE_SECONDS = 30  # ZeroGPU slice for a control map alone
# LCM and feature caching are the opt-ins that shorten a CPU run (the README has the numbers).
PREVIEWS_PER_RUN = 4  # TAESD previews shown while denoising (about every quarter of the steps)
PreviewCallback = Callable[[list[np.ndarray], int, int], None]  # (images, steps done, total)


@dataclass(frozen=True)
class RunTiming:
    """How long one generation took, for the page's hint on a CPU."""

    seconds: float
    images: int
    steps: int
    size: tuple[int, int]  # (height, width)

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(self.images, 1)


class Engine:
    concurrent_runs = 1  # requests it runs at once (one lock): the page's queue lets this many

    def __init__(self, settings: Settings, device: str | None = None):
        self.settings = settings
        self.models = ModelStore(settings, device)
        self.defaults = request_defaults(settings)  # every option's default on this server
        self.fast_path_failure: str | None = None  # why the fast path was left, if it was
        self.last_timing: RunTiming | None = None  # how long the last generation took
        # One request on the device at a time, whoever sends it: the page's queue and the
        # AUTOMATIC1111-style API both run through `run`, `run_map` and `run_upscale`.
        self.gpu_lock = threading.Lock()
        # The GPU part of each request; on ZeroGPU it runs inside spaces.GPU for a fitting time.
        self._generate_on_gpu = gpu_task(self._generate_checked, duration=self._generate_seconds)
        self._annotate_on_gpu = gpu_task(self._annotate_checked, duration=OVERHEAD_ANNOTATE_SECONDS)
        self._upscale_on_gpu = gpu_task(self._upscale_checked, duration=self._upscale_seconds)

    # ---- where it runs (the model store decides) -----------------------------------------------
    device = property(lambda self: self.models.device)
    dtype = property(lambda self: self.models.dtype)
    precision = property(lambda self: self.models.precision)
    attention = property(lambda self: self.models.attention)
    low_memory = property(lambda self: self.models.low_memory)
    fast_path = property(lambda self: self.models.fast_path)

    @property
    def base_model_names(self) -> list[str]:
        return list(self.settings.base_models)

    def base_pipeline(self, name: str | None = None):
        """The pipeline holding base model `name` (None: the first), loaded on first use."""
        return self.models.base_pipeline(check_base_model(self.settings, name))

    def controlnet(self, role: str, version: str = "v1.1") -> torch.nn.Module:
        return self.models.controlnet(role, version)

    def controlnet_id(self, role: str, version: str = "v1.1") -> str:
        return self.models.controlnet_id(role, version)

    def detector(self, annotator: str) -> Detector:
        return self.models.detector(get_annotator(annotator))

    def preview_decoder(self):
        return self.models.preview_decoder()

    @property
    def cached_controlnets(self) -> list[str]:
        return self.models.cached_controlnets

    @property
    def cached_base_models(self) -> list[str]:
        return self.models.cached_base_models

    # ---- what the page shows -------------------------------------------------------------------
    def describe(self) -> str:
        return (
            f"Device: {self.device} ({self.precision}) · "
            f"Attention: {self.attention} · Base models: {len(self.settings.base_models)}"
            + f" · Fast path: {self._fast_path_state()}"
            + (" (it failed to compile)" if self.fast_path_failure else "")
            + (" · Low-memory mode" if self.low_memory else "")
            + (" · NSFW filter on" if self.settings.safety_checker else "")
        )

    def _fast_path_state(self) -> str:
        if not self.fast_path:
            return "off"
        mode = self.settings.compile_mode
        return "on" if mode == "reduce-overhead" else f"on ({mode})"

    def warm_up(self, condition: str = "canny") -> str | None:
        """With the fast path on, compile the default request's shape now (the default base, the
        ControlNet of `condition`, a square image at the default resolution, the default number
        of images, CFG on): the first visitor then does not wait for it. Returns the compile
        notice (None if nothing compiled or the fast path is off). Raises what a request would
        (models missing, ...)."""
        if not self.fast_path:
            return None
        started = time.perf_counter()
        size = self.defaults["image_resolution"]
        result = self.generate(
            condition, np.zeros((size, size, 3), np.uint8), "", annotator="none", steps=2
        )
        notice = result.notices.first(COMPILE)
        logger.info("Fast path warmed up in %.1f s: %s", time.perf_counter() - started, notice)
        return notice

    # ---- requests ------------------------------------------------------------------------------
    def annotate(
        self,
        image: Any,
        annotator: str,
        image_resolution: int | None = None,
        detect_resolution: int | None = None,
        aspect_ratio: str | None = None,
        resize_mode: str | None = None,
        pixel_perfect: bool | None = None,
        **params: Any,
    ) -> ControlMap:
        """The control map only (no diffusion model needed)."""
        request = MapRequest.build(
            self.settings,
            image,
            annotator,
            image_resolution,
            detect_resolution,
            aspect_ratio,
            resize_mode,
            pixel_perfect,
            **params,
        )
        return self.run_map(request)

    def generate(
        self,
        condition: str,
        image: Any,
        prompt: str = "",
        *,
        annotator: str | None = None,
        init_image: Any = None,
        mask: Any = None,
        on_progress=None,
        on_preview: PreviewCallback | None = None,
        **options: Any,
    ) -> GenerationResult:
        """One condition: its annotator's map steers one ControlNet.

        Image to image: `denoising_strength` below 1 starts from `init_image` (None: from `image`
        itself). Inpainting: `mask` (white = repaint, black = keep; the initial image's size),
        with `mask_blur` and `keep_unmasked`. `on_progress(step, total)` follows the denoising
        (total: the steps run); `on_preview(images, step, total)` gets TAESD previews a few times
        per run when the preview decoder is present.
        """
        request = GenerationRequest.build(
            self.settings,
            condition,
            image,
            prompt,
            annotator=annotator,
            init_image=init_image,
            mask=mask,
            **options,
        )
        return self.run(request, on_progress, on_preview)

    def compose(
        self,
        units: Sequence[Mapping[str, Any]],
        prompt: str = "",
        *,
        init_image: Any = None,
        mask: Any = None,
        on_progress=None,
        on_preview: PreviewCallback | None = None,
        **options: Any,
    ) -> GenerationResult:
        """Several conditions at once (paper Fig. 6): each unit's ControlNet residuals are summed.
        Units are mappings with keys from `pipelines.request.UNIT_KEYS`. `init_image` and `mask`
        as in `generate` (the initial image defaults to the first unit's image)."""
        request = GenerationRequest.composed(
            self.settings, units, prompt, init_image=init_image, mask=mask, **options
        )
        return self.run(request, on_progress, on_preview)

    def upscale(
        self, image: Any, prompt: str = "", *, on_progress=None, **options: Any
    ) -> GenerationResult:
        """`image` enlarged by `factor` and repainted in tiles with the tile ControlNet at a low
        denoising strength (`pipelines.upscale`). `on_progress(step, total)` counts every tile's
        steps."""
        return self.run_upscale(
            UpscaleRequest.build(self.settings, image, prompt, **options), on_progress
        )

    def run_upscale(self, request: UpscaleRequest, on_progress=None) -> GenerationResult:
        """A checked upscale request (one GPU slice on ZeroGPU for all its tiles), after any
        request already running."""
        with self.gpu_lock:
            return self._upscale_on_gpu(request, on_progress)

    def run(
        self, request: GenerationRequest, on_progress=None, on_preview=None
    ) -> GenerationResult:
        """A checked request (the CLI builds its own), on the GPU where there is one, after any
        request already running there."""
        with self.gpu_lock:
            return self._generate_on_gpu(request, on_progress, on_preview)

    def run_map(self, request: MapRequest) -> ControlMap:
        """A checked control-map request, after any request already running."""
        with self.gpu_lock:
            return self._annotate_on_gpu(request)

    def _annotate_checked(self, request: MapRequest) -> ControlMap:
        notices, poses = Notices(), []
        image = self._control_map(
            request.unit,
            request.size,
            request.image_resolution,
            request.resize_mode,
            notices,
            poses=poses,
        )
        return ControlMap(image, notices, pose=poses[-1] if poses else None)

    def _generate_seconds(self, request: GenerationRequest, *callbacks) -> int:
        height, width = request.size
        return gpu_seconds(
            request.steps_run,
            request.num_images,
            height,
            width,
            len(request.units),
            request.cache_interval,
        )

    def _upscale_checked(self, request: UpscaleRequest, on_progress=None) -> GenerationResult:
        # Each tile is a generation of its own: `last_timing` is the last tile's.
        return run_upscale(request, self._generate_checked, on_progress)

    def _upscale_seconds(self, request: UpscaleRequest, *callbacks) -> int:
        height, width = request.tiles[0].size
        steps = request.steps_run
        return gpu_seconds(steps, 1, height, width, 1, request.tiles[0].cache_interval)

    def _generate_checked(
        self, request: GenerationRequest, on_progress, on_preview: PreviewCallback | None = None
    ) -> GenerationResult:
        started = time.perf_counter()
        notices = Notices()
        # 1. Seeds: image i uses seed + i (a seeded annotator draws its map from the first).
        first_seed = request.seed if request.seed >= 0 else secrets.randbelow(MAX_SEED + 1)
        seeds = [(first_seed + index) % (MAX_SEED + 1) for index in range(request.num_images)]
        # 2. The control maps, all at the output size set by the first unit's image.
        size = request.size
        poses: list = []  # what pose units drew, as OpenPose JSON (offered after the run)
        maps = [
            self._control_map(
                unit,
                size,
                request.image_resolution,
                request.resize_mode,
                notices,
                first_seed,
                poses=poses,
            )
            for unit in request.units
        ]
        # 3. Advice on settings the models are not made for.
        notices.extend_texts(_family_advice(request, self.settings.v10_model_ids))
        notices.extend_texts(
            lcm_lora.advice(request.scheduler, request.steps, request.guidance_scale)
        )
        with self.models.lock:
            # 4. Models: the base with the sampler's weights, each running unit's ControlNet.
            pipe = self.models.base_pipeline(request.base_model)
            self.models.use_sampler_weights(pipe, request.scheduler)
            model_ids = [
                self.controlnet_id(unit.controlnet_role, request.controlnet_version)
                for unit in request.units
            ]
            control_units = self._control_units(request, maps)
            # 5. Denoise and decode.
            try:
                with self.attention.kernels():  # the SDPA kernel measured fastest, first
                    images = self._run(
                        pipe, control_units, request, seeds, notices, on_progress, on_preview
                    )
            except torch.OutOfMemoryError as error:
                self._free_memory()  # the next request starts with the memory given back
                raise GpuOutOfMemoryError(
                    f"The GPU ran out of memory for {request.num_images} image(s) at "
                    f"{size[1]}x{size[0]}. Lower the image resolution or the number of images, "
                    "and try again."
                ) from error
            # 6. Inpainting: the original pixels outside the mask, if asked; the NSFW filter.
            if request.mask is not None and request.keep_unmasked:
                images = img2img.paste_back(request.start_image, images, request.mask)
            if self.settings.safety_checker:
                images = self._censor(images, notices)
        # 7. Each image's parameters, for its PNG.
        shared = request.parameters(
            model_ids,
            base_model_id=_public_name(self.settings.base_models[request.base_model]),
            lora_id=_public_name(self.models.lora_id(request.scheduler)),
        )
        self.last_timing = RunTiming(
            time.perf_counter() - started, request.num_images, request.steps_run, size
        )
        return GenerationResult(
            control_maps=maps,
            images=images,
            seeds=seeds,
            parameters=[{**shared, "seed": seed} for seed in seeds],
            notices=notices,
            map_labels=[unit.condition.label for unit in request.units],
            pose=poses[0] if poses else None,
        )

    def _free_memory(self) -> None:
        self.models.free_memory()

    # ---- the steps -----------------------------------------------------------------------------
    def _control_map(
        self,
        unit: UnitRequest,
        size: tuple[int, int],
        image_resolution: int,
        resize_mode: str,
        notices: Notices,
        seed: int = 0,
        poses: list | None = None,
    ) -> np.ndarray:
        """The unit's map at the output `size`. Classical annotators run at the output size;
        networks at their detect resolution; a seeded annotator draws from `seed`. A unit with
        pose JSON draws it (no annotator runs). `poses`, when given, gets the people a pose
        unit drew, as OpenPose JSON: a pose annotator's, or the unit's own JSON."""
        if unit.pose is not None:
            if poses is not None:
                poses.append(unit.pose.to_json())
            return make_control_map(
                POSE_JSON_MAP,
                POSE_JSON_MAP.detect,
                unit.image,
                image_resolution,
                size=size,
                resize_mode=resize_mode,
            )
        detector = self.models.detector(unit.annotator)
        params = dict(unit.params)
        if unit.annotator.seeded:
            params["seed"] = seed
        drawing = detector
        if poses is not None and hasattr(detector, "with_keypoints"):

            def drawing(image, **params):
                control_map, pose = detector.with_keypoints(image, **params)
                poses.append(pose)
                return control_map

        control_map = make_control_map(
            unit.annotator,
            drawing,
            unit.image,
            image_resolution,
            unit.detect_at(size, resize_mode),
            params,
            size=size,
            resize_mode=resize_mode,
        )
        notices.add(getattr(detector, "notice", None))  # e.g. "no OpenPose weights: MediaPipe"
        return control_map

    def _control_units(self, request: GenerationRequest, maps) -> list[ControlUnit]:
        """Each unit whose window covers a step run, with its ControlNet; a unit that would never
        run is not even loaded."""
        control_units = []
        steps = request.steps_run
        for unit, control_map in zip(request.units, maps, strict=True):
            window = (unit.strength, unit.control_start, unit.control_end)
            if not any(runs_at(*window, step, steps) for step in range(steps)):
                continue
            model = self.controlnet(unit.controlnet_role, request.controlnet_version)
            control_units.append(
                ControlUnit(
                    model,
                    self._control_image(request, unit, control_map),
                    *window,
                    label=f"{unit.condition.label} ControlNet",
                    pooled=bool(getattr(model.config, "global_pool_conditions", False)),
                )
            )
        return control_units

    def _control_image(self, request: GenerationRequest, unit: UnitRequest, control_map):
        """The unit's control image as its ControlNet takes it: its map in [0, 1], or, for the
        inpaint ControlNet (`img2img.MASKED_IMAGE_ROLES`), the initial image (the unit's own
        image without one) with the pixels to repaint at -1."""
        if unit.controlnet_role not in img2img.MASKED_IMAGE_ROLES:
            return control_image_tensor(control_map, self.device, self.dtype)
        image = request.start_image
        if image is None:
            image = fitted_to(unit.image, request.size, request.resize_mode)
        return img2img.masked_control_image(image, request.repainted, self.device, self.dtype)

    def _censor(self, images, notices: Notices):
        from pipelines.models.safety import censor

        flags = self.models.safety_checker().flagged(images)
        if any(flags):
            numbers = ", ".join(str(index + 1) for index, flag in enumerate(flags) if flag)
            notices.add(
                f"Image {numbers} may contain NSFW content and was blacked out by the safety "
                "checker. Try another prompt or seed."
            )
        return censor(images, flags)

    def _run(
        self, pipe, units: list[ControlUnit], request, seeds, notices, on_progress, on_preview
    ):
        if request.cache_interval > 1:
            feature_cache.check_supported(pipe.unet)
        prompt_embeds, negative_embeds = encode_prompt(  # any length: 75-token chunks
            pipe,
            self.device,
            request.full_prompt,
            request.negative_prompt if request.use_cfg else None,
            request.num_images,
            request.clip_skip,
        )
        height, width = request.size
        shape = (
            1,
            pipe.unet.config.in_channels,
            height // pipe.vae_scale_factor,
            width // pipe.vae_scale_factor,
        )

        distribution = mask = None
        if request.start_image is not None:  # the initial image's latent distribution, once
            distribution = img2img.encode(pipe.vae, request.start_image, self.device)
        if request.repainted is not None:
            mask = img2img.latent_mask(request.repainted, shape[-2:], self.device, self.dtype)

        def run() -> torch.Tensor:
            # One generator per image, on the CPU: image i is seed + i alone too, on any device.
            # Made afresh on each run, so a run again draws exactly what the first one drew.
            generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
            image_start = None
            if request.start_image is not None:  # its sample first, as diffusers draws them
                scaling = pipe.vae.config.scaling_factor
                latents = img2img.sample_latents(distribution, generators, scaling)
                if mask is not None:  # diffusers' inpaint pipeline repeats them per image: the
                    latents = latents.contiguous()  # layout decides the UNet's order of sums
                image_start = img2img.ImageStart(
                    latents.to(self.device, self.dtype), request.denoising_strength, mask
                )
            noise = [torch.randn(shape, generator=generator) for generator in generators]
            if mask is not None:
                # diffusers' inpaint pipeline samples the masked image's latents here, unused
                # with a 4-channel UNet: drawn alike, so a sampler's own noise comes next as there.
                for generator in generators:
                    torch.randn(distribution.mean.shape, generator=generator)
            return denoise(
                unet=pipe.unet,
                scheduler=make_scheduler(request.scheduler, pipe.scheduler.config),
                units=units,
                prompt_embeds=prompt_embeds,
                negative_embeds=negative_embeds if request.use_cfg else None,
                latents=torch.cat(noise).to(self.device, self.dtype),
                steps=request.steps,
                guidance_scale=request.guidance_scale,
                mode=request.control_mode,
                gamma=request.resolution_weighting,
                generator=generators,
                eta=request.eta,
                on_progress=on_progress,
                on_step=self._previewer(on_preview, request.steps_run),
                cache_interval=request.cache_interval,
                image=image_start,
            )

        compiling = None
        if self.fast_path:  # "first request at this size: compiling ..." where it does
            compiling = compile_guard.compile_notice(
                pipe.unet, units, request, self.settings.compile_mode
            )
        try:
            latents = run()
        except torch.OutOfMemoryError:
            raise
        except Exception as error:
            if compiling is None:  # nothing compiled in this request: not the fast path's doing
                raise
            compiling = None
            notices.add(self._leave_fast_path(error, pipe))
            latents = run()
        notices.add(compiling, COMPILE)
        return decode_checked(pipe.vae, latents, notices)

    def _leave_fast_path(self, error: Exception, pipe) -> str:
        """A compile failed: run eagerly from now on (this request too) and say why."""
        logger.exception("The fast path failed to compile; continuing without it")
        self.models.leave_fast_path(pipe)
        self.fast_path_failure = compile_guard.failure_reason(error)
        return (
            f"The fast path could not compile ({self.fast_path_failure}); this and later "
            "requests run without it, eagerly (slower, same images)."
        )

    def _previewer(self, on_preview: PreviewCallback | None, steps: int):
        """A denoise step callback that decodes the latents with TAESD every few steps."""
        decoder = self.preview_decoder() if on_preview is not None else None
        if decoder is None:
            return None
        every = max(1, steps // PREVIEWS_PER_RUN)

        def preview(step: int, total: int, latents: torch.Tensor) -> None:
            if step % every == 0 and step < total:  # the last step gets the real VAE
                on_preview(to_uint8(decode_latents(decoder, latents)), step, total)

        return preview


def _family_advice(request: GenerationRequest, v10_model_ids: Mapping[str, str]) -> list[str]:
    """What the ControlNet family choice means here: v1.0 has no model for some conditions (their
    v1.1 model runs), and its normal model was trained on MiDaS normals."""
    if request.controlnet_version != "v1.0":
        return []
    advice = []
    without = [
        unit.condition.label
        for unit in request.units
        if unit.controlnet_role not in v10_model_ids and unit.controlnet_role != "normal_midas"
    ]
    if without:
        names = " and ".join(dict.fromkeys(without))
        advice.append(
            f"{names} {'has' if len(set(without)) == 1 else 'have'} no v1.0 ControlNet (the "
            "paper's models did not include it): the v1.1 model ran."
        )
    if any(unit.annotator.name == "normal_bae" for unit in request.units):
        advice.append(
            "The v1.0 normal ControlNet was trained on MiDaS normals; NormalBAE maps may "
            "steer it less well. Pick the MiDaS normals annotator for it."
        )
    return advice


def _public_name(source: str | None) -> str | None:
    """A model source as the PNG may show it: a server path is not the visitor's business."""
    if source and (Path(source).is_absolute() or source.endswith(".safetensors")):
        return Path(source).name
    return source
