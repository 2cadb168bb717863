"""What feature caching (DeepCache) saves per step: FLOPs counted, and seconds measured.

    python -m benchmarks.feature_cache [--size 512] [--time-size 256] [--repeats 3] [--device cpu]
    python -m benchmarks.feature_cache --tiny    # the same code on tiny models (make test)

SD1.5-size UNet and ControlNet (testkit/sd15_full_size.py's configs, random weights) for one
denoising step with CFG (batch 2) and one ControlNet:

- `flops`: counted with `torch.utils.flop_counter` on the meta device (no memory, no weights), for
  a full step (ControlNet + UNet, keeping the features) and a shallow one (the ControlNet's and the
  UNet's shallow branches on the kept features), at --size;
- `seconds`: both steps timed on --device with random weights at --time-size (fp16 on CUDA, fp32
  on CPU), median of --repeats after one warm-up;
- `speedup_bound`: for 20 steps and each interval N, full-step cost / average step cost, from the
  FLOPs (what a compute-bound GPU can gain at most) and from the measured seconds.

One JSON line per measurement. The images feature caching gives are checked in the tests; how fast
a whole request runs with it is `python -m benchmarks.generate`'s cache_eager / cache_fast phases.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from pipelines.speed import feature_cache  # noqa: E402
from testkit.sd15_full_size import CONTROLNET_CONFIG, UNET_CONFIG, materialise  # noqa: E402

STEPS = 20
INTERVALS = (2, 3, 4, 5)
TINY = {"block_out_channels": (32, 64), "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D")}


def build(device: torch.device, dtype: torch.dtype, tiny: bool):
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet_config, controlnet_config = dict(UNET_CONFIG), dict(CONTROLNET_CONFIG)
    if tiny:
        unet_config.update(TINY, up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
        unet_config.update(cross_attention_dim=32)
        controlnet_config.update(TINY, cross_attention_dim=32)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config)
        controlnet = ControlNetModel(**controlnet_config)
    if device.type != "meta":
        for seed, model in enumerate((unet, controlnet)):
            materialise(model, device, dtype, seed)
    return unet.eval(), controlnet.eval()


def step_inputs(unet, size: int, device, dtype):
    latent = size // 8
    generator = torch.Generator("cpu").manual_seed(0)

    def randn(*shape):
        if device.type == "meta":
            return torch.empty(*shape, device=device, dtype=dtype)
        return torch.randn(*shape, generator=generator).to(device, dtype)

    return (
        randn(2, 4, latent, latent),  # CFG: unconditional and conditional halves
        torch.tensor(601, device=device),
        randn(2, 77, unet.config.cross_attention_dim),
        randn(2, 3, size, size).sigmoid(),  # a control map in [0, 1]
    )


@torch.inference_mode()
def steps(unet, controlnet, inputs):
    """(full step, shallow step) as callables, the shallow one on the full step's features."""
    sample, timestep, embeds, control = inputs
    caching = feature_cache.caching_unet(unet)
    shallow_controlnet = feature_cache.shallow_controlnet(controlnet)
    count = feature_cache.shallow_count(unet)

    def full():
        down, middle = controlnet(
            sample,
            timestep,
            encoder_hidden_states=embeds,
            controlnet_cond=control,
            return_dict=False,
        )
        return caching(sample, timestep, embeds, list(down), middle)[1]

    features = full()

    def shallow():
        down = shallow_controlnet(sample, timestep, embeds, control, count)
        return caching(sample, timestep, embeds, down, cached=features)[0]

    return full, shallow


def count_flops(step) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        step()
    return counter.get_total_flops()


def seconds(step, repeats: int, device: torch.device) -> float:
    def timed() -> float:
        began = time.perf_counter()
        with torch.inference_mode():
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - began

    timed()  # warm-up
    return statistics.median(timed() for _ in range(repeats))


def speedup(full: float, shallow: float) -> dict[str, float]:
    """Full-step cost over the average step's, for STEPS steps at each interval."""
    bounds = {}
    for interval in INTERVALS:
        full_steps = sum(feature_cache.is_full_step(i, interval) for i in range(STEPS))
        total = full_steps * full + (STEPS - full_steps) * shallow
        bounds[str(interval)] = round(STEPS * full / total, 2)
    return bounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models (smoke test)")
    parser.add_argument("--size", type=int, default=512, help="image side for the FLOP count")
    parser.add_argument("--time-size", type=int, help="image side for timing (256; --tiny 64)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    size = 64 if args.tiny else args.size
    meta = torch.device("meta")
    unet, controlnet = build(meta, torch.float32, args.tiny)  # FLOPs do not depend on dtype
    full, shallow = steps(unet, controlnet, step_inputs(unet, size, meta, torch.float32))
    flops = {"full": count_flops(full), "shallow": count_flops(shallow)}
    print(
        json.dumps(
            {
                "measure": "flops",
                "size": size,
                "batch": 2,
                "full_gflop": round(flops["full"] / 1e9, 1),
                "shallow_gflop": round(flops["shallow"] / 1e9, 1),
                "shallow_share": round(flops["shallow"] / flops["full"], 3),
                "speedup_bound": speedup(flops["full"], flops["shallow"]),
            }
        ),
        flush=True,
    )

    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    time_size = args.time_size or (64 if args.tiny else 256)
    unet, controlnet = build(device, dtype, args.tiny)
    full, shallow = steps(unet, controlnet, step_inputs(unet, time_size, device, dtype))
    timed = {
        "full": seconds(full, args.repeats, device),
        "shallow": seconds(shallow, args.repeats, device),
    }
    print(
        json.dumps(
            {
                "measure": "seconds",
                "device": str(device),
                "dtype": str(dtype).removeprefix("torch."),
                "size": time_size,
                "batch": 2,
                "threads": torch.get_num_threads(),
                "full_s": round(timed["full"], 4),
                "shallow_s": round(timed["shallow"], 4),
                "shallow_share": round(timed["shallow"] / timed["full"], 3),
                "speedup_bound": speedup(timed["full"], timed["shallow"]),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
