"""What an upscale costs: seconds and peak memory for a result of --size x --size.

    python -m benchmarks.upscale [--device cpu] [--size 2048] [--tile 512] [--steps 2]
    python -m benchmarks.upscale --tiny      # smoke test on tiny models

Builds SD1.5-size models with random weights (testkit/sd15_full_size.py: the base and the tile
ControlNet, the real checkpoints' shapes and FLOPs, nothing downloaded) into a temporary
MODELS_DIR, then upscales a photo of --size / --factor pixels by --factor through the Engine's
public `upscale` in a fresh process, so the peak it reports is the upscale's own (the model build
is not in it): the process's peak resident memory (`ru_maxrss`) after loading the models and
after the upscale, and on a GPU `torch.cuda.max_memory_allocated`. Memory is set by the tile, not
the steps: --steps 2 at strength 0.5 (one step per tile) measures the same peak as a long run, and
--tiles N runs only the first N tiles into the whole result's blend buffers (the peak is reached
in the first tile; the others repeat its work at its size).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1024  # ru_maxrss is in KiB on Linux


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MIB, 1)


def run_upscale(args) -> dict:
    """In this process: load the engine, warm it on one tile, upscale, report time and peaks."""
    import numpy as np
    import torch
    from PIL import Image

    from pipelines.engine import Engine
    from pipelines.upscale import TileBlender, UpscaleRequest
    from settings import Settings
    from testkit.paths import ASSETS

    source_side = round(args.size / args.factor)
    photo = Image.open(ASSETS / "astronaut.png").convert("RGB").resize((source_side,) * 2)
    engine = Engine(Settings(models_dir=Path(args.models_dir)), device=args.device)
    options = {
        "factor": args.factor,
        "tile_size": args.tile,
        "tile_overlap": args.overlap,
        "steps": args.steps,
        "denoising_strength": args.strength,
        "seed": 1,
    }
    engine.base_pipeline()
    engine.controlnet("tile")
    loaded = peak_rss_mib()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    request = UpscaleRequest.build(engine.settings, np.asarray(photo), "a photo", **options)
    if args.tiles:  # the first tiles only, blended into the whole result's buffers
        blender = TileBlender(request.size, request.tile_overlap)
        for box, tile in list(zip(request.boxes, request.tiles, strict=True))[: args.tiles]:
            blender.add(box, engine.run(tile).images[0])
        tiles_run = min(args.tiles, len(request.tiles))
        steps_run = sum(tile.steps_run for tile in request.tiles[:tiles_run])
    else:
        result = engine.run_upscale(request)
        tiles_run, steps_run = len(request.tiles), result.parameters[0]["steps_run"]
    seconds = time.perf_counter() - started
    height, width = request.size
    record = {
        "summary": "upscale",
        "models": "tiny" if args.tiny else "SD1.5-size, random weights",
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "source": f"{source_side}x{source_side}",
        "result": f"{width}x{height}",
        "tiles": len(request.tiles),
        "tiles_run": tiles_run,
        "tile_size": args.tile,
        "steps_run": steps_run,
        "seconds": round(seconds, 2),
        "peak_rss_after_loading_mib": loaded,
        "peak_rss_mib": peak_rss_mib(),
    }
    if args.device.startswith("cuda"):
        record["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models on CPU (a smoke test)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=2048, help="the result's side")
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument(
        "--tiles",
        type=int,
        default=0,
        help="run only the first N tiles (0: all): every tile "
        "is the same work at the same size, so the peak is reached in the first",
    )
    parser.add_argument("--models-dir", help=argparse.SUPPRESS)  # the measuring process's
    args = parser.parse_args(argv)
    if args.tiny:
        args.size, args.tile, args.steps = 512, 256, 2
    if args.models_dir:
        print(json.dumps(run_upscale(args)), flush=True)
        return 0

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        if args.tiny:
            from settings import DEFAULT_MODEL_IDS
            from testkit.tiny_models import build_models_dir

            build_models_dir(Path(folder), [DEFAULT_MODEL_IDS["tile"]])
        else:
            import torch

            from testkit.sd15_full_size import build_full_models

            build_full_models(Path(folder), torch.device(args.device), control_role="tile")
        built_s = round(time.perf_counter() - started, 1)
        given = sys.argv[1:] if argv is None else argv
        result = subprocess.run(
            [sys.executable, "-m", "benchmarks.upscale", *given, "--models-dir", folder],
            capture_output=True,
            text=True,
        )
    if result.returncode != 0:
        print(result.stderr[-3000:], file=sys.stderr)
        return result.returncode
    record = json.loads(result.stdout.strip().splitlines()[-1])
    print(json.dumps({**record, "build_s": built_s}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
