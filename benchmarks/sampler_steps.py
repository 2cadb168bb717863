"""What planned sampler steps save: a denoising loop with diffusers' own steps against the plan's.

    python -m benchmarks.sampler_steps [--device cuda] [--size 64] [--steps 20] [--model-ms 6]
    python -m benchmarks.sampler_steps --tiny    # the same code, small and quick (make test)

A stand-in model keeps the device busy for about --model-ms per step, as the UNet would: large
fp16 matmuls on CUDA, nothing on the CPU. What counts is whether the host can queue the next step
while the device works. diffusers' UniPC copies scalars to the device at every step, and each copy
waits for the queue to drain; Euler a draws its noise on the CPU and copies it over at every step.
The plan (pipelines/loop/step_plan.py) is one matrix-vector product per step, with no copy.

One JSON line per sampler:
- `ops_per_step`: aten ops the sampler dispatches per step (its setup spread over the steps);
- `host_transfers_per_step`: copies from the host and reads of device values, the same way
  (CUDA only, where they make the stream wait);
- `seconds_per_run`: median over --repeats of a whole loop: the model alone (`model_only`), with
  the sampler's own steps (`own_steps`), with the plan (`planned`);
- `max_abs_diff`: between the two loops' final latents, and `latents_max_abs`: their size (what
  float32 rounding is relative to).
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pipelines.loop import step_plan
from pipelines.loop.schedulers import make_scheduler
from testkit.host_transfers import HostTransfers
from testkit.tiny_models import SD15_SCHEDULER  # runwayml/stable-diffusion-v1-5's

SAMPLERS = ("UniPC", "DPM++ 2M Karras", "DDIM", "Euler a")  # Euler a: noise at every step


class OpCount(TorchDispatchMode):
    """Counts every aten op dispatched: what a sampler's step costs the host."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def stand_in_model(device: torch.device, model_ms: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """A model whose output depends on its input, and that keeps a CUDA device busy for about
    `model_ms` per call (on one stream, what follows waits for it)."""
    if device.type != "cuda" or model_ms <= 0:
        return lambda sample: torch.tanh(sample) * 0.8
    matrix = torch.randn(8192, 8192, device=device, dtype=torch.float16)
    matrix @ matrix  # warm-up: cuBLAS picks its kernel
    torch.cuda.synchronize(device)
    began = time.perf_counter()
    for _ in range(5):
        matrix @ matrix
    torch.cuda.synchronize(device)
    repeats = max(1, round(model_ms / ((time.perf_counter() - began) / 5 * 1000)))

    def model(sample: torch.Tensor) -> torch.Tensor:
        for _ in range(repeats):
            matrix @ matrix
        return torch.tanh(sample) * 0.8

    return model


def _generators() -> list[torch.Generator]:
    return [torch.Generator().manual_seed(7)]  # on the CPU, one per image, as the engine's


def own_steps(name: str, steps: int, start: torch.Tensor, model) -> torch.Tensor:
    scheduler = make_scheduler(name, SD15_SCHEDULER)
    scheduler.set_timesteps(steps, device=start.device)
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    options = {"generator": _generators()} if takes_generator else {}
    sample = start * scheduler.init_noise_sigma
    for timestep in scheduler.timesteps:
        output = model(scheduler.scale_model_input(sample, timestep))
        sample = scheduler.step(output, timestep, sample, **options, return_dict=False)[0]
    return sample


def planned(name: str, steps: int, start: torch.Tensor, model) -> torch.Tensor:
    scheduler = make_scheduler(name, SD15_SCHEDULER)
    scheduler.set_timesteps(steps, device=start.device)
    plan = step_plan.plan_for(scheduler, steps)
    start = start * scheduler.init_noise_sigma
    trajectory = step_plan.Trajectory(plan, start, _generators())
    sample = start
    for index in range(steps):
        sample = trajectory.step(index, model(trajectory.model_input(index, sample)))
    return sample


def model_only(name: str, steps: int, start: torch.Tensor, model) -> torch.Tensor:
    sample = start
    for _ in range(steps):
        sample = model(sample)
    return sample


def seconds(run: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        sync()
        began = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - began)
    return round(statistics.median(times[1:]), 5)


def count(mode_class, run: Callable[[], torch.Tensor]) -> int:
    with mode_class() as mode:
        run()
    return mode.count


def measure(name: str, args, device: torch.device, model) -> dict:
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(1, 4, args.size, args.size, generator=generator).to(device, dtype)
    step_plan.plan_for(make_scheduler(name, SD15_SCHEDULER), args.steps)  # made once, cached
    quiet = stand_in_model(torch.device("cpu"), 0)  # for counting: no busy work
    loops = {"model_only": model_only, "own_steps": own_steps, "planned": planned}

    def run(key: str, stand_in) -> Callable[[], torch.Tensor]:
        return lambda: loops[key](name, args.steps, start, stand_in)

    record: dict = {"sampler": name, "steps": args.steps, "latent_size": args.size}
    with torch.inference_mode():
        # Per step, the loop's setup included; the stand-in model's own ops taken off.
        model_ops = count(OpCount, run("model_only", quiet))
        record["ops_per_step"] = {
            key: round((count(OpCount, run(key, quiet)) - model_ops) / args.steps, 2)
            for key in ("own_steps", "planned")
        }
        if device.type == "cuda":
            record["host_transfers_per_step"] = {
                key: round(count(HostTransfers, run(key, quiet)) / args.steps, 2)
                for key in ("own_steps", "planned")
            }
        record["seconds_per_run"] = {
            key: seconds(run(key, model), device, args.repeats) for key in loops
        }
        theirs, mine = run("own_steps", quiet)().float(), run("planned", quiet)().float()
    record["max_abs_diff"] = float((theirs - mine).abs().max())
    record["latents_max_abs"] = float(theirs.abs().max())
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=64, help="latent side (64: a 512 px image)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--model-ms", type=float, default=6.0, help="stand-in model, CUDA only")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="size 8, 6 steps, 2 repeats")
    args = parser.parse_args(argv)
    if args.tiny:
        args.size, args.steps, args.repeats = 8, 6, 2
    device = torch.device(args.device)
    model = stand_in_model(device, args.model_ms)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(json.dumps({"phase": "setup", "device": name, "torch": torch.__version__}), flush=True)
    for sampler in SAMPLERS:
        print(json.dumps(measure(sampler, args, device, model)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
