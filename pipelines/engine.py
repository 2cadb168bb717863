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
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from annotators import ANNOTATORS, Detector, LoadContext, get_annotator, make_control_map
from annotators.util import load_image, target_size
from conditions import Condition, get_condition
from errors import GpuOutOfMemoryError, InvalidRequestError, ModelUnavailableError
from model_sources import load_model, resolve_source
from pipelines.loop.control import get_control_mode
from pipelines.loop.denoise import (
    ControlUnit,
    broken_images,
    control_image_tensor,
    decode_latents,
    denoise,
    runs_at,
    to_uint8,
)
from pipelines.loop.prompt_embeddings import encode_prompt
from pipelines.loop.schedulers import make_scheduler
from pipelines.models.lru import ModelCache
from pipelines.request import GenerationOptions, UnitOptions
from pipelines.speed import fast_path, feature_cache, lcm_lora
from pipelines.speed.attention import (
    SDPA,
    AttentionBackend,
    apply_attention_backend,
    probe_attention_backend,
)
from pipelines.speed.precision import choose_precision
from pipelines.zerogpu import gpu_seconds, gpu_task, on_zero_gpu
from settings import MAX_SEED, Settings

logger = logging.getLogger(__name__)
OVERHEAD_ANNOTATE_SECONDS = 30  # ZeroGPU slice for a control map alone
# Measured at 256 px in bfloat16 on a 2-core Xeon (SD1.5-size random weights): 20 UniPC steps
# with CFG 44.3 s, LCM's 4 steps without CFG 10.8 s, feature caching at interval 3 27.2 s.
CPU_HINT = (
    " · On a CPU an image takes a while: the LCM sampler (4-8 steps) is about 4x faster, feature"
    " caching (Advanced) about 1.6x"
)
PREVIEWS_PER_RUN = 4  # TAESD previews shown while denoising (about every quarter of the steps)
PreviewCallback = Callable[[list[np.ndarray], int, int], None]  # (images, steps done, total)
_NOT_LOADED = object()


@dataclass
class ControlMap:
    image: np.ndarray  # RGB uint8 (H, W, 3), at the output size
    warnings: list[str] = field(default_factory=list)  # e.g. an annotator's fallback notice


@dataclass
class GenerationResult:
    control_maps: list[np.ndarray]  # RGB uint8 (H, W, 3), one per ControlNet unit
    images: list[np.ndarray]  # RGB uint8 (H, W, 3) each
    seeds: list[int]  # each image's own seed: image i used seed + i
    parameters: list[dict[str, Any]]  # each image's full parameters (for its PNG text chunk)
    warnings: list[str] = field(default_factory=list)
    map_labels: list[str] = field(default_factory=list)  # what each control map is

    @property
    def control_map(self) -> np.ndarray:
        return self.control_maps[0]

    @property
    def seed(self) -> int:
        """The seed asked for (or drawn): the first image's."""
        return self.seeds[0]


@dataclass
class PreparedUnit:
    """One checked ControlNet unit: its condition, annotator, image and options."""

    condition: Condition
    annotator: str
    image: np.ndarray  # RGB uint8 (H, W, 3), the upload
    options: UnitOptions
    detect_resolution: int | None = None
    params: dict[str, Any] = field(default_factory=dict)


UNIT_KEYS = (
    "image",
    "enabled",
    "condition",
    "annotator",
    "strength",
    "control_start",
    "control_end",
    "detect_resolution",
    "params",
)


