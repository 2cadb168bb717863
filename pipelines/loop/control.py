"""Control modes and the per-connection weights of the ControlNet's 13 outputs.

A ControlNet adds 13 residuals to the locked UNet: 12 skip connections (latent sizes 64, 32, 16, 8
at 512 px, three each) and the middle block (8). The paper's CFG Resolution Weighting multiplies
connection i by w_i = 64 / h_i, normalised so the middle block gets 1.0 and the 64x64 blocks 1/8.
We generalise it with an exponent gamma:

    w_i = (h_min / h_i) ** gamma      gamma = 0: uniform, gamma = 1: the paper, gamma > 1: steeper

The reference code's `0.825 ** (12 - i)` (diffusers' guess mode: `logspace(-1, 0, 13)`, 0.1 to 1.0)
has the same shape. docs/architecture.md sets the modes beside the rest of the method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from errors import look_up

# Latent sizes of the 13 connections for a 512 x 512 image (64 x 64 latents): conv_in and two
# resnets at 64, a downsampler and two resnets at 32, ... , two resnets at 8, then the middle block.
SD15_CONNECTION_SIZES_512 = (64, 64, 64, 32, 32, 32, 16, 16, 16, 8, 8, 8, 8)


@dataclass(frozen=True)
class ControlMode:
    name: str
    label: str
    conditional_only: bool  # add control to the conditional CFG branch only (the paper's CFG-RW)
    resolution_weighted: bool  # apply w_i = (h_min / h_i) ** gamma


CONTROL_MODES: dict[str, ControlMode] = {
    mode.name: mode
    for mode in (
        ControlMode("balanced", "Balanced", conditional_only=False, resolution_weighted=False),
        ControlMode(
            "prompt",
            "My prompt is more important",
            conditional_only=False,
            resolution_weighted=True,
        ),
        ControlMode(
            "controlnet",
            "ControlNet is more important (CFG-RW, guess mode)",
            conditional_only=True,
            resolution_weighted=True,
        ),
    )
}


def get_control_mode(name: str) -> ControlMode:
    return look_up(CONTROL_MODES, name, "control mode")


def connection_weights(latent_sizes: Sequence[int], gamma: float) -> list[float]:
    """w_i = (h_min / h_i) ** gamma for each connection's latent size h_i."""
    smallest = min(latent_sizes)
    return [(smallest / size) ** gamma for size in latent_sizes]


def mode_weights(mode: ControlMode, latent_sizes: Sequence[int], gamma: float) -> list[float]:
    """The weight of each connection under `mode`, before multiplying by the control strength."""
    return connection_weights(latent_sizes, gamma if mode.resolution_weighted else 0.0)
