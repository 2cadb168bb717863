"""Attention backend, chosen by measurement on the device the models run on.

The candidates are PyTorch SDPA's kernels, each timed alone (flash, memory-efficient, cuDNN: torch
prefers flash, then memory-efficient, then the math fallback, and only then cuDNN, which Hopper
often runs fastest), and xformers where it runs. xformers kernels only load when xformers was
built against the installed torch exactly (xformers 0.0.35, built for torch 2.10, does not load
them on torch 2.11), so importing it is not enough: a tiny attention call on the device is the
probe.

Each candidate is timed on SD1.5's attentions at 512 px with CFG (batch 2, 8 heads): at each latent
level, self-attention and cross-attention to the 77 prompt tokens. The fastest is used: an SDPA
kernel by putting it first in SDPA's priority order while the engine generates (the others stay
enabled, so shapes it cannot take still run), xformers by switching the models' processors.

The fast path compiles the UNet and ControlNets with `fullgraph=True`: xformers' kernels are opaque
to Dynamo, so compiled models only consider SDPA's kernels (Inductor bakes the one chosen at
trace time into the graph).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)

SDPA = "PyTorch SDPA"
XFORMERS = "xformers"
# SDPA's kernels by the name the page shows, and their `torch.nn.attention.SDPBackend` member.
SDPA_KERNELS = {
    "flash": "FLASH_ATTENTION",
    "memory-efficient": "EFFICIENT_ATTENTION",
    "cuDNN": "CUDNN_ATTENTION",
}
# SD1.5 at 512 px: (tokens, head dim) at each latent level with attention (64, 32, 16 px).
PROBE_LEVELS = ((4096, 40), (1024, 80), (256, 160))
PROBE_BATCH = 2  # CFG: unconditional + conditional
PROBE_HEADS = 8
PROBE_CONTEXT_TOKENS = 77

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (B, M, H, K)


@dataclass(frozen=True)
class AttentionBackend:
    name: str  # SDPA or XFORMERS
    reason: str  # why this one, shown on the page
    timings_ms: dict[str, float] = field(default_factory=dict)  # per probe pass, by candidate
    kernel: str | None = None  # the SDPA kernel put first (a SDPA_KERNELS key); None: torch's

    def __str__(self) -> str:
        name = f"{self.name}, {self.kernel} kernel" if self.kernel else self.name
        return f"{name} ({self.reason})" if self.reason else name

    def kernels(self) -> contextlib.AbstractContextManager:
        """The context to generate in: SDPA with the chosen kernel first (nothing disabled)."""
        if self.kernel is None:
            return contextlib.nullcontext()
        return prefer_sdpa_kernel(self.kernel)


def _sdp_backend(kernel: str):
    from torch.nn.attention import SDPBackend

    return getattr(SDPBackend, SDPA_KERNELS[kernel])


def prefer_sdpa_kernel(kernel: str) -> contextlib.AbstractContextManager:
    """SDPA tries `kernel` first, then torch's usual order (flash, memory-efficient, math)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    usual = [_sdp_backend(name) for name in SDPA_KERNELS] + [SDPBackend.MATH]
    first = _sdp_backend(kernel)
    return sdpa_kernel([first] + [backend for backend in usual if backend != first], True)


def sdpa_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """PyTorch's scaled_dot_product_attention on (B, M, H, K) tensors, as diffusers calls it."""
    out = torch.nn.functional.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    )
    return out.transpose(1, 2)


def sdpa_kernel_attention(kernel: str) -> Attention:
    """SDPA restricted to one kernel: it raises where that kernel cannot take the shape."""

    def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel([_sdp_backend(kernel)]):
            return sdpa_attention(query, key, value)

    return attention


