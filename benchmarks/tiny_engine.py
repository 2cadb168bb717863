"""CPU timing of the engine on tiny models: a regression check of the engine's overhead.

    python -m benchmarks.tiny_engine [--steps 20] [--resolution 512] [--repeats 5]

Builds tiny SD1.5 + ControlNet models in a temporary MODELS_DIR (no downloads), then prints one
JSON line per control mode: median seconds per call. Real-size speed is
`python -m benchmarks.generate`, measured on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from settings import Settings  # noqa: E402
from testkit.paths import ASSETS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from pipelines.engine import Engine
    from testkit.models_dir import build_tiny_canny

    image = np.asarray(Image.open(ASSETS / "astronaut.png").convert("RGB"))
    with tempfile.TemporaryDirectory() as folder:
        models_dir = build_tiny_canny(Path(folder))
        engine = Engine(Settings(models_dir=models_dir), device="cpu")
        options = {"steps": args.steps, "image_resolution": args.resolution, "seed": 0}
        started = time.perf_counter()
        engine.generate("canny", image, "warm-up", **options)
        warm_up = time.perf_counter() - started
        for mode in ("balanced", "prompt", "controlnet"):
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                engine.generate("canny", image, "a photo", control_mode=mode, **options)
                times.append(time.perf_counter() - started)
            record = {
                "benchmark": "tiny_engine_cpu",
                "mode": mode,
                "steps": args.steps,
                "resolution": args.resolution,
                "seconds_median": round(statistics.median(times), 4),
                "warm_up_seconds": round(warm_up, 3),
            }
            print(json.dumps(record))


if __name__ == "__main__":
    main()
