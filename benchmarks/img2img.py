"""What image to image costs against generating from noise.

    python -m benchmarks.img2img [--device cpu] [--size 256] [--steps 10] [--repeats 3]
    python -m benchmarks.img2img --tiny      # smoke test on tiny models

Builds SD1.5-size models with random weights (testkit/sd15_full_size.py: the same FLOPs as the
real checkpoints, no download) into a temporary MODELS_DIR and times the app's Engine through its
public `generate` on the same photo and seed: from noise (denoising strength 1), image to image at
strengths 0.75 and 0.5, and inpainting at 0.5 with a mask over the middle. Image to image runs
only the last `int(steps * strength)` steps (plus one VAE encode), so at 0.5 it should take about
half as long. Prints one JSON line per case (median and min seconds per image over --repeats, the
UNet calls counted with a forward hook) and a summary with each case's time against from-noise.
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
from testkit.paths import ASSETS
from testkit.sd15_full_size import build_full_models


def cases(size: int) -> dict[str, dict]:
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    return {
        "from_noise": {},
        "img2img_0.75": {"denoising_strength": 0.75},
        "img2img_0.5": {"denoising_strength": 0.5},
        "inpaint_0.5": {"denoising_strength": 0.5, "mask": mask},
    }


def time_cases(engine, image, base: dict, repeats: int, size: int) -> dict[str, dict]:
    results = time_in_turns(
        lambda options: engine.generate("canny", image, "a house", **base, **options),
        cases(size),
        repeats,
        engine.base_pipeline().unet,
    )
    return {
        name: {"median_s": r["median_s"], "min_s": r["min_s"], "unet_calls": r["calls"]}
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

    with tempfile.TemporaryDirectory() as folder:
        models_dir = Path(folder)
        if args.tiny:
            started = time.perf_counter()
            build_tiny_canny(models_dir)
            built = {"build_s": round(time.perf_counter() - started, 2)}
        else:
            built = build_full_models(models_dir, torch.device(args.device))
        engine = Engine(Settings(models_dir=models_dir), device=args.device)
        from PIL import Image

        photo = Image.open(ASSETS / "astronaut.png").convert("RGB").resize((args.size,) * 2)
        image = np.asarray(photo)
        base = {
            "annotator": "none",
            "image_resolution": args.size,
            "steps": args.steps,
            "seed": 1,
            "scheduler": "UniPC",
        }
        results = time_cases(engine, image, base, args.repeats, args.size)
        for name, result in results.items():
            print(json.dumps({"case": name, **result}), flush=True)

    noise = results["from_noise"]["median_s"]
    summary = {
        "summary": "img2img",
        "models": "tiny" if args.tiny else "SD1.5-size, random weights",
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "size": args.size,
        "steps": args.steps,
        "build": built,
        "time_vs_from_noise": {
            name: round(result["median_s"] / noise, 3) for name, result in results.items()
        },
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