def time_attention(
    attention: Attention,
    device: torch.device,
    dtype: torch.dtype,
    *,
    levels: tuple[tuple[int, int], ...] = PROBE_LEVELS,
    batch: int = PROBE_BATCH,
    heads: int = PROBE_HEADS,
    context_tokens: int = PROBE_CONTEXT_TOKENS,
    repeats: int = 10,
) -> float:
    """Milliseconds per pass over the probe attentions: the median of `repeats`, after a warm-up.

    A pass is, at each level, self-attention and cross-attention to the prompt's tokens.
    """
    generator = torch.Generator(device="cpu").manual_seed(0)

    def tensor(tokens: int, dim: int) -> torch.Tensor:
        return torch.randn((batch, tokens, heads, dim), generator=generator).to(device, dtype)

    calls = []
    for tokens, dim in levels:
        query = tensor(tokens, dim)
        calls += [(query, query), (query, tensor(context_tokens, dim))]

    def one_pass() -> None:
        for query, key in calls:
            attention(query, key, key)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    one_pass()  # warm-up: kernel selection, lazy initialisation; raises where it cannot run
    synchronize()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        one_pass()
        synchronize()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return samples[len(samples) // 2]


def fastest(
    candidates: dict[str, Attention], device: torch.device, dtype: torch.dtype, **probe
) -> AttentionBackend:
    """Time every candidate on the probe attentions and pick the fastest.

    Candidates are named XFORMERS or "SDPA <kernel>"; one that fails on any probe shape is left
    out (and said so); if none runs, SDPA keeps torch's own order.
    """
    timings, failed = {}, []
    for name, attention in candidates.items():
        try:
            timings[name] = time_attention(attention, device, dtype, **probe)
        except Exception as error:  # noqa: BLE001 (a kernel that cannot take a shape is out)
            logger.info("Attention candidate %s failed its probe on %s: %s", name, device, error)
            failed.append(name)
    unavailable = f"; {', '.join(failed)}: cannot run here" if failed else ""
    if not timings:
        return AttentionBackend(SDPA, f"no candidate passed the probe{unavailable}")
    chosen = min(timings, key=timings.__getitem__)
    measured = ", ".join(f"{name} {ms:.2f} ms" for name, ms in timings.items())
    logger.info("Attention measured on %s: %s; using %s", device, measured, chosen)
    reason = f"fastest when measured on {device}: {measured}{unavailable}"
    rounded = {name: round(ms, 4) for name, ms in timings.items()}
    if chosen == XFORMERS:
        return AttentionBackend(XFORMERS, reason, rounded)
    return AttentionBackend(SDPA, reason, rounded, kernel=chosen.removeprefix("SDPA "))


def _xformers_attention(device: torch.device) -> tuple[Attention | None, str]:
    """xformers' attention if it imports and runs on `device`, else None and why not."""
    try:
        import xformers
        import xformers.ops
    except ImportError:
        return None, "xformers is not installed"
    try:
        query = torch.randn(1, 64, 8, 40, device=device, dtype=torch.float16)  # (B, M, H, K)
        xformers.ops.memory_efficient_attention(query, query, query)
        torch.cuda.synchronize(device)
    except Exception as error:  # noqa: BLE001 (any failure: kernels do not match this torch)
        logger.warning("xformers %s failed its probe: %s", xformers.__version__, error)
        return None, f"xformers {xformers.__version__} does not run with torch {torch.__version__}"
    return xformers.ops.memory_efficient_attention, ""


def probe_attention_backend(device: torch.device, *, compiled: bool = False) -> AttentionBackend:
    """The attention backend for fp16 models on `device`, chosen by timing the candidates.

    `compiled`: the fast path is on, so xformers is not a candidate (see the module's docstring).
    """
    if device.type != "cuda":
        return AttentionBackend(SDPA, f"nothing to measure on {device.type}")
    candidates = {f"SDPA {kernel}": sdpa_kernel_attention(kernel) for kernel in SDPA_KERNELS}
    note = "xformers: not with compiled models"
    if not compiled:
        xformers_attention, note = _xformers_attention(device)
        if xformers_attention is not None:
            candidates[XFORMERS] = xformers_attention
    backend = fastest(candidates, device, torch.float16)
    if note:
        backend = AttentionBackend(
            backend.name, f"{backend.reason}; {note}", backend.timings_ms, backend.kernel
        )
    return backend


def apply_attention_backend(backend: AttentionBackend, *models: torch.nn.Module) -> None:
    """Switch diffusers models to xformers; SDPA is their default, so it needs nothing."""
    if backend.name == XFORMERS:
        for model in models:
            model.enable_xformers_memory_efficient_attention()
