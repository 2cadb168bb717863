"""Per-connection weights of the control modes, against the formula w_i = (h_min / h_i) ** gamma."""

from __future__ import annotations

import pytest
import torch

from pipelines.loop.control import (
    CONTROL_MODES,
    SD15_CONNECTION_SIZES_512,
    connection_weights,
    get_control_mode,
    mode_weights,
)
from pipelines.loop.denoise import ControlUnit, control_residuals

PAPER_WEIGHTS = [1 / 8] * 3 + [1 / 4] * 3 + [1 / 2] * 3 + [1.0] * 4  # 64 / h_i, middle = 1


def test_gamma_one_is_the_papers_cfg_resolution_weighting():
    assert connection_weights(SD15_CONNECTION_SIZES_512, 1.0) == pytest.approx(PAPER_WEIGHTS)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
def test_weights_follow_the_formula(gamma):
    expected = [(8 / size) ** gamma for size in SD15_CONNECTION_SIZES_512]
    assert connection_weights(SD15_CONNECTION_SIZES_512, gamma) == pytest.approx(expected)
    # Only ratios matter: the same image at 768 px (96 x 96 latents) gets the same weights.
    scaled = [size * 3 // 2 for size in SD15_CONNECTION_SIZES_512]
    assert connection_weights(scaled, gamma) == pytest.approx(expected)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.5])
def test_each_mode_uses_gamma_as_specified(gamma):
    sizes = SD15_CONNECTION_SIZES_512
    assert mode_weights(get_control_mode("balanced"), sizes, gamma) == [1.0] * 13
    for name in ("prompt", "controlnet"):
        weights = mode_weights(get_control_mode(name), sizes, gamma)
        assert weights == pytest.approx(connection_weights(sizes, gamma))
    assert not CONTROL_MODES["balanced"].conditional_only
    assert not CONTROL_MODES["prompt"].conditional_only
    assert CONTROL_MODES["controlnet"].conditional_only


class ConstantControlNet(torch.nn.Module):
    """Returns residuals of ones at SD1.5's 13 connection sizes (for a 64 x 64 latent)."""

    def forward(self, latents, timestep, **kwargs):
        batch = latents.shape[0]
        outputs = [torch.ones(batch, 1, size, size) for size in SD15_CONNECTION_SIZES_512]
        return outputs[:-1], outputs[-1]


@pytest.mark.parametrize(("mode", "gamma"), [("balanced", 1.0), ("prompt", 1.0), ("prompt", 2.0)])
def test_residuals_are_scaled_by_strength_times_weight(mode, gamma):
    unit = ControlUnit(ConstantControlNet(), torch.zeros(1, 3, 512, 512), strength=0.6)
    down, middle = control_residuals(
        [unit],
        torch.zeros(2, 4, 64, 64),
        torch.tensor(10),
        torch.zeros(2, 77, 8),
        get_control_mode(mode),
        gamma,
    )
    expected = mode_weights(get_control_mode(mode), SD15_CONNECTION_SIZES_512, gamma)
    # Ones times one factor, rounded once to float32: that factor in float32, exactly (a mean
    # would add the sum's rounding, which depends on the CPU's SIMD width and thread split).
    for residual, weight in zip([*down, middle], expected, strict=True):
        assert torch.equal(residual, torch.full_like(residual, 0.6 * weight)), weight


def test_units_are_summed_and_strength_zero_is_skipped():
    class Exploding(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise AssertionError("a ControlNet at strength 0 must not run")

    units = [
        ControlUnit(ConstantControlNet(), torch.zeros(1, 3, 8, 8), strength=1.0),
        ControlUnit(ConstantControlNet(), torch.zeros(1, 3, 8, 8), strength=0.5),
        ControlUnit(Exploding(), torch.zeros(1, 3, 8, 8), strength=0.0),
    ]
    down, middle = control_residuals(
        units,
        torch.zeros(1, 4, 64, 64),
        torch.tensor(1),
        torch.zeros(1, 77, 8),
        get_control_mode("balanced"),
        1.0,
    )
    assert torch.equal(middle, torch.full_like(middle, 1.5))  # 1 * 1.0 + 1 * 0.5: exact
    assert (
        control_residuals(
            units[2:],
            torch.zeros(1, 4, 64, 64),
            torch.tensor(1),
            torch.zeros(1, 77, 8),
            get_control_mode("balanced"),
            1.0,
        )
        is None
    )
