"""The image benchmarks' smoke runs (`--tiny`): image to image runs only its share of the steps
(the UNet calls it counts are the schedule's, whatever the timings), and the upscale reports its
tiles and its peak memory."""

from __future__ import annotations

import json
import subprocess
import sys

from testkit.paths import PROJECT_ROOT


def test_the_img2img_benchmark_counts_the_steps_each_case_runs():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.img2img", "--tiny"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    cases = {line["case"]: line for line in lines if "case" in line}
    steps = 4  # --tiny; with CFG each step is one UNet call on a batch of two
    assert cases["from_noise"]["unet_calls"] == steps
    assert cases["img2img_0.75"]["unet_calls"] == int(steps * 0.75)
    assert cases["img2img_0.5"]["unet_calls"] == cases["inpaint_0.5"]["unet_calls"] == steps // 2
    summary = lines[-1]
    assert summary["summary"] == "img2img" and summary["time_vs_from_noise"]["from_noise"] == 1.0


def test_the_upscale_benchmark_reports_its_tiles_and_peak_memory():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.upscale", "--tiny"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    # --tiny: 256 px enlarged twice to 512, tiles of 256 overlapping by 64: 3 x 3 of them.
    assert summary["result"] == "512x512" and summary["tiles"] == 9
    assert summary["steps_run"] == 9 * int(2 * 0.5)
    assert summary["peak_rss_mib"] >= summary["peak_rss_after_loading_mib"] > 0
