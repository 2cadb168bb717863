"""The model store: where models run, and every model the engine uses, loaded on first use and kept.

It picks the device and the compute precision, the attention backend and whether the fast path is
on; it loads the base pipeline (one at a time: switching frees the old one first), ControlNets and
annotator detectors (each kept in a bounded least-recently-used cache that frees memory when it
evicts), the optional safety checker and preview decoder, and merges or removes the LCM-LoRA.
Nothing loads at import or at start.
"""

from __future__ import annotations

import gc
import logging
import threading
from typing import Any

import torch

from annotators import Annotator, Detector, LoadContext
from errors import ModelUnavailableError
from model_sources import load_model, resolve_source
from pipelines.models.lru import ModelCache
from pipelines.speed import fast_path, feature_cache, lcm_lora
from pipelines.speed.attention import (
    SDPA,
    AttentionBackend,
    apply_attention_backend,
    probe_attention_backend,
)
from pipelines.speed.precision import choose_precision
from pipelines.zerogpu import on_zero_gpu
from settings import Settings

logger = logging.getLogger(__name__)
_NOT_LOADED = object()


def pick_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ModelStore:
    def __init__(self, settings: Settings, device: str | None = None):
        self.settings = settings
        self.device = pick_device(device or settings.device)
        # fp16 on CUDA; on a CPU float32, or bfloat16 where it is native (speed/precision.py).
        self.precision = choose_precision(self.device, settings.cpu_precision)
        self.dtype = self.precision.dtype
        # The fast path (fp16, channels_last, fused QKV, torch.compile + CUDA graphs) or, for
        # small cards, model CPU offload; each compiled model keeps its graphs per shape.
        self.low_memory = settings.low_memory
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
        self._bases: ModelCache[Any] = ModelCache(1, self.free_memory)
        self._controlnets: ModelCache[torch.nn.Module] = ModelCache(
            settings.controlnet_cache_size, self.free_memory
        )
        self._detectors: ModelCache[Detector] = ModelCache(
            settings.annotator_cache_size, self.free_memory
        )
        self._safety_checker = None
        self._preview_decoder: Any = _NOT_LOADED
        self.annotator_context = LoadContext(
            settings.models_dir, settings.model_ids, str(self.device)
        )
        # One generation at a time per process: a ControlNet evicted while another request still
        # uses it, or two requests filling the GPU together, are the classic bugs this prevents.
        self.lock = threading.RLock()

    # ---- the base ------------------------------------------------------------------------------
    def base_pipeline(self, name: str):
        """The StableDiffusionControlNetPipeline holding base model `name` (a checked name from
        the operator's list), loaded on first use. Switching frees the old base first and keeps
        the cached ControlNets."""
        source = self.settings.base_models[name]
        with self.lock:
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

    def lora_id(self, sampler: str) -> str | None:
        """The LoRA `sampler` needs merged into the UNet (LCM's), from the model table; or None."""
        role = lcm_lora.lora_role(sampler)
        return self.settings.model_ids[role] if role else None

    def use_sampler_weights(self, pipe, sampler: str) -> None:
        """The LCM sampler's LoRA merged into the UNet, or the UNet's own weights back."""
        lcm_lora.use_lora(pipe, self.lora_id(sampler), self.settings.models_dir)

    @property
    def cached_base_models(self) -> list[str]:
        return self._bases.keys()

    # ---- ControlNets ---------------------------------------------------------------------------
    def controlnet_id(self, role: str, version: str = "v1.1") -> str:
        """The ControlNet id for `role` in family `version` (v1.1, or the paper's v1.0)."""
        if version == "v1.0":
            v10_role = "normal" if role == "normal_midas" else role  # v1.0 normals are MiDaS'
            return self.settings.v10_model_ids.get(v10_role, self.settings.model_ids[role])
        return self.settings.model_ids[role]

    def controlnet(self, role: str, version: str = "v1.1") -> torch.nn.Module:
        """The ControlNet for `role`, from the cache or loaded (evicting the least recent)."""
        model_id = self.controlnet_id(role, version)
        label = f"v10_{role}" if model_id != self.settings.model_ids[role] else role
        with self.lock:
            return self._controlnets.get_or_load(
                model_id, lambda: self._load_controlnet(label, model_id)
            )

    def _load_controlnet(self, role: str, model_id: str) -> torch.nn.Module:
        from diffusers import ControlNetModel

        model = self._load(ControlNetModel.from_pretrained, role, model_id)
        model.to(self.device)
        apply_attention_backend(self.attention, model)
        if self.fast_path:
            fast_path.speed_up_controlnet(model, mode=self.settings.compile_mode)
        return model

    @property
    def cached_controlnets(self) -> list[str]:
        return self._controlnets.keys()

    # ---- annotators, safety checker, previews --------------------------------------------------
    def detector(self, annotator: Annotator) -> Detector:
        """The annotator's detector, its weights loaded on first use and cached with a bound."""
        with self.lock:
            return self._detectors.get_or_load(
                annotator.name, lambda: annotator.load(self.annotator_context)
            )

    def safety_checker(self):
        """SD's NSFW safety checker, loaded on first use (only when settings turn it on)."""
        with self.lock:
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
        with self.lock:
            if self._preview_decoder is _NOT_LOADED:
                self._preview_decoder = self._load_preview_decoder()
            return self._preview_decoder

    def _load_preview_decoder(self):
        model_id = self.settings.model_ids["preview_decoder"]
        if not self.settings.previews or not resolve_source(model_id, self.settings.models_dir)[1]:
            return None
        from diffusers import AutoencoderTiny

        try:
            decoder = self._load(AutoencoderTiny.from_pretrained, "preview_decoder", model_id)
        except ModelUnavailableError as error:
            logger.warning("No previews: %s", error)
            return None
        return decoder.to(self.device)

    def _load(self, loader, role: str, model_id: str):
        return load_model(
            loader,
            role,
            model_id,
            self.settings.models_dir,
            half_precision=self.dtype == torch.float16,
            dtype=self.dtype,
        )

    # ---- memory and the fast path --------------------------------------------------------------
    def free_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def leave_fast_path(self, pipe) -> None:
        """Every loaded model back to eager (a compile failed): this and later requests."""
        self.fast_path = False
        for module in (pipe.unet, pipe.vae, *self._controlnets.values()):
            fast_path.uncompile(module)
            wrapper = feature_cache.existing_wrapper(module)
            if wrapper is not None:
                fast_path.uncompile(wrapper)
        torch._dynamo.reset()
