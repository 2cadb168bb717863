"""The timing harness of the generation benchmark: one run's settings (`Config`), its JSON lines
(`Run`), timing a configuration's calls with its peak GPU memory (`measure`), and comparing its
images with reference ones (`compare`).

Every record is printed as one JSON line as soon as it is measured, so that a run cut short (a
deadline, a lost device) still leaves what it measured.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

GIB = 2**30


@dataclass
class Config:
    device: torch.device
    size: int
    steps: int
    repeats: int
    warmup: int | None  # None: 1 eager, 2 compiled (compile, then record the CUDA graphs)
    budget_s: float
    deadline: float | None  # perf_counter() time after which no phase starts
    compile: bool
    compile_vae: bool
    tolerance: float
    guidance: float = 7.5
    backend: str = "inductor"  # "eager": check the compile flow (fullgraph capture) on a CPU
    compile_mode: str = "reduce-overhead"  # the engine's (COMPILE_MODE); stock keeps this one
    seed: int = 1234

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def warmups(self, compiled: bool) -> int:
        if self.warmup is not None:
            return self.warmup
        return 2 if compiled else 1


@dataclass
class Run:
    """The records printed so far, sorted by what they say (measured, failed, skipped)."""

    records: dict[str, dict] = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    def emit(self, record: dict) -> None:
        print(json.dumps(record, default=str), flush=True)
        if "error" in record:
            self.errors.append(record)
        elif "skipped" in record:
            self.skipped.append(record["phase"])
        elif "phase" in record:
            self.records[record["phase"]] = record


def free(device: torch.device) -> None:
    """Collect garbage and, on a GPU, hand its cached blocks back (memory is measured after)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def reset_compiled() -> None:
    """Drop compiled code and CUDA-graph pools (after a group's models are gone)."""
    torch._dynamo.reset()
    try:
        from torch._inductor.cudagraph_trees import reset_cudagraph_trees

        reset_cudagraph_trees()
    except Exception:  # noqa: BLE001 (best effort: only memory is at stake)
        pass


def memory_now(cfg: Config) -> tuple[int, int]:
    """(allocated, reserved) bytes on the GPU, after returning unused cached blocks."""
    if not cfg.cuda:
        return 0, 0
    free(cfg.device)
    return torch.cuda.memory_allocated(cfg.device), torch.cuda.memory_reserved(cfg.device)


def weight_bytes(*modules: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def measure(
    name: str,
    call: Callable[[], np.ndarray],
    *,
    cfg: Config,
    batch: int,
    compiled: bool,
    resident: int = 0,
    start: tuple[int, int] | None = None,
) -> tuple[dict, np.ndarray]:
    """Warm up, then time up to cfg.repeats calls (fewer when the budget runs out).

    Peak memory is this configuration's own, though other models share the GPU: `resident` bytes
    (its weights) plus what the timed calls took above `start` (`memory_now()`, by default taken
    now, before the warm-up). `peak_gib` is the allocator's most allocated; `peak_reserved_gib`
    its most reserved, which also holds the CUDA-graph pools recorded during the warm-up (their
    replays allocate nothing, so only reserved memory shows them): the target is checked on it.
    """
    began_phase = time.perf_counter()
    start = memory_now(cfg) if start is None else start
    limit = began_phase + cfg.budget_s
    if cfg.deadline is not None:
        limit = min(limit, cfg.deadline)
    warm_times = []
    for _ in range(cfg.warmups(compiled)):
        began = time.perf_counter()
        images = call()
        warm_times.append(time.perf_counter() - began)
    if cfg.cuda:
        torch.cuda.synchronize(cfg.device)
        torch.cuda.reset_peak_memory_stats(cfg.device)
    times = []
    for _ in range(cfg.repeats):
        if times and time.perf_counter() > limit:
            break
        began = time.perf_counter()
        images = call()
        times.append(time.perf_counter() - began)
    median = statistics.median(times)
    record = {
        "phase": name,
        "batch": batch,
        "seconds_per_image": round(median / batch, 4),
        "min": round(min(times) / batch, 4),
        "seconds_per_call": round(median, 4),
        "repeats": len(times),
        "warmup_s": round(sum(warm_times), 2),
        "compile_s": round(max(0.0, sum(warm_times) - len(warm_times) * median), 2)
        if compiled
        else 0.0,
        "compiled": compiled,
        "peak_gib": None,
        "peak_reserved_gib": None,
        "weights_gib": round(resident / GIB, 3),
        "phase_s": round(time.perf_counter() - began_phase, 1),
    }
    if cfg.cuda:
        added = torch.cuda.max_memory_allocated(cfg.device) - start[0]
        held = torch.cuda.max_memory_reserved(cfg.device) - start[1]
        record["peak_gib"] = round((resident + max(0, added)) / GIB, 3)
        record["peak_reserved_gib"] = round((resident + max(0, held)) / GIB, 3)
    return record, images


def compare(images: np.ndarray, reference: np.ndarray | None, tolerance: float) -> dict:
    """Differences in uint8 levels; `matches_eager` when the mean is within `tolerance`."""
    if reference is None:
        return {"matches_eager": None}
    if images.shape != reference.shape:
        return {"matches_eager": False, "shape": [list(images.shape), list(reference.shape)]}
    difference = np.abs(images.astype(np.int16) - reference.astype(np.int16))
    mean = float(difference.mean())
    return {
        "max_abs_diff": int(difference.max()),
        "mean_abs_diff": round(mean, 4),
        "matches_eager": mean <= tolerance,
    }


def time_in_turns(
    call: Callable[[dict], object],
    cases: dict[str, dict],
    repeats: int,
    counted: torch.nn.Module,
) -> dict[str, dict]:
    """Median and min seconds of `call(options)` for each case's options, and how many times the
    module `counted` ran in one call (a forward hook). One warm-up call per case; then the cases
    take turns in every round, so a slow spell of a shared machine lands on all of them rather
    than on one."""
    calls: list[int] = []
    handle = counted.register_forward_hook(lambda *args: calls.append(1))
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    runs: dict[str, int] = {}
    try:
        for options in cases.values():
            call(options)
        for _ in range(repeats):
            for name, options in cases.items():
                calls.clear()
                started = time.perf_counter()
                call(options)
                seconds[name].append(time.perf_counter() - started)
                runs[name] = len(calls)
    finally:
        handle.remove()
    return {
        name: {
            "median_s": round(statistics.median(values), 4),
            "min_s": round(min(values), 4),
            "calls": runs[name],
        }
        for name, values in seconds.items()
    }
