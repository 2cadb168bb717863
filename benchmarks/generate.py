"""Generation speed and memory: stock diffusers vs this app's engine, eager vs fast path (issue 7).

    python benchmarks/generate.py [--device cuda] [--size 512] [--steps 20] [--repeats 5]
        [--phases engine_eager,engine_fast,...] [--budget-s 240] [--deadline-s 480]
        [--compile auto|on|off] [--compile-mode reduce-overhead|max-autotune|...]
        [--compile-vae] [--tolerance 2.0] [--models-dir DIR]
    python benchmarks/generate.py --tiny        # CPU smoke test on tiny models (make test)
    python benchmarks/generate.py --build-only  # only build + save the full-size models, timed

Builds SD1.5-size UNet, ControlNet, VAE and CLIP text encoder with random weights (no download:
the configs are written out below, the weights filled on the device in seconds, saved in fp16 to a
temporary MODELS_DIR), then runs, in one process, on the same inputs (512x512, 20 UniPC steps,
CFG 7.5, one ControlNet):

  engine_eager           the app's Engine through its public `generate` (eager, fp16 on CUDA)
  engine_fast            the same Engine after the fast path (pipelines/speed/fast_path.py: SDPA,
                         channels_last, fused QKV, torch.compile fullgraph + CUDA graphs), batch 1
  stock_eager            diffusers' StableDiffusionControlNetPipeline, eager, batch 1
  stock_compiled         stock with unet + controlnet torch.compile(fullgraph, reduce-overhead)
  guess_mode             the fast engine, control_mode="controlnet" (CFG-RW / guess mode), batch 1
  low_memory             a fresh Engine in low-memory mode (model CPU offload + VAE slicing)
  engine_fast_batch4     the fast engine, 4 images per call
  stock_eager_batch4     stock eager, 4 images per call
  stock_compiled_batch4  stock compiled, 4 images per call
  cache_fast             the fast engine with feature caching (DeepCache, cache_interval=3):
                         its wrappers compiled like the UNet, batch 1
  lcm_fast               the fast engine with the LCM sampler (LCM-LoRA merged: a random one of
                         the real one's shape, built with the models), 4 steps, guidance 1

cache_eager, between engine_eager and engine_fast, is the eager engine with feature caching. The
cache and LCM phases change the images by design (opt-ins): they report their difference from the
exact eager images but are not held to --tolerance.

Phases run in that order whatever the order given to --phases: the targets' own numbers first, the
new-shape compiles of batch 4 last, so a --deadline-s cut drops the least. The engine and the stock
pipeline stay loaded side by side; engine_fast applies pipelines/speed/fast_path.py in place to
the engine's loaded modules (`engine.base_pipeline().unet/.vae`, `engine.controlnet("canny")`),
exactly the
calls the engine makes itself when FAST_PATH is on, after engine_eager has made the references.
Every call uses the same prompt, so after the first the engine takes its text embeddings from its
cache (pipelines/loop/prompt_embeddings.py), as a repeated prompt does in the app; stock encodes
it each time.

Output: one JSON line per phase, flushed as soon as it is measured: `seconds_per_image` (median
of --repeats calls after warm-up, divided by the batch), `min`, `batch`, `warmup_s`, `compile_s`
(warm-up time beyond that of ordinary calls), the configuration's own memory (`weights_gib`, plus
what its calls added: `peak_gib` allocated, `peak_reserved_gib` reserved, CUDA-graph pools
included), and for fast phases `max_abs_diff` / `mean_abs_diff` / `matches_eager` against the
eager engine's images at the same seed (uint8 levels; the eager vs fast check the issue asks for).
The engine_eager, engine_fast and engine_fast_batch4 records also hold `breakdown_s`: one more
call timed part by part (text encoding, denoising loop, its ControlNets and sampler steps, VAE
decode, the rest), with a device synchronisation around each part.
A phase that fails prints {"phase": ..., "error": ...} and the run goes on; a phase past its
--budget-s stops repeating; phases that would start after --deadline-s print
{"phase": ..., "skipped": ...}. The last line is the summary with `ratio` = stock / engine.
Exit status 1 if any output differs beyond --tolerance or any phase failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipelines.speed import fast_path  # noqa: E402
from settings import COMPILE_MODES, DEFAULT_MODEL_IDS, Limits, Settings  # noqa: E402

ENGINE_PHASES = (
    "engine_eager",
    "cache_eager",
    "engine_fast",
    "engine_fast_batch4",
    "guess_mode",
    "cache_fast",
    "lcm_fast",  # LCM-LoRA: 4 steps without CFG, other images
)
STOCK_PHASES = ("stock_eager", "stock_compiled", "stock_eager_batch4", "stock_compiled_batch4")
# The run order: what the targets need first (batch 1 beside stock compiled), so that a
# --deadline-s cut, or a device lease running out, drops the least. Each compile of a new shape
# costs a minute or two on an H200 (DESIGN.md §6), so the batch-4 compiles come last.
PHASES = (
    "engine_eager",
    "cache_eager",  # eager: seconds, no compile
    "engine_fast",
    "stock_eager",
    "stock_compiled",
    "guess_mode",
    "low_memory",
    "engine_fast_batch4",
    "stock_eager_batch4",
    "stock_compiled_batch4",
    "cache_fast",  # opt-ins that change the images: after every exact-path number
    "lcm_fast",  # LCM-LoRA: 4 steps without CFG
)
BATCH4 = 4
CACHE_INTERVAL = 3  # feature caching's full UNet step every 3 steps (DeepCache's common N)
LCM_STEPS = 4  # LCM-LoRA's fewest advised steps
PROMPT = "a photo of a house by a lake"
NEGATIVE = "lowres, bad anatomy, worst quality, low quality"
CONTROL_ROLE = "canny"
GIB = 2**30

# ---- SD1.5 at full size (Hub configs of stable-diffusion-v1-5 and control_v11p_sd15_canny) ----
_SD15_DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
_SD15_UP = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
# What the UNet's encoder and the ControlNet (its trainable copy, paper §3.2) share.
_SD15_ENCODER: dict[str, Any] = {
    "in_channels": 4,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": _SD15_DOWN,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
UNET_CONFIG: dict[str, Any] = {
    **_SD15_ENCODER,
    "sample_size": 64,
    "out_channels": 4,
    "center_input_sample": False,
    "up_block_types": _SD15_UP,
}
CONTROLNET_CONFIG: dict[str, Any] = {
    **_SD15_ENCODER,
    "conditioning_channels": 3,
    "conditioning_embedding_out_channels": (16, 32, 96, 256),
    "controlnet_conditioning_channel_order": "rgb",
}
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
# CLIP ViT-L/14's text tower (openai/clip-vit-large-patch14, SD1.5's text_encoder).
CLIP_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
}
_POOL = 1 << 22  # random values shared by every weight: filling 1.2 B parameters takes seconds


def _fill_random(model: torch.nn.Module, seed: int) -> None:
    """Random weights at a sane scale, fast on any device: matrices and kernels ~ N(0, 1 / (3 x
    fan_in)) (PyTorch's default Linear scale), norm scales 1, biases 0. Values are slices of one
    random pool taken at different offsets, so no per-parameter random generation is needed."""
    first = next(model.parameters())
    generator = torch.Generator("cpu").manual_seed(seed)
    pool = torch.randn(_POOL, generator=generator).to(first.device, first.dtype)
    with torch.no_grad():
        for index, (name, parameter) in enumerate(model.named_parameters()):
            if parameter.ndim < 2:
                parameter.fill_(1.0 if name.endswith("weight") else 0.0)
                continue
            scale = (3 * parameter[0].numel()) ** -0.5
            flat = parameter.view(-1)
            start, offset = 0, (index * 104_729) % _POOL
            while start < flat.numel():
                count = min(flat.numel() - start, _POOL - offset)
                torch.mul(pool[offset : offset + count], scale, out=flat[start : start + count])
                start, offset = start + count, 0


def _materialise(model: torch.nn.Module, device: torch.device, dtype, seed: int):
    model.to(dtype=dtype)  # still on the meta device: free
    model.to_empty(device=device)
    _fill_random(model, seed)
    return model


def build_full_models(models_dir: Path, device: torch.device) -> dict[str, float]:
    """SD1.5-size base + canny ControlNet with random fp16 weights, saved under `models_dir` in the
    Hub layout (what MODELS_DIR holds). Built on `device` (seconds on a GPU). Returns timings."""
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from tiny_models import _SD15_SCHEDULER, _tokenizer

    timings = {}
    started = time.perf_counter()
    base_dir = models_dir / DEFAULT_MODEL_IDS["base"]
    tokenizer = _tokenizer(base_dir / "tokenizer")  # byte-level: 77 tokens all the same
    text_config = CLIPTextConfig(
        **CLIP_TEXT_CONFIG,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    dtype = torch.float16
    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET_CONFIG)
        vae = AutoencoderKL(**VAE_CONFIG)
        controlnet = ControlNetModel(**CONTROLNET_CONFIG)
        text_encoder = CLIPTextModel(text_config)
    for seed, model in enumerate((unet, vae, controlnet, text_encoder)):
        _materialise(model, device, dtype, seed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timings["build_s"] = time.perf_counter() - started

    started = time.perf_counter()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler.from_config(_SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(base_dir, safe_serialization=True)
    controlnet.save_pretrained(
        models_dir / DEFAULT_MODEL_IDS[CONTROL_ROLE], safe_serialization=True
    )
    timings["save_s"] = time.perf_counter() - started
    parameters = sum(
        p.numel() for m in (unet, vae, controlnet, text_encoder) for p in m.parameters()
    )
    timings["parameters_m"] = round(parameters / 1e6, 1)
    del pipe, unet, vae, controlnet, text_encoder
    _free(device)
    return timings


def build_tiny(models_dir: Path) -> dict[str, float]:
    from tiny_models import build_models_dir

    started = time.perf_counter()
    build_models_dir(models_dir, [DEFAULT_MODEL_IDS[CONTROL_ROLE]])
    return {"build_s": time.perf_counter() - started}


def build_lcm_lora(models_dir: Path) -> dict[str, Any]:
    """A random LoRA of LCM-LoRA's layout for the base in `models_dir` (where the app looks for
    LCM-LoRA), for lcm_fast: merged, it costs what the real one does. Needs peft."""
    from settings import OPTIONAL_MODEL_IDS
    from tiny_models import build_random_lcm_lora

    target = models_dir / OPTIONAL_MODEL_IDS["lcm_lora"]
    if (target / "pytorch_lora_weights.safetensors").exists():
        return {"lcm_lora": "reused"}
    started = time.perf_counter()
    try:
        build_random_lcm_lora(target, models_dir / DEFAULT_MODEL_IDS["base"])
    except ImportError as error:  # no peft: lcm_fast will say the LoRA is missing
        return {"lcm_lora": f"not built: {error}"}
    return {"lcm_lora_s": time.perf_counter() - started}


def has_models(models_dir: Path) -> bool:
    return all(
        (models_dir / DEFAULT_MODEL_IDS[role] / name).exists()
        for role, name in (("base", "model_index.json"), (CONTROL_ROLE, "config.json"))
    )


# ---- measuring -----------------------------------------------------------------------------------
@dataclass
class Config:
    device: torch.device
    size: int
    steps: int
    repeats: int
    warmup: int | None  # None: 1 eager, 2 compiled (compile, then record the CUDA graphs)
    budget_s: float
    deadline: float | None  # perf_counter() time after which no phase starts
    compile: bool
    compile_vae: bool
    tolerance: float
    guidance: float = 7.5
    backend: str = "inductor"  # "eager": check the compile flow (fullgraph capture) on a CPU
    compile_mode: str = "reduce-overhead"  # the engine's (COMPILE_MODE); stock keeps this one
    seed: int = 1234

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def warmups(self, compiled: bool) -> int:
        if self.warmup is not None:
            return self.warmup
        return 2 if compiled else 1


@dataclass
class Run:
    records: dict[str, dict] = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    def emit(self, record: dict) -> None:
        print(json.dumps(record, default=str), flush=True)
        if "error" in record:
            self.errors.append(record)
        elif "skipped" in record:
            self.skipped.append(record["phase"])
        elif "phase" in record:
            self.records[record["phase"]] = record


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _reset_compiled() -> None:
    """Drop compiled code and CUDA-graph pools (after a group's models are gone)."""
    torch._dynamo.reset()
    try:
        from torch._inductor.cudagraph_trees import reset_cudagraph_trees

        reset_cudagraph_trees()
    except Exception:  # noqa: BLE001 (best effort: only memory is at stake)
        pass


def memory_now(cfg: Config) -> tuple[int, int]:
    """(allocated, reserved) bytes on the GPU, after returning unused cached blocks."""
    if not cfg.cuda:
        return 0, 0
    _free(cfg.device)
    return torch.cuda.memory_allocated(cfg.device), torch.cuda.memory_reserved(cfg.device)


def weight_bytes(*modules: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def measure(
    name: str,
    call: Callable[[], np.ndarray],
    *,
    cfg: Config,
    batch: int,
    compiled: bool,
    resident: int = 0,
    start: tuple[int, int] | None = None,
) -> tuple[dict, np.ndarray]:
    """Warm up, then time up to cfg.repeats calls (fewer when the budget runs out).

    Peak memory is this configuration's own, though other models share the GPU: `resident` bytes
    (its weights) plus what the timed calls took above `start` (`memory_now()`, by default taken
    now, before the warm-up). `peak_gib` is the allocator's most allocated; `peak_reserved_gib`
    its most reserved, which also holds the CUDA-graph pools recorded during the warm-up (their
    replays allocate nothing, so only reserved memory shows them): the target is checked on it.
    """
    began_phase = time.perf_counter()
    start = memory_now(cfg) if start is None else start
    limit = began_phase + cfg.budget_s
    if cfg.deadline is not None:
        limit = min(limit, cfg.deadline)
    warm_times = []
    for _ in range(cfg.warmups(compiled)):
        began = time.perf_counter()
        images = call()
        warm_times.append(time.perf_counter() - began)
    if cfg.cuda:
        torch.cuda.synchronize(cfg.device)
        torch.cuda.reset_peak_memory_stats(cfg.device)
    times = []
    for _ in range(cfg.repeats):
        if times and time.perf_counter() > limit:
            break
        began = time.perf_counter()
        images = call()
        times.append(time.perf_counter() - began)
    median = statistics.median(times)
    record = {
        "phase": name,
        "batch": batch,
        "seconds_per_image": round(median / batch, 4),
        "min": round(min(times) / batch, 4),
        "seconds_per_call": round(median, 4),
        "repeats": len(times),
        "warmup_s": round(sum(warm_times), 2),
        "compile_s": round(max(0.0, sum(warm_times) - len(warm_times) * median), 2)
        if compiled
        else 0.0,
        "compiled": compiled,
        "peak_gib": None,
        "peak_reserved_gib": None,
        "weights_gib": round(resident / GIB, 3),
        "phase_s": round(time.perf_counter() - began_phase, 1),
    }
    if cfg.cuda:
        added = torch.cuda.max_memory_allocated(cfg.device) - start[0]
        held = torch.cuda.max_memory_reserved(cfg.device) - start[1]
        record["peak_gib"] = round((resident + max(0, added)) / GIB, 3)
        record["peak_reserved_gib"] = round((resident + max(0, held)) / GIB, 3)
    return record, images


# Where one engine call's time goes: (name, module, attribute) of the functions timed, each with a
# device synchronisation before and after (which itself costs a little: the parts add up to more
# than an untimed call). "controlnets" and "sampler_steps" run inside "denoise". A sampler's step
# is its planned one (pipelines/step_plan) where it has a plan, else diffusers' own.
BREAKDOWN_PARTS = (
    ("encode_prompt", "pipelines.engine", "encode_prompt"),
    ("denoise", "pipelines.engine", "denoise"),
    ("controlnets", "pipelines.loop.denoise", "control_residuals"),
    ("decode", "pipelines.engine", "decode_latents"),
)


def breakdown(call: Callable[[], np.ndarray], cfg: Config) -> dict[str, float]:
    """One more call of `call`, timed part by part (seconds): text encoding, the denoising loop
    and in it the ControlNets and the sampler's steps (the rest of the loop is the UNet's), the
    VAE decode, and everything else (`outside`)."""
    import importlib

    from pipelines.loop.schedulers import make_scheduler
    from pipelines.loop.step_plan import Trajectory

    # (name, owner, attribute) of each function timed; the sampler's steps are methods.
    targets = [
        (name, importlib.import_module(module), attribute)
        for name, module, attribute in BREAKDOWN_PARTS
    ]
    targets.append(("sampler_steps", type(make_scheduler("UniPC", {})), "step"))
    targets.append(("sampler_steps", Trajectory, "step"))
    totals = {name: 0.0 for name, _, _ in targets}

    def sync() -> None:
        if cfg.cuda:
            torch.cuda.synchronize(cfg.device)

    def timed(name: str, function: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            sync()
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                sync()
                totals[name] += time.perf_counter() - began

        return wrapper

    originals = [(owner, attribute, getattr(owner, attribute)) for _, owner, attribute in targets]
    try:
        for name, owner, attribute in targets:
            setattr(owner, attribute, timed(name, getattr(owner, attribute)))
        sync()
        began = time.perf_counter()
        call()
        sync()
        total = time.perf_counter() - began
    finally:
        for owner, attribute, original in originals:
            setattr(owner, attribute, original)
    parts = {name: round(value, 4) for name, value in totals.items()}
    parts["unet_and_loop"] = round(
        totals["denoise"] - totals["controlnets"] - totals["sampler_steps"], 4
    )
    parts["outside"] = round(
        total - totals["encode_prompt"] - totals["denoise"] - totals["decode"], 4
    )
    return {"total": round(total, 4), **parts}


def compare(images: np.ndarray, reference: np.ndarray | None, tolerance: float) -> dict:
    """Differences in uint8 levels; `matches_eager` when the mean is within `tolerance`."""
    if reference is None:
        return {"matches_eager": None}
    if images.shape != reference.shape:
        return {"matches_eager": False, "shape": [list(images.shape), list(reference.shape)]}
    difference = np.abs(images.astype(np.int16) - reference.astype(np.int16))
    mean = float(difference.mean())
    return {
        "max_abs_diff": int(difference.max()),
        "mean_abs_diff": round(mean, 4),
        "matches_eager": mean <= tolerance,
    }


def control_image(size: int) -> np.ndarray:
    """A canny-like map: white lines (a grid and a circle) on black, RGB uint8."""
    image = np.zeros((size, size, 3), np.uint8)
    image[:: max(8, size // 8), :] = 255
    image[:, :: max(8, size // 8)] = 255
    y, x = np.mgrid[:size, :size]
    ring = np.abs(np.hypot(y - size / 2, x - size / 2) - size / 3) < max(1.0, size / 128)
    image[ring] = 255
    return image


# ---- the engine ----------------------------------------------------------------------------------
def make_engine(models_dir: Path, cfg: Config):
    from pipelines.engine import Engine

    limits = Limits(min_resolution=min(Limits().min_resolution, cfg.size))
    options: dict[str, Any] = {"models_dir": models_dir, "limits": limits}
    if "fast_path" in {f.name for f in dataclasses.fields(Settings)}:
        options["fast_path"] = (
            "off"  # eager; engine_fast applies pipelines/speed/fast_path.py itself
        )
    return Engine(Settings(**options), device=str(cfg.device))


@dataclass(frozen=True)
class EngineSetup:
    batch: int = 1
    mode: str = "balanced"  # control mode
    cache_interval: int = 1  # > 1: feature caching, which changes the images
    sampler: str = "UniPC"  # "LCM": LCM-LoRA's few steps, other images
    steps: int | None = None  # None: --steps
    guidance: float | None = None  # None: the run's guidance scale

    @property
    def exact(self) -> EngineSetup:
        """The setup whose eager images this one is compared with."""
        return EngineSetup(batch=self.batch, mode=self.mode)

    @property
    def changes_images(self) -> bool:
        """An opt-in that makes other images: its difference is reported, not held."""
        return self != self.exact


def engine_call(engine, image: np.ndarray, cfg: Config, setup: EngineSetup, warnings: set):
    def call() -> np.ndarray:
        result = engine.generate(
            CONTROL_ROLE,
            image,
            PROMPT,
            annotator="none",
            num_images=setup.batch,
            cache_interval=setup.cache_interval,
            scheduler=setup.sampler,
            steps=setup.steps or cfg.steps,
            guidance_scale=cfg.guidance if setup.guidance is None else setup.guidance,
            seed=cfg.seed,
            control_mode=setup.mode,
            image_resolution=cfg.size,
            added_prompt="",
            negative_prompt=NEGATIVE,
        )
        warnings.update(result.warnings)
        return np.stack(result.images)

    return call


def apply_fast_path(engine, cfg: Config) -> dict[str, list[str]]:
    """What the engine will do itself once wired up: pipelines/speed/fast_path.py on its loaded
    modules."""
    fast_path.configure_torch()
    pipe = engine.base_pipeline()
    controlnet = engine.controlnet(CONTROL_ROLE)
    options = {"compile": cfg.compile, "backend": cfg.backend, "mode": cfg.compile_mode}
    fast_path.speed_up_unet(pipe.unet, **options)
    fast_path.speed_up_controlnet(controlnet, **options)
    fast_path.speed_up_vae(pipe.vae, compile=cfg.compile and cfg.compile_vae, backend=cfg.backend)
    return {
        "unet": list(fast_path.applied(pipe.unet)),
        "controlnet": list(fast_path.applied(controlnet)),
        "vae": list(fast_path.applied(pipe.vae)),
    }


def apply_feature_cache_fast_path(engine, cfg: Config) -> dict[str, list[str]]:
    """What the engine does itself for a feature-caching request when FAST_PATH is on: its
    wrappers around the UNet and the ControlNet compiled like them."""
    from pipelines.speed import feature_cache

    wrappers = {
        "unet": feature_cache.caching_unet(engine.base_pipeline().unet),
        "controlnet": feature_cache.shallow_controlnet(engine.controlnet(CONTROL_ROLE)),
    }
    for wrapper in wrappers.values():
        fast_path.speed_up_wrapper(
            wrapper, compile=cfg.compile, backend=cfg.backend, mode=cfg.compile_mode
        )
    return {name: list(fast_path.applied(wrapper)) for name, wrapper in wrappers.items()}


ENGINE_SETUPS = {
    "engine_eager": EngineSetup(),
    "cache_eager": EngineSetup(cache_interval=CACHE_INTERVAL),
    "engine_fast": EngineSetup(),
    "engine_fast_batch4": EngineSetup(batch=BATCH4),
    "guess_mode": EngineSetup(mode="controlnet"),
    "cache_fast": EngineSetup(cache_interval=CACHE_INTERVAL),
    "lcm_fast": EngineSetup(sampler="LCM", steps=LCM_STEPS, guidance=1.0),  # no CFG at 1
}
EAGER_ENGINE_PHASES = ("engine_eager", "cache_eager")  # run before the fast path is applied
BREAKDOWN_PHASES = ("engine_eager", "engine_fast", "engine_fast_batch4")  # where the time goes


# ---- stock diffusers -----------------------------------------------------------------------------
def load_stock(models_dir: Path, cfg: Config):
    from diffusers import (
        ControlNetModel,
        StableDiffusionControlNetPipeline,
        UniPCMultistepScheduler,
    )

    dtype = torch.float16 if cfg.cuda else torch.float32
    controlnet = ControlNetModel.from_pretrained(
        models_dir / DEFAULT_MODEL_IDS[CONTROL_ROLE], dtype=dtype, use_safetensors=True
    )
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        models_dir / DEFAULT_MODEL_IDS["base"],
        controlnet=controlnet,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        dtype=dtype,
        use_safetensors=True,
        local_files_only=True,
    )
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(cfg.device)


def stock_call(pipe, image: np.ndarray, cfg: Config, batch: int):
    from PIL import Image

    control = Image.fromarray(image)

    def call() -> np.ndarray:
        result = pipe(
            PROMPT,
            image=control,
            height=cfg.size,
            width=cfg.size,
            num_inference_steps=cfg.steps,
            guidance_scale=cfg.guidance,
            negative_prompt=NEGATIVE,
            num_images_per_prompt=batch,
            generator=torch.Generator("cpu").manual_seed(cfg.seed),
            output_type="np",
        ).images
        return (np.clip(result, 0, 1) * 255).round().astype(np.uint8)

    return call


# ---- every phase, in PHASES order --------------------------------------------------------------
class Bench:
    """The engine and the stock pipeline loaded side by side (each about 2.6 GB in fp16, a small
    part of an H100), so that phases run in PHASES order whatever side they measure. Each side is
    loaded at its first phase; a side that fails to load fails its phases only."""

    def __init__(self, run: Run, models_dir: Path, cfg: Config, outputs: dict):
        self.run, self.models_dir, self.cfg, self.outputs = run, models_dir, cfg, outputs
        self.image = control_image(cfg.size)
        self.engine: Any = None
        self.fast_steps: dict | None = None
        self.references: dict[tuple[int, str], np.ndarray] = {}
        self.pipe: Any = None
        self.eager_modules: dict[str, torch.nn.Module] = {}
        self.compiled_modules: dict[str, Any] = {}

    def run_phases(self, phases: list[str]) -> None:
        try:
            for phase in phases:
                if _past_deadline(self.run, phase, self.cfg):
                    continue
                try:
                    if phase in ENGINE_PHASES:
                        self.engine_phase(phase, later=phases[phases.index(phase) + 1 :])
                    elif phase in STOCK_PHASES:
                        self.stock_phase(phase)
                    else:
                        self.low_memory_phase()
                except Exception as error:  # noqa: BLE001 (report and go on to the next phase)
                    self.run.emit(_error(phase, error))
        finally:
            self.engine = self.pipe = None
            self.eager_modules, self.compiled_modules = {}, {}
            _free(self.cfg.device)
            _reset_compiled()
            _free(self.cfg.device)

    # -- the engine --
    def engine_phase(self, phase: str, later: list[str]) -> None:
        cfg = self.cfg
        if self.engine is None:
            self.engine = make_engine(self.models_dir, cfg)
        engine = self.engine
        setup = ENGINE_SETUPS[phase]
        eager = phase in EAGER_ENGINE_PHASES
        warnings: set[str] = set()
        extra: dict[str, Any] = {
            "control_mode": setup.mode,
            "cache_interval": setup.cache_interval,
            "sampler": setup.sampler,
            "steps": setup.steps or cfg.steps,
            "attention": str(engine.attention),
        }
        if not eager:
            if self.fast_steps is None:
                self.fast_steps = apply_fast_path(engine, cfg)
            extra["fast_path"] = self.fast_steps
            if setup.cache_interval > 1:
                extra["fast_path_feature_cache"] = apply_feature_cache_fast_path(engine, cfg)
        call = engine_call(engine, self.image, cfg, setup, warnings)
        record, images = measure(
            phase,
            call,
            cfg=cfg,
            batch=setup.batch,
            compiled=cfg.compile and not eager,
            resident=self.engine_bytes(),
        )
        if phase in BREAKDOWN_PHASES:
            extra["breakdown_s"] = breakdown(call, cfg)
        if phase == "engine_eager":
            self.references[setup] = images
            # The exact eager images the phases to come are compared with, one call each.
            for other in later:
                wanted = ENGINE_SETUPS.get(other)
                if wanted and wanted.exact not in self.references:
                    began = time.perf_counter()
                    self.references[wanted.exact] = engine_call(
                        engine, self.image, cfg, wanted.exact, warnings
                    )()
                    extra[f"eager_{other}_call_s"] = round(time.perf_counter() - began, 3)
        else:
            result = compare(images, self.references.get(setup.exact), cfg.tolerance)
            if setup.changes_images:  # an opt-in that changes the images: reported only
                result["changes_images"] = result.pop("matches_eager") is not None
            elif result.get("matches_eager") is False:
                self.run.mismatches.append(phase)
            extra.update(result)
        self.outputs[phase] = images
        record.update(extra)
        record["warnings"] = sorted(warnings)
        self.run.emit(record)

    def engine_bytes(self) -> int:
        pipe = self.engine.base_pipeline()
        modules = (pipe.unet, pipe.vae, pipe.text_encoder, self.engine.controlnet(CONTROL_ROLE))
        return weight_bytes(*modules)

    # -- stock diffusers --
    def stock_phase(self, phase: str) -> None:
        cfg = self.cfg
        if self.pipe is None:
            self.pipe = load_stock(self.models_dir, cfg)
            self.eager_modules = {"unet": self.pipe.unet, "controlnet": self.pipe.controlnet}
        pipe = self.pipe
        batch = BATCH4 if phase.endswith("batch4") else 1
        wants_compile = phase.startswith("stock_compiled") and cfg.compile
        if wants_compile and not self.compiled_modules:
            # As diffusers documents it and the DESIGN.md §6 anchors ran it: the pipeline sees
            # compiled modules and marks each CUDA-graph step itself.
            options: dict[str, Any] = {"fullgraph": True, "mode": "reduce-overhead"}
            if cfg.backend != "inductor":
                options = {"fullgraph": True, "backend": cfg.backend}
            self.compiled_modules = {
                name: torch.compile(module, **options)
                for name, module in self.eager_modules.items()
            }
        for name, module in (
            self.compiled_modules if wants_compile else self.eager_modules
        ).items():
            setattr(pipe, name, module)  # eager phases use the modules uncompiled
        resident = weight_bytes(pipe.unet, pipe.vae, pipe.text_encoder, pipe.controlnet)
        record, images = measure(
            phase,
            stock_call(pipe, self.image, cfg, batch),
            cfg=cfg,
            batch=batch,
            compiled=wants_compile,
            resident=resident,
        )
        self.outputs[phase] = images
        self.run.emit(record)

    # -- low memory: a fresh engine, its models offloaded to the CPU between uses --
    def low_memory_phase(self) -> None:
        cfg = self.cfg
        start = memory_now(cfg)  # offloaded weights visit the GPU: they count from here
        engine = make_engine(self.models_dir, cfg)
        try:
            pipe = engine.base_pipeline()
            engine.controlnet(CONTROL_ROLE)  # the ControlNet stays on the device (0.7 GB)
            steps = fast_path.low_memory(pipe, cfg.device)
            _free(cfg.device)
            warnings: set[str] = set()
            record, _ = measure(
                "low_memory",
                engine_call(engine, self.image, cfg, EngineSetup(), warnings),
                cfg=cfg,
                batch=1,
                compiled=False,
                start=start,
            )
            record.update({"low_memory": steps, "warnings": sorted(warnings)})
            self.run.emit(record)
        finally:
            del engine
            _free(cfg.device)


# ---- the run -------------------------------------------------------------------------------------
def _error(phase: str, error: BaseException) -> dict:
    lines = traceback.format_exception(error)
    return {"phase": phase, "error": f"{type(error).__name__}: {error}"[:2000], "where": lines[-3:]}


def _past_deadline(run: Run, phase: str, cfg: Config) -> bool:
    if cfg.deadline is not None and time.perf_counter() > cfg.deadline:
        run.emit({"phase": phase, "skipped": "past --deadline-s"})
        return True
    return False


def _ratio(run: Run, stock: str, engine: str) -> float | None:
    a, b = run.records.get(stock), run.records.get(engine)
    if not a or not b or not b["seconds_per_image"]:
        return None
    return round(a["seconds_per_image"] / b["seconds_per_image"], 3)


def summary(run: Run, cfg: Config, outputs: dict, setup: dict, started: float) -> dict:
    records = run.records
    ratio = {
        f"{stock}/{engine}": _ratio(run, stock, engine)
        for stock, engine in (
            ("stock_eager", "engine_fast"),
            ("stock_compiled", "engine_fast"),
            ("stock_eager_batch4", "engine_fast_batch4"),
            ("stock_compiled_batch4", "engine_fast_batch4"),
            ("stock_eager", "engine_eager"),
            ("engine_eager", "cache_eager"),  # what feature caching gains, eager ...
            ("engine_fast", "cache_fast"),  # ... and on the fast path
            ("stock_compiled", "cache_fast"),
            ("engine_fast", "lcm_fast"),  # what LCM-LoRA gains on the fast path
            ("stock_compiled", "lcm_fast"),
        )
    }
    engine_records = [r for p, r in records.items() if p in ENGINE_PHASES]
    peaks = [r["peak_gib"] for r in engine_records if r["peak_gib"] is not None]
    reserved = [r["peak_reserved_gib"] for r in engine_records if r["peak_reserved_gib"]]

    def seconds(phase: str) -> float | None:
        return records[phase]["seconds_per_image"] if phase in records else None

    def within(phase: str, limit: float) -> bool | None:
        value = seconds(phase)
        return None if value is None else value <= limit

    targets = {
        "applies": cfg.cuda and cfg.size == 512 and cfg.steps == 20,
        "batch1_s_le_0.15": within("engine_fast", 0.15),
        "batch4_s_le_0.10": within("engine_fast_batch4", 0.10),
        "peak_gib_le_6": None if not peaks else max(peaks) <= 6.0,
        # CUDA-graph pools are reserved, not allocated (replays allocate nothing): reserved counts.
        "peak_reserved_gib_le_6": None if not reserved else max(reserved) <= 6.0,
    }
    # Informational: the stock pipeline and the eager engine at the same seed (noise is drawn
    # differently, so this is not asserted; the engine may draw seed + i per image).
    stock_vs_engine = None
    if "stock_eager" in outputs and "engine_eager" in outputs:
        stock_vs_engine = compare(outputs["engine_eager"], outputs["stock_eager"], cfg.tolerance)
        stock_vs_engine.pop("matches_eager", None)
    return {
        "phase": "summary",
        "ratio": ratio,
        "targets": targets,
        "outputs_match": not run.mismatches,
        "mismatches": run.mismatches,
        "errors": [record["phase"] for record in run.errors],
        "skipped": run.skipped,
        "stock_vs_engine_eager": stock_vs_engine,
        "total_s": round(time.perf_counter() - started, 1),
        **{key: setup.get(key) for key in ("device_name", "size", "steps")},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models on CPU (smoke test)")
    parser.add_argument("--device", help="default: cuda if available (cpu with --tiny)")
    parser.add_argument("--size", type=int, help="image side in pixels (512; --tiny: 128)")
    parser.add_argument("--steps", type=int, help="denoising steps (20; --tiny: 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per phase (5)")
    parser.add_argument("--warmup", type=int, help="warm-up calls (default 1 eager, 2 compiled)")
    parser.add_argument("--budget-s", type=float, default=240, help="per phase, after warm-up")
    parser.add_argument("--deadline-s", type=float, help="no phase starts after this many s")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"any of {','.join(PHASES)}")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--compile-vae", action="store_true", help="also compile the VAE decoder")
    parser.add_argument(
        "--compile-backend", default="inductor", help="eager: check the compile flow on a CPU"
    )
    parser.add_argument(
        "--compile-mode",
        default="reduce-overhead",
        choices=COMPILE_MODES,
        help="the engine's torch.compile mode (stock compiled keeps reduce-overhead)",
    )
    parser.add_argument("--tolerance", type=float, default=2.0, help="mean |diff|, uint8 levels")
    parser.add_argument("--models-dir", type=Path, help="build here (or reuse what is here)")
    parser.add_argument("--build-only", action="store_true", help="build the models, time it")
    args = parser.parse_args(argv)
    unknown = set(args.phases.split(",")) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s) {', '.join(sorted(unknown))}; choose from {PHASES}")
    return args


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    if args.tiny:
        # One thread: on a shared CI box an oversubscribed OpenMP pool makes tiny timings swing
        # by up to 100x (spin-waiting threads); the smoke test needs numbers, not speed.
        torch.set_num_threads(1)
    device = torch.device(
        args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    )
    compile_on = {"auto": device.type == "cuda", "on": True, "off": False}[args.compile]
    cfg = Config(
        device=device,
        size=args.size or (128 if args.tiny else 512),
        steps=args.steps or (2 if args.tiny else 20),
        repeats=max(1, args.repeats),
        warmup=args.warmup,
        budget_s=args.budget_s,
        deadline=None if args.deadline_s is None else started + args.deadline_s,
        compile=compile_on,
        compile_vae=args.compile_vae,
        backend=args.compile_backend,
        compile_mode=args.compile_mode,
        tolerance=args.tolerance,
    )
    selected = [phase for phase in PHASES if phase in args.phases.split(",")]
    if cfg.cuda:
        fast_path.configure_torch()  # cuDNN autotuning for every phase alike, stock ones included
    run = Run()
    setup = {
        "phase": "setup",
        "models": "tiny" if args.tiny else "sd15-size random fp16",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "size": cfg.size,
        "steps": cfg.steps,
        "guidance_scale": cfg.guidance,
        "compile": cfg.compile and cfg.backend,
        "compile_mode": cfg.compile_mode,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "phases": selected,
    }
    try:
        import diffusers

        setup["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    outputs: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="generate-bench-") as folder:
        models_dir = args.models_dir or Path(folder)
        try:
            if has_models(models_dir):
                setup["build"] = {"reused": str(models_dir)}
            elif args.tiny:
                setup["build"] = build_tiny(models_dir)
            else:
                setup["build"] = build_full_models(models_dir, device)
            if "lcm_fast" in selected:
                setup["build"].update(build_lcm_lora(models_dir))
        except Exception as error:  # noqa: BLE001
            run.emit({**setup, **_error("setup", error)})
            return 1
        setup["build"] = {
            key: round(value, 2) if isinstance(value, float) else value
            for key, value in setup["build"].items()
        }
        run.emit(setup)
        if args.build_only:
            return 0
        Bench(run, models_dir, cfg, outputs).run_phases(selected)
    run.emit(summary(run, cfg, outputs, setup, started))
    return 1 if run.mismatches or run.errors else 0


if __name__ == "__main__":
    sys.exit(main())
