"""The fast path: what makes generating on a dedicated GPU fast.

Each step is a separate switch, so each can be tested (on CPU, without compiling) and measured:

- channels_last weights: fp16 convolutions on tensor cores prefer NHWC;
- fused QKV projections: one matmul for q, k and v (self-attention) or k and v (cross-attention);
- `torch.compile(fullgraph=True, mode="reduce-overhead")`: Inductor kernels replayed as CUDA graphs.
  Eager SD1.5 at batch 1 is launch-bound: the GPU waits for the host to launch its many small
  kernels, and replaying a recorded graph launches a whole model in one call.
  Each model compiles once per input shape (batch, height, width, CFG), then reuses it;
  `first_runs` tells the page which request pays that compile.

`low_memory` is the opposite trade for 8 GB cards: model CPU offload and VAE slicing, no compile.
Nothing here knows about the engine; the engine calls these on the modules it loads.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import torch

from settings import FAST_PATH_MODES

logger = logging.getLogger(__name__)

# Every new shape is a recompile; torch's default limit (8) would silently fall back to eager.
RECOMPILE_LIMIT = 64
# Set on a module once `speed_up` has run on it: the steps applied, in order.
APPLIED_ATTRIBUTE = "_fast_path_applied"


def fast_path_enabled(
    mode: str, device: torch.device | str, zero_gpu: bool, *, low_memory: bool = False
) -> bool:
    """Whether the engine takes the fast path.

    auto: only on a dedicated CUDA device (never on CPU, never on ZeroGPU, where a compile would
    eat each request's short GPU slice). on: always (on CPU that means channels_last, fused QKV and
    an Inductor compile without CUDA graphs). off: never. Low-memory mode (CPU offload) excludes it.
    """
    if mode not in FAST_PATH_MODES:
        raise ValueError(
            f"fast path mode must be one of {', '.join(FAST_PATH_MODES)}, got {mode!r}"
        )
    if mode == "off" or low_memory:
        return False
    if mode == "on":
        return True
    return torch.device(device).type == "cuda" and not zero_gpu


def configure_torch(recompile_limit: int = RECOMPILE_LIMIT) -> None:
    """Process-wide settings the fast path wants; call once when it is on.

    cuDNN picks the fastest convolution per shape; Inductor turns 1x1 convolutions into matmuls
    (diffusers' advice for UNets); the recompile limit is raised so each request shape gets its
    own graph instead of silently running eagerly after the 8th.
    """
    from torch._dynamo import config as dynamo_config
    from torch._inductor import config as inductor_config

    torch.backends.cudnn.benchmark = True
    inductor_config.conv_1x1_as_mm = True
    # `recompile_limit` was `cache_size_limit` before torch 2.6.
    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, name, max(getattr(dynamo_config, name), recompile_limit))


def is_compiled(module: torch.nn.Module) -> bool:
    """Whether `module.compile()` ran on it (in place: its type stays, its calls go to Dynamo)."""
    return getattr(module, "_compiled_call_impl", None) is not None


def uncompile(module: torch.nn.Module) -> None:
    """Undo `module.compile()`: its calls run eagerly again (channels_last and fused QKV stay,
    they are eager-safe)."""
    if is_compiled(module):
        module._compiled_call_impl = None
        setattr(module, APPLIED_ATTRIBUTE, tuple(s for s in applied(module) if "compile" not in s))
    module.__dict__.pop(SHAPES_ATTRIBUTE, None)


def mark_step_begin() -> None:
    """Tell CUDA graphs a new denoising step begins: the outputs the last replay gave (the UNet's
    noise, the ControlNets' residuals) are done with, so the next replay may reuse their memory.
    diffusers' pipelines do the same each step when their models are compiled."""
    torch.compiler.cudagraph_mark_step_begin()


def applied(module: torch.nn.Module) -> tuple[str, ...]:
    """The fast-path steps already applied to `module` (empty when none)."""
    return getattr(module, APPLIED_ATTRIBUTE, ())


def to_channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """4-D weights (the convolutions) in NHWC memory format; everything else is unchanged."""
    return module.to(memory_format=torch.channels_last)


def fuse_qkv(module: torch.nn.Module) -> bool:
    """Fuse the attention projections of every diffusers `Attention` in `module`; True if done.

    diffusers 0.42 has `fuse_qkv_projections()` on UNet2DConditionModel and AutoencoderKL, but the
    one ControlNetModel inherits (from AttentionMixin) only visits the new attention classes, so on
    SD1.5's ControlNet it silently does nothing. This does what the UNet's does, for any of them.
    It is skipped (False) when another backend (xformers, a custom processor) is in place, so a
    backend chosen by measurement is never overridden, and it is a no-op on a fused module.
    """
    from diffusers.models.attention_processor import (
        Attention,
        AttnProcessor2_0,
        FusedAttnProcessor2_0,
    )

    processors = getattr(module, "attn_processors", None)
    if not processors or not hasattr(module, "set_attn_processor"):
        return False
    kinds = {type(processor) for processor in processors.values()}
    if kinds == {FusedAttnProcessor2_0}:
        return True
    if kinds != {AttnProcessor2_0}:
        logger.info("Not fusing QKV in %s: attention processors %s", type(module).__name__, kinds)
        return False
    for child in module.modules():
        if isinstance(child, Attention):
            child.fuse_projections(fuse=True)
    module.set_attn_processor(FusedAttnProcessor2_0())
    return True


def refresh_fused_projections(module: torch.nn.Module) -> int:
    """Copy the separate q / k / v weights of every fused attention in `module` into its fused
    projection (`to_qkv`, or `to_kv` for cross-attention), in place, after they changed (a LoRA
    merged into them): the fused processors read only the fused weights, and compiled graphs
    keep reading the same memory. Returns how many attentions were refreshed."""
    from diffusers.models.attention_processor import Attention

    refreshed = 0
    with torch.no_grad():
        for attention in module.modules():
            if not (isinstance(attention, Attention) and attention.fused_projections):
                continue
            if attention.is_cross_attention:
                fused, parts = attention.to_kv, (attention.to_k, attention.to_v)
            else:
                fused, parts = attention.to_qkv, (attention.to_q, attention.to_k, attention.to_v)
            fused.weight.copy_(torch.cat([part.weight for part in parts]))
            if fused.bias is not None:
                fused.bias.copy_(torch.cat([part.bias for part in parts]))
            refreshed += 1
    return refreshed


def use_sdpa(module: torch.nn.Module) -> bool:
    """Switch every attention layer of `module` back to PyTorch SDPA; True if any changed.

    Before compiling: xformers' kernels are opaque to Dynamo (a graph break, which fullgraph turns
    into an error), while Inductor handles SDPA (flash / memory-efficient kernels) itself.
    """
    from diffusers.models.attention_processor import AttnProcessor2_0, FusedAttnProcessor2_0

    processors = getattr(module, "attn_processors", None)
    if not processors or not hasattr(module, "set_attn_processor"):
        return False
    kinds = {type(processor) for processor in processors.values()}
    if kinds <= {AttnProcessor2_0, FusedAttnProcessor2_0}:
        return False
    module.set_attn_processor(AttnProcessor2_0())
    return True


def compile_in_place(
    module: torch.nn.Module,
    *,
    mode: str | None = "reduce-overhead",
    fullgraph: bool = True,
    backend: str = "inductor",
) -> torch.nn.Module:
    """`module.compile(...)`: the module keeps its type, config and identity (caches holding it
    stay valid), and its calls go through Dynamo. Shapes are static (`dynamic=False`): one graph
    per shape, which CUDA graphs need anyway. `backend="eager"` only checks the capture (no graph
    break with fullgraph) without Inductor's minutes of compiling: what the CPU tests use."""
    if backend == "inductor":
        module.compile(fullgraph=fullgraph, mode=mode, dynamic=False)
    else:
        module.compile(fullgraph=fullgraph, backend=backend, dynamic=False)
    return module


def speed_up(
    module: torch.nn.Module,
    *,
    channels_last: bool = True,
    fuse: bool = True,
    compile: bool = True,
    mode: str | None = "reduce-overhead",
    fullgraph: bool = True,
    backend: str = "inductor",
    compile_target: torch.nn.Module | None = None,
    sdpa: bool | None = None,
) -> torch.nn.Module:
    """Apply the chosen steps to `module` in place and return it. Idempotent.

    `compile_target` is the submodule to compile (default: `module` itself), e.g. the VAE's
    decoder. Compiling happens lazily: the first call of each shape pays it. `sdpa` switches
    attention back to PyTorch SDPA first (default: when compiling, see `use_sdpa`), so fused QKV
    and fullgraph apply even where xformers was chosen for the eager path.
    """
    done = list(applied(module))
    if (compile if sdpa is None else sdpa) and use_sdpa(module):
        done.append("sdpa")
    if channels_last and "channels_last" not in done:
        to_channels_last(module)
        done.append("channels_last")
    if fuse and "fused_qkv" not in done and fuse_qkv(module):
        done.append("fused_qkv")
    if compile and not any(step.startswith("compile") for step in done):
        compile_in_place(compile_target or module, mode=mode, fullgraph=fullgraph, backend=backend)
        done.append(f"compile:{(mode or 'default') if backend == 'inductor' else backend}")
    setattr(module, APPLIED_ATTRIBUTE, tuple(done))
    return module


def speed_up_unet(unet: torch.nn.Module, *, compile: bool = True, **options) -> torch.nn.Module:
    """The UNet: channels_last, fused QKV, compiled with CUDA graphs (it runs every step)."""
    return speed_up(unet, compile=compile, **options)


def speed_up_controlnet(
    controlnet: torch.nn.Module, *, compile: bool = True, **options
) -> torch.nn.Module:
    """A ControlNet: as the UNet (it runs every step inside the control window)."""
    return speed_up(controlnet, compile=compile, **options)


def speed_up_wrapper(wrapper: torch.nn.Module, **options) -> torch.nn.Module:
    """A module that only calls into models already sped up (feature caching's wrappers): it is
    compiled like them, with nothing else to apply."""
    return speed_up(wrapper, channels_last=False, fuse=False, sdpa=False, **options)


def speed_up_vae(
    vae: torch.nn.Module, *, compile: bool = False, mode: str | None = None, **options
) -> torch.nn.Module:
    """The VAE: channels_last and fused QKV; its decoder compiled only on request.

    Decoding runs once per request and is compute-bound (large convolutions at the image's full
    size), so CUDA graphs gain little there while each new batch size would cost another compile;
    when asked, the decoder is compiled without CUDA graphs (`mode=None`) to spare graph-pool
    memory.
    """
    target = getattr(vae, "decoder", vae)
    return speed_up(vae, compile=compile, mode=mode, compile_target=target, **options)


def low_memory(pipe, device: torch.device | str) -> list[str]:
    """Low-memory mode for 8 GB cards: model CPU offload (one model on the GPU at a time) and VAE
    slicing (one image decoded at a time). Returns what was applied.

    On a CPU there is nothing to offload to, so only slicing applies. Offload moves each model to
    the device when its forward runs (hooks), so code that calls `pipe.unet(...)` directly still
    works; ControlNets passed in per request are not in the pipeline and stay where they are.
    """
    device = torch.device(device)
    done = []
    if device.type != "cpu":
        pipe.enable_model_cpu_offload(device=device)
        done.append("model_cpu_offload")
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "enable_slicing"):
        vae.enable_slicing()
        done.append("vae_slicing")
    return done


@dataclass(frozen=True)
class ShapeKey:
    """What fixes a compiled model's input shapes: a new value means a new compile."""

    batch: int  # images per call
    height: int
    width: int
    cfg: bool  # classifier-free guidance doubles the batch
    conditional_only: bool = False  # CFG-RW: the ControlNets see only the conditional half

    def describe(self) -> str:
        images = f"{self.batch} image{'s' if self.batch != 1 else ''}"
        return f"{self.width}x{self.height}, {images}"


# The shapes each compiled module has run at are kept on the module itself: a model evicted from
# the cache and loaded again, or a new base, is a new object that compiles anew, and is told so.
SHAPES_ATTRIBUTE = "_fast_path_shapes"
_shapes_lock = threading.Lock()


def first_runs(modules: dict[str, torch.nn.Module], key: ShapeKey) -> list[str]:
    """The names of the compiled `modules` that have not run at `key` yet (they compile now, in
    this request), marking them as run; uncompiled modules are skipped. Thread-safe: of several
    requests of one new shape, exactly one is told."""
    with _shapes_lock:
        first = []
        for name, module in modules.items():
            if not is_compiled(module):
                continue
            seen = module.__dict__.setdefault(SHAPES_ATTRIBUTE, set())
            if key not in seen:
                seen.add(key)
                first.append(name)
        return first


def compile_notice(
    names: list[str], key: ShapeKey, mode: str | None = "reduce-overhead"
) -> str | None:
    """The page's message when `names` (models) compile for `key`; None when nothing does."""
    if not names:
        return None
    # Autotuning also times every kernel candidate of every matmul and convolution, on top of the
    # plain compile: several times longer.
    duration = "several minutes" if mode and "autotune" in mode else "about a minute"
    return (
        f"First request at {key.describe()} for the {' and the '.join(names)}: the fast path "
        f"compiled them for this size ({duration}, once). Later requests of this size reuse it."
    )