def pick_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Engine:
    def __init__(self, settings: Settings, device: str | None = None):
        self.settings = settings
        self.device = pick_device(device or settings.device)
        # fp16 on CUDA; on a CPU float32, or bfloat16 where it is native (pipelines/precision).
        self.precision = choose_precision(self.device, settings.cpu_precision)
        self.dtype = self.precision.dtype
        # The fast path (fp16, channels_last, fused QKV, torch.compile + CUDA graphs) or, for
        # small cards, model CPU offload; each compiled model keeps its graphs per shape.
        self.low_memory = settings.low_memory
        self.fast_path_failure: str | None = None  # why the fast path was left, if it was
        self.fast_path = fast_path.fast_path_enabled(
            settings.fast_path, self.device, on_zero_gpu(), low_memory=self.low_memory
        )
        if self.fast_path:
            fast_path.configure_torch()
        if on_zero_gpu():  # no CUDA outside spaces.GPU functions: no probe at start
            self.attention = AttentionBackend(SDPA, "ZeroGPU: the GPU is attached per request")
        else:  # xformers where it runs and is measured faster; compiled models use SDPA
            self.attention = probe_attention_backend(self.device, compiled=self.fast_path)
        # One base at a time (about 2 GB in fp16): switching frees the old one before loading.
        self._bases: ModelCache[Any] = ModelCache(1, self._free_memory)
        self._controlnets: ModelCache[torch.nn.Module] = ModelCache(
            settings.controlnet_cache_size, self._free_memory
        )
        self._detectors: ModelCache[Detector] = ModelCache(
            settings.annotator_cache_size, self._free_memory
        )
        self._safety_checker = None
        self._preview_decoder: Any = _NOT_LOADED
        self.annotator_context = LoadContext(
            settings.models_dir, settings.model_ids, str(self.device)
        )
        # One generation at a time per process: a ControlNet evicted while another request still
        # uses it, or two requests filling the GPU together, are the classic bugs this prevents.
        self._lock = threading.RLock()
        # The GPU part of each request; on ZeroGPU it runs inside spaces.GPU for a fitting time.
        self._generate_on_gpu = gpu_task(self._generate_checked, duration=self._generate_seconds)
        self._annotate_on_gpu = gpu_task(self._annotate_checked, duration=OVERHEAD_ANNOTATE_SECONDS)

    # ---- what the page shows -------------------------------------------------------------------
    def describe(self) -> str:
        return (
            f"Device: {self.device} ({self.precision}) · "
            f"Attention: {self.attention} · Base models: {len(self.settings.base_models)}"
            + f" · Fast path: {self._fast_path_state()}"
            + (" (it failed to compile)" if self.fast_path_failure else "")
            + (" · Low-memory mode" if self.low_memory else "")
            + (" · NSFW filter on" if self.settings.safety_checker else "")
            + (CPU_HINT if self.device.type == "cpu" else "")
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
        size = self.settings.defaults.image_resolution
        result = self.generate(
            condition, np.zeros((size, size, 3), np.uint8), "", annotator="none", steps=2
        )
        notice = next((w for w in result.warnings if w.startswith("First request at")), None)
        logger.info("Fast path warmed up in %.1f s: %s", time.perf_counter() - started, notice)
        return notice

    @property
    def base_model_names(self) -> list[str]:
        return list(self.settings.base_models)

    # ---- models --------------------------------------------------------------------------------
    def base_model_name(self, name: str | None) -> str:
        """`name` checked against the operator's list (None: the first); never a path or id."""
        names = self.base_model_names
        if name is None or name == "":
            return names[0]
        if not isinstance(name, str) or name not in self.settings.base_models:
            raise InvalidRequestError(
                f"Unknown base model {name!r}; choose one of: {', '.join(names)}. Only the "
                "models the operator listed can be used."
            )
        return name

    def base_pipeline(self, name: str | None = None):
        """The StableDiffusionControlNetPipeline holding base model `name`, loaded on first use.

        Only one base stays loaded; switching frees it first and keeps the cached ControlNets.
        """
        name = self.base_model_name(name)
        source = self.settings.base_models[name]
        with self._lock:
            if source not in self._bases:
                self._bases.clear()  # free the old base before the new one takes its memory
            return self._bases.get_or_load(source, lambda: self._load_base(name, source))

    def _load_base(self, name: str, source: str):
        from pipelines.models.base_models import load_base_pipeline

        pipe = load_base_pipeline(
            source,
            role_label="base",
            models_dir=self.settings.models_dir,
            config_source=self.settings.model_ids["base"],
            dtype=self.dtype,
        )
        pipe.set_progress_bar_config(disable=True)
        apply_attention_backend(self.attention, pipe.unet)
        if self.low_memory:
            fast_path.low_memory(pipe, self.device)  # each model visits the GPU only while it runs
        else:
            pipe.to(self.device)
            if self.fast_path:
                fast_path.speed_up_unet(pipe.unet, mode=self.settings.compile_mode)
                fast_path.speed_up_vae(pipe.vae)
        logger.info("Base model %r ready", name)
        return pipe

    @property
    def cached_base_models(self) -> list[str]:
        return self._bases.keys()

    def controlnet_id(self, role: str, version: str = "v1.1") -> str:
        """The ControlNet id for `role` in family `version` (DESIGN.md §4)."""
        if version == "v1.0":
            v10_role = "normal" if role == "normal_midas" else role  # v1.0 normals are MiDaS'
            return self.settings.v10_model_ids.get(v10_role, self.settings.model_ids[role])
        return self.settings.model_ids[role]

    def controlnet(self, role: str, version: str = "v1.1") -> torch.nn.Module:
        """The ControlNet for `role`, from the cache or loaded (evicting the least recent)."""
        model_id = self.controlnet_id(role, version)
        label = f"v10_{role}" if model_id != self.settings.model_ids[role] else role
        with self._lock:
            return self._controlnets.get_or_load(
                model_id, lambda: self._load_controlnet(label, model_id)
            )

    def _load_controlnet(self, role: str, model_id: str) -> torch.nn.Module:
        from diffusers import ControlNetModel

        model = load_model(
            ControlNetModel.from_pretrained,
            role,
            model_id,
            self.settings.models_dir,
            half_precision=self.dtype == torch.float16,
            dtype=self.dtype,
        )
        model.to(self.device)
        apply_attention_backend(self.attention, model)
        if self.fast_path:
            fast_path.speed_up_controlnet(model, mode=self.settings.compile_mode)
        return model

    def detector(self, annotator: str) -> Detector:
        """The annotator's detector, its weights loaded on first use and cached with a bound."""
        chosen = get_annotator(annotator)
        with self._lock:
            return self._detectors.get_or_load(
                chosen.name, lambda: chosen.load(self.annotator_context)
            )

    def safety_checker(self):
        """SD's NSFW safety checker, loaded on first use (only when settings turn it on)."""
        with self._lock:
            if self._safety_checker is None:
                from pipelines.models.safety import SafetyChecker

                self._safety_checker = SafetyChecker.load(
                    self.settings.model_ids["safety_checker"],
                    self.settings.models_dir,
                    self.device,
                    self.dtype,
                )
            return self._safety_checker

    def preview_decoder(self):
        """TAESD (a tiny VAE decoder) for previews, or None: it is used only when its weights are
        in MODELS_DIR (a preview is not worth a download) and previews are on in settings."""
        with self._lock:
            if self._preview_decoder is _NOT_LOADED:
                self._preview_decoder = self._load_preview_decoder()
            return self._preview_decoder

    def _load_preview_decoder(self):
        model_id = self.settings.model_ids["preview_decoder"]
        if not self.settings.previews or not resolve_source(model_id, self.settings.models_dir)[1]:
            return None
        from diffusers import AutoencoderTiny

        try:
            decoder = load_model(
                AutoencoderTiny.from_pretrained,
                "preview_decoder",
                model_id,
                self.settings.models_dir,
                half_precision=self.dtype == torch.float16,
                dtype=self.dtype,
            )
        except ModelUnavailableError as error:
            logger.warning("No previews: %s", error)
            return None
        return decoder.to(self.device)

    @property
    def cached_controlnets(self) -> list[str]:
        return self._controlnets.keys()

    def _free_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ---- control maps --------------------------------------------------------------------------
    def load_image(self, source: Any, what: str = "an image") -> np.ndarray:
        if source is None:
            raise InvalidRequestError(f"No image given: upload {what} (or draw one).")
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
        aspect_ratio: str | None = None,
        resize_mode: str | None = None,
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
            aspect_ratio=aspect_ratio,
            resize_mode=resize_mode,
        )
        source = self.load_image(image)
        self._check_map_inputs(chosen.name, source, params)
        return self._annotate_on_gpu(chosen.name, source, options, params)

    def _annotate_checked(
        self, annotator: str, image: np.ndarray, options: GenerationOptions, params: dict
    ) -> ControlMap:
        size = self._output_size(image, options)
        return self._control_map(annotator, image, options, options.detect_resolution, params, size)

    @staticmethod
    def _output_size(image: np.ndarray, options: GenerationOptions) -> tuple[int, int]:
        return target_size(
            image.shape[0], image.shape[1], options.image_resolution, options.aspect_ratio
        )

    def _control_map(
        self,
        annotator: str,
        image: np.ndarray,
        options: GenerationOptions,
        detect_resolution: int | None,
        params: dict,
        size: tuple[int, int],
    ) -> ControlMap:
        chosen = get_annotator(annotator)
        # Classical annotators run at the output size; networks at their detect resolution.
        detect = None
        if chosen.default_detect_resolution is not None:
            detect = detect_resolution or chosen.default_detect_resolution
        detector = self.detector(chosen.name)
        control_map = make_control_map(
            chosen,
            detector,
            image,
            options.image_resolution,
            detect,
            chosen.check_params(params),
            size=size,
            resize_mode=options.resize_mode,
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

    @staticmethod
    def _check_annotator(condition: Condition, annotator: Any) -> str:
        annotator = annotator or condition.annotators[0]
        if not isinstance(annotator, str) or annotator not in condition.annotators:
            raise InvalidRequestError(
                f"The {condition.label} condition has no annotator {annotator!r}; choose one "
                f"of: {', '.join(condition.annotators)}."
            )
        return annotator

    # ---- generation ----------------------------------------------------------------------------
    def generate(
        self,
        condition: str,
        image: Any,
        prompt: str = "",
        *,
        annotator: str | None = None,
        on_progress=None,
        on_preview: PreviewCallback | None = None,
        **raw_options: Any,
    ) -> GenerationResult:
        """One condition: its annotator's map steers one ControlNet.

        `on_progress(step, total)` follows the denoising; `on_preview(images, step, total)` gets
        TAESD previews a few times per run when the preview decoder is present.
        """
        # 1. Check inputs: condition, annotator, every option, the image.
        chosen_condition = get_condition(condition)
        annotator = self._check_annotator(chosen_condition, annotator)
        options = GenerationOptions.checked(
            self.settings.limits, self.settings.defaults, prompt=prompt, **raw_options
        )
        self.base_model_name(options.base_model)
        self._refuse_unknown_params(options.annotator_params, chosen_condition.annotators)
        source = self.load_image(image)
        self._check_map_inputs(annotator, source, options.annotator_params)
        unit = PreparedUnit(
            chosen_condition,
            annotator,
            source,
            UnitOptions(options.strength, options.control_start, options.control_end),
            options.detect_resolution,
            options.annotator_params,
        )
        return self._generate_on_gpu([unit], options, on_progress, on_preview)

    def compose(
        self,
        units: Sequence[Mapping[str, Any]],
        prompt: str = "",
        *,
        on_progress=None,
        on_preview: PreviewCallback | None = None,
        **raw_options: Any,
    ) -> GenerationResult:
        """Several conditions at once (paper Fig. 6): each unit's ControlNet residuals are summed.

        Each unit is a mapping with keys from `UNIT_KEYS`; a unit without an image of its own
        uses the first unit's image, a unit with `enabled` False is left out.
        """
        limits = self.settings.limits
        options = GenerationOptions.checked(
            limits, self.settings.defaults, prompt=prompt, **raw_options
        )
        self.base_model_name(options.base_model)
        if options.annotator_params:
            raise InvalidRequestError(
                f"Unknown parameter(s): {', '.join(sorted(options.annotator_params))}. In a "
                "composition each unit takes its annotator's parameters in its `params`."
            )
        if not isinstance(units, Sequence) or not 1 <= len(units) <= limits.max_units:
            raise InvalidRequestError(f"Give between 1 and {limits.max_units} control units.")
        prepared = []
        shared_image = units[0].get("image") if isinstance(units[0], Mapping) else None
        for number, raw in enumerate(units, start=1):
            unit = self._prepare_unit(number, raw, shared_image)
            if unit is not None:
                prepared.append(unit)
        if not prepared:
            raise InvalidRequestError("Every control unit is switched off: switch one on.")
        return self._generate_on_gpu(prepared, options, on_progress, on_preview)

    def _prepare_unit(self, number: int, raw: Any, shared_image: Any) -> PreparedUnit | None:
        if not isinstance(raw, Mapping):
            raise InvalidRequestError(f"Control unit {number} must be a mapping of options.")
        unknown = sorted(set(raw) - set(UNIT_KEYS))
        if unknown:
            raise InvalidRequestError(
                f"Control unit {number}: unknown key(s) {', '.join(map(str, unknown))}; "
                f"use: {', '.join(UNIT_KEYS)}."
            )
        enabled = raw.get("enabled", True)
        if not isinstance(enabled, bool):
            raise InvalidRequestError(f"`enabled_{number}` must be true or false.")
        if not enabled:
            return None
        condition = get_condition(raw.get("condition"))
        annotator = self._check_annotator(condition, raw.get("annotator"))
        options = UnitOptions.checked(
            self.settings.limits,
            number,
            raw.get("strength"),
            raw.get("control_start"),
            raw.get("control_end"),
        )
        detect = raw.get("detect_resolution")
        if detect is not None:
            detect = GenerationOptions.checked(
                self.settings.limits, self.settings.defaults, detect_resolution=detect
            ).detect_resolution
        params = raw.get("params") or {}
        if not isinstance(params, Mapping):
            raise InvalidRequestError(f"Control unit {number}: `params` must be a mapping.")
        params = dict(params)
        self._refuse_unknown_params(params, condition.annotators)
        image = raw.get("image")
        source = self.load_image(
            image if image is not None else shared_image,
            f"an image for control unit {number} (or one for unit 1, which it then shares)",
        )
        self._check_map_inputs(annotator, source, params)
        return PreparedUnit(condition, annotator, source, options, detect, params)

    def _generate_seconds(self, units, options, on_progress, on_preview) -> int:
        height, width = self._output_size(units[0].image, options)
        return gpu_seconds(
            options.steps, options.num_images, height, width, len(units), options.cache_interval
        )

    def _generate_checked(
        self,
        units: list[PreparedUnit],
        options: GenerationOptions,
        on_progress,
        on_preview: PreviewCallback | None = None,
    ) -> GenerationResult:
        # 2. The control maps, all at the output size set by the first unit's image.
        size = self._output_size(units[0].image, options)
        maps = [
            self._control_map(
                unit.annotator, unit.image, options, unit.detect_resolution, unit.params, size
            )
            for unit in units
        ]
        warnings = [warning for control in maps for warning in control.warnings]
        warnings += self._family_warnings(units, options)
        warnings += lcm_lora.advice(options.scheduler, options.steps, options.guidance_scale)

        # 3. Models (the base once, each unit's ControlNet from the cache) and the run.
        first_seed = options.seed if options.seed >= 0 else secrets.randbelow(MAX_SEED + 1)
        seeds = [(first_seed + index) % (MAX_SEED + 1) for index in range(options.num_images)]
        base_name = self.base_model_name(options.base_model)
        with self._lock:
            pipe = self.base_pipeline(base_name)
            # The LCM sampler's LoRA merged into the UNet, or the UNet's own weights back.
            lcm_lora.use_lora(pipe, self._lora_id(options.scheduler), self.settings.models_dir)
            model_ids, control_units = [], []
            for unit, control in zip(units, maps, strict=True):
                role = unit.condition.controlnet_role_for(unit.annotator)
                model_ids.append(self.controlnet_id(role, options.controlnet_version))
                window = (
                    unit.options.strength,
                    unit.options.control_start,
                    unit.options.control_end,
                )
                if not any(runs_at(*window, step, options.steps) for step in range(options.steps)):
                    continue  # it would never run: don't even load it
                control_units.append(
                    ControlUnit(
                        self.controlnet(role, options.controlnet_version),
                        control_image_tensor(control.image, self.device, self.dtype),
                        unit.options.strength,
                        unit.options.control_start,
                        unit.options.control_end,
                        label=f"{unit.condition.label} ControlNet",
                    )
                )
            try:
                with self.attention.kernels():  # the SDPA kernel measured fastest, first
                    images, run_warnings = self._run(
                        pipe, control_units, size, options, seeds, on_progress, on_preview
                    )
            except torch.OutOfMemoryError as error:
                self._free_memory()  # the next request starts with the memory given back
                raise GpuOutOfMemoryError(
                    f"The GPU ran out of memory for {options.num_images} image(s) at "
                    f"{size[1]}x{size[0]}. Lower the image resolution or the number of images, "
                    "and try again."
                ) from error
            if self.settings.safety_checker:
                images, run_warnings = self._censor(images, run_warnings)
        shared = self._parameters(options, units, model_ids, base_name, size)
        parameters = [{**shared, "seed": seed} for seed in seeds]
        return GenerationResult(
            control_maps=[control.image for control in maps],
            images=images,
            seeds=seeds,
            parameters=parameters,
            warnings=warnings + run_warnings,
            map_labels=[unit.condition.label for unit in units],
        )

    def _lora_id(self, sampler: str) -> str | None:
        """The LoRA `sampler` needs merged into the UNet (LCM's), from the model table; or None."""
        role = lcm_lora.lora_role(sampler)
        return self.settings.model_ids[role] if role else None

    @staticmethod
    def _family_warnings(units: list[PreparedUnit], options: GenerationOptions) -> list[str]:
        if options.controlnet_version == "v1.0" and any(
            unit.annotator == "normal_bae" for unit in units
        ):
            return [
                "The v1.0 normal ControlNet was trained on MiDaS normals; NormalBAE maps may "
                "steer it less well. Pick the MiDaS normals annotator for it."
            ]
        return []

    def _censor(self, images, warnings):
        from pipelines.models.safety import censor

        flags = self.safety_checker().flagged(images)
        if any(flags):
            numbers = ", ".join(str(index + 1) for index, flag in enumerate(flags) if flag)
            warnings = [
                *warnings,
                f"Image {numbers} may contain NSFW content and was blacked out by the safety "
                "checker. Try another prompt or seed.",
            ]
        return censor(images, flags), warnings

    def _parameters(self, options, units, model_ids, base_name: str, size) -> dict[str, Any]:
        """Everything needed to make the images again but each one's seed (it goes into the
        PNG's text chunk)."""
        base_source = self.settings.base_models[base_name]
        if Path(base_source).is_absolute() or base_source.endswith(".safetensors"):
            base_source = Path(base_source).name  # a server path is not the visitor's business
        lora_id = self._lora_id(options.scheduler)
        if lora_id and Path(lora_id).is_absolute():
            lora_id = Path(lora_id).name  # a server path, as for the base
        return {
            "app": "controlnet-demo",
            "prompt": options.prompt,
            "added_prompt": options.added_prompt,
            "negative_prompt": options.negative_prompt,
            "steps": options.steps,
            "guidance_scale": options.guidance_scale,
            "scheduler": options.scheduler,
            "eta": options.eta,
            "cache_interval": options.cache_interval,
            "control_mode": options.control_mode,
            "resolution_weighting": options.resolution_weighting,
            "image_resolution": options.image_resolution,
            "aspect_ratio": options.aspect_ratio,
            "resize_mode": options.resize_mode,
            "width": size[1],
            "height": size[0],
            "base_model": base_name,
            "base_model_id": base_source,
            "lora_id": lora_id,  # the LoRA merged into the UNet (the LCM sampler's), if any
            "controlnet_version": options.controlnet_version,
            "units": [
                {
                    "condition": unit.condition.name,
                    "annotator": unit.annotator,
                    "strength": unit.options.strength,
                    "control_start": unit.options.control_start,
                    "control_end": unit.options.control_end,
                    "detect_resolution": unit.detect_resolution,
                    "params": dict(unit.params),
                    "model_id": model_id,
                }
                for unit, model_id in zip(units, model_ids, strict=True)
            ],
        }

    def _run(
        self, pipe, units: list[ControlUnit], size, options, seeds, on_progress, on_preview=None
    ):
        warnings = []
        if options.cache_interval > 1:
            feature_cache.check_supported(pipe.unet)
        prompt = options.full_prompt
        max_tokens = pipe.tokenizer.model_max_length
        token_count = len(pipe.tokenizer(prompt).input_ids)
        if token_count > max_tokens:
            warnings.append(
                f"The prompt is {token_count} tokens long; CLIP reads only the first "
                f"{max_tokens}, so the rest was ignored."
            )
        use_cfg = options.guidance_scale > 1.0  # at <= 1, CFG adds nothing but cost
        prompt_embeds, negative_embeds = encode_prompt(
            pipe,
            self.device,
            prompt,
            options.negative_prompt if use_cfg else None,
            options.num_images,
        )
        height, width = size
        shape = (
            1,
            pipe.unet.config.in_channels,
            height // pipe.vae_scale_factor,
            width // pipe.vae_scale_factor,
        )

        def run() -> torch.Tensor:
            # One generator per image, on the CPU: image i is seed + i alone too, on any device.
            # Made afresh on each run, so a run again draws exactly what the first one drew.
            generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
            noise = [torch.randn(shape, generator=generator) for generator in generators]
            return denoise(
                unet=pipe.unet,
                scheduler=make_scheduler(options.scheduler, pipe.scheduler.config),
                units=units,
                prompt_embeds=prompt_embeds,
                negative_embeds=negative_embeds if use_cfg else None,
                latents=torch.cat(noise).to(self.device, self.dtype),
                steps=options.steps,
                guidance_scale=options.guidance_scale,
                mode=get_control_mode(options.control_mode),
                gamma=options.resolution_weighting,
                generator=generators,
                eta=options.eta,
                on_progress=on_progress,
                on_step=self._previewer(on_preview, options.steps),
                cache_interval=options.cache_interval,
            )

        notice = None
        if self.fast_path:  # "first request at this size: compiling, ..." where it does
            key = fast_path.ShapeKey(options.num_images, height, width, use_cfg)
            controlnet_key = replace(
                key, conditional_only=get_control_mode(options.control_mode).conditional_only
            )
            unets, controlnets = self._compiled_models(pipe.unet, units, options.cache_interval)
            compiling = fast_path.first_runs(unets, key) + fast_path.first_runs(
                controlnets, controlnet_key
            )
            notice = fast_path.compile_notice(compiling, key, self.settings.compile_mode)
        try:
            latents = run()
        except torch.OutOfMemoryError:
            raise
        except Exception as error:
            if notice is None:  # nothing compiled in this request: not the fast path's doing
                raise
            notice = self._leave_fast_path(error, pipe)
            latents = run()
        if notice:
            warnings.append(notice)
        return self._decode(pipe.vae, latents, warnings), warnings

    def _compiled_models(self, unet, units: list[ControlUnit], cache_interval: int):
        """The models a request runs, by the name the page gives them: ({UNet}, {ControlNets}).
        With feature caching, its wrappers run (and are compiled) instead of the plain UNet."""
        if cache_interval <= 1:
            return {"UNet": unet}, {unit.label: unit.model for unit in units}
        mode = self.settings.compile_mode
        unets = {
            "UNet (feature caching)": fast_path.speed_up_wrapper(
                feature_cache.caching_unet(unet), mode=mode
            )
        }
        controlnets = {}
        for unit in units:
            controlnets[unit.label] = unit.model
            shallow = fast_path.speed_up_wrapper(
                feature_cache.shallow_controlnet(unit.model), mode=mode
            )
            controlnets[f"{unit.label} (feature caching)"] = shallow
        return unets, controlnets

    def _leave_fast_path(self, error: Exception, pipe) -> str:
        """A compile failed: run eagerly from now on (this request too) and say why."""
        logger.exception("The fast path failed to compile; continuing without it")
        self.fast_path = False
        for module in (pipe.unet, pipe.vae, *self._controlnets.values()):
            fast_path.uncompile(module)
            wrapper = feature_cache.existing_wrapper(module)
            if wrapper is not None:
                fast_path.uncompile(wrapper)
        torch._dynamo.reset()
        cause: BaseException = error  # the compiler's own error, not Dynamo's wrapper
        while (inner := getattr(cause, "inner_exception", None) or cause.__cause__) is not None:
            cause = inner
        reason = (f"{type(cause).__name__}: {cause}".strip().splitlines() or ["?"])[0][:200]
        self.fast_path_failure = reason
        return (
            f"The fast path could not compile ({reason}); this and later requests run without "
            "it, eagerly (slower, same images)."
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
                precision = str(dtype).removeprefix("torch.")
                warnings.append(
                    f"The VAE overflowed in {precision}; the images were decoded in float32."
                )
        return to_uint8(images)
