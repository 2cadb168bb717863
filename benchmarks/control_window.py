"""What skipping the ControlNet outside its control window saves.

    python -m benchmarks.control_window [--device cpu] [--size 256] [--steps 10] [--repeats 3]
    python -m benchmarks.control_window --tiny      # smoke test on tiny models

Builds SD1.5-size models with random weights (testkit/sd15_full_size.py: same FLOPs as the
real checkpoints, no download) into a temporary MODELS_DIR, then times the app's Engine through
its public `generate` at the same seed with the control window [start, end] set to the full run,
half of it, a quarter, and nothing (start = end = 0), plus strength 0. Prints one JSON line per
window (median and min seconds per call over --repeats after a warm-up, the ControlNet calls
counted with a forward hook) and a summary: the ControlNet's cost per step, and the time saved per
call against the full window.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.timing import time_in_turns
from pipelines.engine import Engine
from settings import Settings
from testkit.models_dir import build_tiny_canny
from testkit.sd15_full_size import build_full_models

WINDOWS = {  # name -> generate options
    "full": {"control_start": 0.0, "control_end": 1.0},
    "first_half": {"control_start": 0.0, "control_end": 0.5},
    "first_quarter": {"control_start": 0.0, "control_end": 0.25},
    "none": {"control_start": 0.0, "control_end": 0.0},
    "strength_0": {"strength": 0.0},
}


def time_windows(engine, image, base: dict, repeats: int, steps: int) -> dict[str, dict]:
    results = time_in_turns(
        lambda options: engine.generate("canny", image, "a house", **base, **options),
        WINDOWS,
        repeats,
        engine.controlnet("canny"),
    )
    return {
        name: {
            "median_s": r["median_s"],
            "min_s": r["min_s"],
            "controlnet_calls_per_run": r["calls"],
            "steps": steps,
        }
        for name, r in results.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models on CPU (a smoke test)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=256, help="image resolution (short side)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.tiny:
        args.size, args.steps, args.repeats = 256, 4, 2

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        models_dir = Path(folder)
        if args.tiny:
            started = time.perf_counter()
            build_tiny_canny(models_dir)
            built = {"build_s": time.perf_counter() - started}
        else:
            built = build_full_models(models_dir, device)
        engine = Engine(Settings(models_dir=models_dir), device=args.device)
        rng = np.random.default_rng(0)
        image = (rng.random((args.size, args.size, 3)) > 0.9).astype(np.uint8) * 255
        base = {
            "annotator": "none",
            "image_resolution": args.size,
            "steps": args.steps,
            "seed": 1,
            "scheduler": "UniPC",
        }
        results = time_windows(engine, image, base, args.repeats, args.steps)
        for name, window in WINDOWS.items():
            print(json.dumps({"window": name, **window, **results[name]}), flush=True)

    full, none = results["full"]["median_s"], results["none"]["median_s"]
    summary = {
        "summary": "control_window",
        "models": "tiny" if args.tiny else "SD1.5-size, random weights",
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "size": args.size,
        "steps": args.steps,
        "build": built,
        "controlnet_s_per_step": round((full - none) / args.steps, 4),
        "controlnet_share_of_full_run": round((full - none) / full, 3),
        "saved_s": {name: round(full - r["median_s"], 4) for name, r in results.items()},
        "saved_fraction": {
            name: round((full - r["median_s"]) / full, 3) for name, r in results.items()
        },
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
