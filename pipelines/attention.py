"""Attention backend, chosen by measurement: PyTorch SDPA or xformers, whichever is faster here.

xformers kernels only load when xformers was built against the installed torch exactly (0.0.35 is
built for torch 2.10 and fails on 2.11, DESIGN.md §6), so importing it is not enough: a tiny
attention call on the device is the probe. When both run, each is timed on SD1.5's busiest
attention (the 64x64 latent at 512 px, CFG batch 2: self-attention over 4096 tokens and
cross-attention to the 77 prompt tokens, 8 heads of 40) and the faster one is used.

The fast path compiles the UNet and ControlNets with `fullgraph=True`: xformers' kernels are opaque
to Dynamo, so compiled models always run SDPA (which Inductor handles itself) and the page says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)

SDPA = "PyTorch SDPA"
XFORMERS = "xformers"

# (batch, tokens, heads, head dim) of the queries, and the key/value tokens of each attention.
PROBE_QUERY = (2, 4096, 8, 40)
PROBE_KEY_TOKENS = (4096, 77)  # self-attention, cross-attention to the prompt

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (B, M, H, K)


@dataclass(frozen=True)
class AttentionBackend:
    name: str  # SDPA or XFORMERS
    reason: str  # why this one, shown on the page
    timings_ms: dict[str, float] = field(default_factory=dict)  # measured per probe, by name

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})" if self.reason else self.name


def sdpa_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """PyTorch's scaled_dot_product_attention on (B, M, H, K) tensors, as diffusers calls it."""
    out = torch.nn.functional.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    )
    return out.transpose(1, 2)


def time_attention(
    attention: Attention,
    device: torch.device,
    dtype: torch.dtype,
    *,
    query_shape: tuple[int, int, int, int] = PROBE_QUERY,
    key_tokens: tuple[int, ...] = PROBE_KEY_TOKENS,
    repeats: int = 10,
) -> float:
    """Milliseconds per pass over the probe attentions: the median of `repeats`, after a warm-up."""
    batch, _, heads, dim = query_shape
    generator = torch.Generator(device="cpu").manual_seed(0)
    query = torch.randn(query_shape, generator=generator).to(device, dtype)
    keys = [
        torch.randn((batch, n, heads, dim), generator=generator).to(device, dtype)
        for n in key_tokens
    ]

    def one_pass() -> None:
        for key in keys:
            attention(query, key, key)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    one_pass()  # warm-up: kernel selection, lazy initialisation
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
    """Time every candidate on the probe attentions and pick the fastest (SDPA wins ties)."""
    timings = {
        name: time_attention(run, device, dtype, **probe) for name, run in candidates.items()
    }
    chosen = min(timings, key=lambda name: (timings[name], name != SDPA))
    measured = ", ".join(f"{name} {ms:.2f} ms" for name, ms in timings.items())
    logger.info("Attention backends measured on %s: %s; using %s", device, measured, chosen)
    return AttentionBackend(
        chosen,
        f"fastest when measured on {device}: {measured}",
        {name: round(ms, 4) for name, ms in timings.items()},
    )


def probe_attention_backend(device: torch.device, *, compiled: bool = False) -> AttentionBackend:
    """The attention backend for models on `device`: xformers only where it runs and is faster.

    `compiled`: the fast path is on, so the models run SDPA whatever is measured (see the module's
    docstring); nothing is timed.
    """
    if compiled:
        return AttentionBackend(SDPA, "compiled by the fast path")
    if device.type != "cuda":
        return AttentionBackend(SDPA, f"xformers needs CUDA; running on {device.type}")
    try:
        import xformers
        import xformers.ops
    except ImportError:
        return AttentionBackend(SDPA, "xformers is not installed")
    try:
        query = torch.randn(1, 64, 8, 40, device=device, dtype=torch.float16)  # (B, M, H, K)
        xformers.ops.memory_efficient_attention(query, query, query)
        torch.cuda.synchronize(device)
    except Exception as error:  # noqa: BLE001 (any failure: kernels do not match this torch)
        logger.warning("xformers %s failed its probe: %s", xformers.__version__, error)
        return AttentionBackend(
            SDPA, f"xformers {xformers.__version__} does not run with torch {torch.__version__}"
        )
    candidates = {SDPA: sdpa_attention, XFORMERS: xformers.ops.memory_efficient_attention}
    return fastest(candidates, device, torch.float16)


def apply_attention_backend(backend: AttentionBackend, *models: torch.nn.Module) -> None:
    """Switch diffusers models to xformers; SDPA is their default, so it needs nothing."""
    if backend.name == XFORMERS:
        for model in models:
            model.enable_xformers_memory_efficient_attention()
