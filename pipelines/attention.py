"""Attention backend: xformers when it imports and runs on this device, else PyTorch SDPA.

xformers kernels only load when xformers was built against the installed torch exactly (0.0.35 is
built for torch 2.10 and fails on 2.11, DESIGN.md §6), so importing it is not enough: a tiny
attention call on the device is the probe.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

SDPA = "PyTorch SDPA"
XFORMERS = "xformers"


@dataclass(frozen=True)
class AttentionBackend:
    name: str  # SDPA or XFORMERS
    reason: str  # why this one, shown on the page

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})" if self.reason else self.name


def probe_attention_backend(device: torch.device) -> AttentionBackend:
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
    return AttentionBackend(XFORMERS, f"{xformers.__version__}, probed on {device}")


def apply_attention_backend(backend: AttentionBackend, *models: torch.nn.Module) -> None:
    """Switch diffusers models to xformers; SDPA is their default, so it needs nothing."""
    if backend.name == XFORMERS:
        for model in models:
            model.enable_xformers_memory_efficient_attention()
