"""Tolerances for comparing two float computations, derived from the arithmetic rather than from
what one machine printed.

Two computations of the same maths that differ only in the order of their sums (another CPU's
SIMD width, another split over OMP threads, channels_last convolutions, a compiled graph, another
attention kernel) agree up to rounding, and rounding is bounded by the number format and by how
many operations accumulate it:

- one rounding moves a value by at most the unit roundoff u of its format, relative to it:
  float32 2**-24, float16 2**-11, bfloat16 2**-8 (8 significand bits);
- a sum of n terms, in any order, is within (n - 1) u times the sum of the terms' sizes of the
  exact sum (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., section 4.2), so two
  orders differ by at most twice that: `sum_bound`;
- through a network, a reduction of n terms taken in another order moves its result by about
  sqrt(n) u of its scale (roundings of either sign add up like a random walk: Higham and Mary,
  "A new approach to probabilistic rounding error analysis", SIAM J. Sci. Comput. 41, 2019);
  `network_bound` adds that up over every reduction the model runs, as if all of them sat in series
  and no error ever cancelled another: on the tiny models it is 25 to 250 times what the tests
  observe (at 1 and 2 threads), and still under 1.5e-4 of the output's scale;
- uint8 images: the float images of two generations that differ by reordered float32 sums only
  differ by about 1e-5 of their [0, 1] range (2e-6 to 1e-5 measured through a few steps of the
  tiny models, CFG included), hundreds of times less than one of 255 levels, so no pixel moves by
  more than `ROUNDING_LEVELS`.

A real bug (a wrong sign, a dropped term, a wrong scale) moves the results by 1e-2 of their scale or
more: `assert_within` checks that each bound it is given stays below that (`BUG_SIZE`), so a bound
cannot grow loose enough to let one through.

Set TOLERANCE_REPORT to a file path to append each comparison's observed difference and its
bound to it (one line each), to see how much room the bounds leave on a machine.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
import torch

FLOAT32_U = 2.0**-24
FLOAT16_U = 2.0**-11
BFLOAT16_U = 2.0**-8
# float16's smallest step (its subnormals') is 2**-24: rounding a value there moves it by half that.
FLOAT16_SMALLEST_ROUNDING = 2.0**-25
# Out of 255 levels: two images whose float values differ by less than one level round to uint8
# values at most one level apart (a pixel on a rounding boundary moves by one, none by two).
ROUNDING_LEVELS = 1
# The smallest error a real bug causes, relative to the scale of the values compared.
BUG_SIZE = 1e-2


def unit_roundoff(dtype: torch.dtype) -> float:
    """u of a float dtype: half the distance from 1 to the next number."""
    return torch.finfo(dtype).eps / 2


def sum_bound(length: int, magnitude: float, dtype: torch.dtype = torch.float32) -> float:
    """How far two orders of a sum of `length` terms whose sizes add up to `magnitude` can differ
    (each is within (length - 1) u `magnitude` of the exact sum; a single term is only rounded)."""
    return 2 * max(length - 1, 1) * unit_roundoff(dtype) * magnitude


def reduction_lengths(model: torch.nn.Module, run: Callable[[], object]) -> list[int]:
    """The length of every reduction `model` computes while `run()` calls it: each convolution's
    and linear layer's dot products, each GroupNorm's and LayerNorm's mean and variance, and each
    attention's query-key dot products (head size), softmax sum and sum over the values (key
    tokens)."""
    from diffusers.models.attention_processor import Attention

    lengths: list[int] = []

    def record(module, args, kwargs, output) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states", kwargs.get("input"))
        if isinstance(module, torch.nn.Conv2d):
            lengths.append(module.in_channels // module.groups * math.prod(module.kernel_size))
        elif isinstance(module, torch.nn.Linear):
            lengths.append(module.in_features)
        elif isinstance(module, torch.nn.GroupNorm):
            lengths.append(hidden[0].numel() // module.num_groups)
        elif isinstance(module, torch.nn.LayerNorm):
            lengths.append(math.prod(module.normalized_shape))
        elif isinstance(module, Attention):
            context = kwargs.get("encoder_hidden_states")
            keys = hidden if context is None else context
            tokens = keys.shape[1] if keys.dim() == 3 else math.prod(keys.shape[2:])
            lengths.extend([module.inner_dim // module.heads, tokens, tokens])

    hooks = [m.register_forward_hook(record, with_kwargs=True) for m in model.modules()]
    try:
        with torch.inference_mode():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    assert lengths, "the model ran no reduction"
    return lengths


def network_bound(lengths: list[int], scale: float, dtype: torch.dtype = torch.float32) -> float:
    """How far two runs of a network whose reductions (`reduction_lengths`) are taken in other
    orders can move an output of size `scale`: sqrt(n) u of the scale per reduction of n terms,
    added up over all of them."""
    return sum(math.sqrt(n) for n in lengths) * unit_roundoff(dtype) * scale


def max_difference(actual, expected) -> float:
    """max |actual - expected| over tensors or arrays (uint8 images as ints: no wrap-around)."""
    if isinstance(actual, torch.Tensor):
        return float((actual.double() - expected.double()).abs().max())
    return float(np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64)).max())


def report(label: str, observed: float, bound: float) -> None:
    """Append `label`'s observed difference and bound to the TOLERANCE_REPORT file, if set."""
    path = os.environ.get("TOLERANCE_REPORT")
    if path:
        threads = torch.get_num_threads()
        with open(path, "a", encoding="utf-8") as file:
            file.write(f"{label}\tthreads={threads}\tobserved={observed:.3g}\tbound={bound:.3g}\n")


def assert_within(
    actual, expected, bound: float, label: str, *, scale: float | None = None
) -> float:
    """max |actual - expected| <= bound, reported; with `scale` (the size of the values compared),
    also that the bound is below BUG_SIZE of it, so a real bug still fails. Returns the
    difference."""
    observed = max_difference(actual, expected)
    report(label, observed, bound)
    if scale is not None:
        assert bound < BUG_SIZE * scale, (
            f"{label}: bound {bound:.3g} too loose for scale {scale:.3g}"
        )
    assert observed <= bound, f"{label}: max |difference| {observed:.3g} > bound {bound:.3g}"
    return observed


def assert_levels_within(actual, expected, levels: int, label: str) -> float:
    """Two uint8 images at most `levels` apart anywhere (reported like `assert_within`)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype == np.uint8
    return assert_within(actual, expected, levels, label)
