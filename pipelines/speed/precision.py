"""The models' compute precision: fp16 on CUDA; on a CPU, bfloat16 where the CPU runs it natively.

CPUs with AMX or AVX512-BF16 (such as Intel Sapphire Rapids Xeons) run bfloat16 matmuls and
convolutions through oneDNN natively, several times faster than float32 for SD1.5's UNet (the
README has the numbers). CPUs without those instructions may only emulate bfloat16, at a loss.

So `auto` times a convolution and a matmul shaped like the UNet's in both precisions, and takes
bfloat16 only when it is clearly faster. The images then differ from float32's by rounding, as
fp16's do on a GPU. `float32` keeps the reference numbers, and so does any CPU where bfloat16 is
not faster.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
REQUIRED_GAIN = 1.3  # bfloat16 must be this much faster to be worth its rounding


@dataclass(frozen=True)
class Precision:
    dtype: torch.dtype
    reason: str = ""  # why this one, shown on the page

    def __str__(self) -> str:
        name = str(self.dtype).removeprefix("torch.")
        return f"{name}, {self.reason}" if self.reason else name


def choose_precision(device: torch.device, cpu_precision: str = "float32") -> Precision:
    if device.type == "cuda":
        return Precision(torch.float16)
    if device.type != "cpu":
        return Precision(torch.float32)
    if cpu_precision != "auto":
        return Precision(DTYPES[cpu_precision], "set by CPU_PRECISION")
    timings = time_cpu_precisions()
    gain = timings["float32"] / timings["bfloat16"]
    logger.info("CPU precision probe (ms): %s", timings)
    if gain >= REQUIRED_GAIN:
        return Precision(torch.bfloat16, f"measured {gain:.1f}x faster than float32")
    return Precision(torch.float32, f"bfloat16 measured only {gain:.1f}x as fast")


@functools.lru_cache(maxsize=1)
def time_cpu_precisions(repeats: int = 3) -> dict[str, float]:
    """Milliseconds, best of `repeats`, of one 3x3 convolution and one projection as the UNet's
    first level has them at 512 px (320 channels, 64 x 64 latents; 4096 tokens, 320 -> 1280)."""
    generator = torch.Generator().manual_seed(0)
    feature_map = torch.randn(1, 320, 64, 64, generator=generator)
    kernel = torch.randn(320, 320, 3, 3, generator=generator) * 0.02
    tokens = torch.randn(4096, 320, generator=generator)
    weight = torch.randn(1280, 320, generator=generator) * 0.05
    timings = {}
    with torch.inference_mode():
        for name, dtype in DTYPES.items():
            inputs = [tensor.to(dtype) for tensor in (feature_map, kernel, tokens, weight)]
            best = float("inf")
            for _ in range(repeats + 1):  # the first run is a warm-up
                began = time.perf_counter()
                torch.nn.functional.conv2d(inputs[0], inputs[1], padding=1)
                torch.nn.functional.linear(inputs[2], inputs[3])
                best = min(best, time.perf_counter() - began)
            timings[name] = round(best * 1000, 2)
    return timings
