"""Load test of the web app: concurrent gradio_client clients across the tabs, nothing lost.

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.load [--clients 4] [--requests 3]
        [--steps 2] [--url http://127.0.0.1:7860/] [--queue-size 20]
        [--serve ray --replicas 1 2]

Without --url it builds tiny random-weight models for every condition in a temporary MODELS_DIR
(no downloads: testkit/models_dir.py, the tests' own MODELS_DIR) and starts `python app.py` on
them on CPU.
Each client (one thread, one `Client`) sends --requests small requests (--steps steps, 256 px),
cycling through /canny, /scribble, /hed, /depth, /seg, /openpose (mediapipe pose) and /annotate.
Every request ends as exactly one of: completed (a well-formed result), rejected (Gradio's
"Queue is full" answer, when more are waiting than QUEUE_SIZE allows) or failed (anything else).
Prints one JSON line; `lost` counts requests with no outcome and must be 0.

`--serve ray --replicas 1 2` starts the app once per replica count with `SERVE=ray` (a local Ray
instance, CPU replicas of one thread each: Ray gives a one-CPU actor `OMP_NUM_THREADS=1`) and
prints a line for each: completed requests per minute and p50/p95 latency. Before timing, every
client sends one request of each kind, not counted, so that the replicas have loaded their models
(they load lazily, as the single engine does; Serve spreads these requests over the replicas, so a
replica that got no request of some kind still loads its model in the timed part). On a machine
with fewer cores than replicas the replicas share the cores: the ratio is bounded by the cores,
not by the app.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from gradio_client import Client, handle_file  # noqa: E402

from serving import SERVE_MODES  # noqa: E402 (no Ray imported: serving/remote.py does that)
from testkit.app_process import start_app, stop_app  # noqa: E402
from testkit.models_dir import build_tiny_models  # noqa: E402
from testkit.paths import ASSETS  # noqa: E402

# What gradio_client raises (QueueError) when the server answers that its queue is full.
QUEUE_FULL = "Queue is full"
FAST = {"steps": 2, "image_resolution": 256}
# (api_name, image, extra keywords); generate endpoints also get a prompt and FAST.
TABS: list[tuple[str, str, dict]] = [
    ("/canny", "coffee.jpg", {}),
    ("/scribble", "scribble_house.png", {}),
    ("/hed", "astronaut.png", {}),
    ("/depth", "chelsea.jpg", {}),
    ("/seg", "rocket.jpg", {}),
    ("/openpose", "astronaut.png", {"annotator": "mediapipe_pose"}),
    ("/annotate", "astronaut.png", {"annotator": "canny", "image_resolution": 256}),
]
MAX_EXAMPLES = 5  # error messages kept per outcome


@dataclass
class Tally:
    """Outcomes of all requests, filled by the client threads under one lock."""

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    rejected: int = 0
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def check_result(api_name: str, result) -> None:
    """Raise ValueError unless `result` is what the endpoint promises."""
    if api_name == "/annotate":  # (the map, the pose JSON of a pose annotator or None)
        if not (isinstance(result, (list, tuple)) and len(result) == 2):
            raise ValueError(f"{api_name}: expected (map, pose), got {result!r:.200}")
        if not (isinstance(result[0], str) and Path(result[0]).is_file()):
            raise ValueError(f"{api_name}: expected an image path, got {result[0]!r:.200}")
        return
    if not (isinstance(result, (list, tuple)) and len(result) == 2):
        raise ValueError(f"{api_name}: expected (gallery, seed), got {result!r:.200}")
    gallery, seed = result
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"{api_name}: seed is not an int: {seed!r}")
    if not (isinstance(gallery, list) and len(gallery) >= 2):
        raise ValueError(f"{api_name}: expected the map and >= 1 image, got {gallery!r:.200}")
    if gallery[0].get("caption") != "Control map":
        raise ValueError(f"{api_name}: first gallery item is not the control map: {gallery[0]}")
    if not all(Path(item["image"]).is_file() for item in gallery):
        raise ValueError(f"{api_name}: a gallery image is missing: {gallery!r:.200}")


def _request(client: Client, api_name: str, image: str, extra: dict, steps: int):
    """One call of `api_name`, small and fast."""
    fast = {**FAST, "steps": steps}
    keywords = dict(extra) if api_name == "/annotate" else {"prompt": "a photo", **fast, **extra}
    return client.predict(image=handle_file(ASSETS / image), api_name=api_name, **keywords)


def _client_thread(
    url: str, index: int, requests: int, tally: Tally, barrier: threading.Barrier, steps: int
) -> None:
    """One client: connect, wait for the others, then send `requests` requests in turn."""
    try:
        client = Client(url, verbose=False)
    except Exception as error:  # noqa: BLE001 - every request of this client fails
        client, connect_error = None, f"connect: {type(error).__name__}: {error}"
    barrier.wait()  # all clients start firing together
    for number in range(requests):
        # Client k takes the k-th run of `requests` tabs in turn: together they cover every tab.
        api_name, image, extra = TABS[(index * requests + number) % len(TABS)]
        with tally.lock:
            tally.submitted += 1
        started = time.perf_counter()
        outcome, message = "completed", ""
        try:
            if client is None:
                raise RuntimeError(connect_error)
            check_result(api_name, _request(client, api_name, image, extra, steps))
        except Exception as error:  # noqa: BLE001 - each is classified below
            message = f"{api_name}: {type(error).__name__}: {error}"
            outcome = "rejected" if QUEUE_FULL in str(error) else "failed"
        elapsed = time.perf_counter() - started
        with tally.lock:
            if outcome == "completed":
                tally.completed += 1
                tally.latencies.append(elapsed)
            elif outcome == "rejected":
                tally.rejected += 1
                if len(tally.rejections) < MAX_EXAMPLES:
                    tally.rejections.append(message)
            else:
                tally.failed += 1
                if len(tally.failures) < MAX_EXAMPLES:
                    tally.failures.append(message)


def run_load(
    url: str, clients: int = 4, requests_per_client: int = 3, steps: int = FAST["steps"]
) -> dict:
    """Drive `clients` concurrent clients x `requests_per_client` requests at `url`; the record."""
    tally = Tally()
    barrier = threading.Barrier(clients)
    threads = [
        threading.Thread(
            target=_client_thread, args=(url, index, requests_per_client, tally, barrier, steps)
        )
        for index in range(clients)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    latencies = sorted(tally.latencies)

    def percentile(fraction: float) -> float:
        if not latencies:
            return 0.0
        return round(latencies[min(len(latencies) - 1, int(fraction * len(latencies)))], 3)

    return {
        "benchmark": "load",
        "clients": clients,
        "requests_per_client": requests_per_client,
        "submitted": tally.submitted,
        "completed": tally.completed,
        "failed": tally.failed,
        "rejected": tally.rejected,
        "lost": tally.submitted - tally.completed - tally.failed - tally.rejected,
        "failure_examples": tally.failures,
        "rejection_examples": tally.rejections,
        "latency_p50_s": round(statistics.median(latencies), 3) if latencies else 0.0,
        "latency_p95_s": percentile(0.95),
        "latency_max_s": round(latencies[-1], 3) if latencies else 0.0,
        "wall_s": round(wall, 3),
        "throughput_per_s": round(tally.completed / wall, 3) if wall else 0.0,
        "requests_per_min": round(60 * tally.completed / wall, 2) if wall else 0.0,
    }


def serve_load(
    models_dir: Path,
    folder: Path,
    replica_counts: list[int],
    clients: int,
    requests_per_client: int,
    steps: int = FAST["steps"],
    queue_size: int | None = None,
    mode: str = SERVE_MODES[0],
) -> list[dict]:
    """The same load on the app with SERVE=`mode` and each of `replica_counts` replicas, one app
    (and, for Ray, one local Ray instance) at a time; a record per count."""
    records = []
    for replicas in replica_counts:
        log_path = folder / f"app-{mode}-{replicas}.log"
        env = {"SERVE": mode, "SERVE_REPLICAS": str(replicas)}
        url, process = start_app(models_dir, log_path, queue_size, timeout=300, extra_env=env)
        try:
            warm = run_load(url, clients, len(TABS), steps)  # each replica loads its models
            record = run_load(url, clients, requests_per_client, steps)
        finally:
            stop_app(process)
        record.update(serve=mode, replicas=replicas, steps=steps)
        record.update(warm_up_failed=warm["failed"], warm_up_failures=warm["failure_examples"])
        records.append(record)
        if record["failed"] or record["lost"] or warm["failed"]:
            print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--requests", type=int, default=3, help="requests per client (default 3)")
    parser.add_argument("--url", help="a running app; default: start one on tiny models")
    parser.add_argument("--queue-size", type=int, help="QUEUE_SIZE of the app this starts")
    parser.add_argument("--steps", type=int, default=FAST["steps"], help="denoising steps")
    parser.add_argument("--serve", choices=SERVE_MODES, help="start the app with SERVE=...")
    parser.add_argument(
        "--replicas", type=int, nargs="+", default=[1, 2], help="with --serve: replica counts"
    )
    args = parser.parse_args()

    if args.url:
        print(json.dumps(run_load(args.url, args.clients, args.requests, args.steps)))
        return
    with tempfile.TemporaryDirectory() as folder:
        models_dir = build_tiny_models(Path(folder) / "models")
        if args.serve:
            for record in serve_load(
                models_dir,
                Path(folder),
                args.replicas,
                args.clients,
                args.requests,
                args.steps,
                args.queue_size,
                args.serve,
            ):
                print(json.dumps(record), flush=True)
            return
        log_path = Path(folder) / "app.log"
        url, process = start_app(models_dir, log_path, args.queue_size)
        try:
            record = run_load(url, args.clients, args.requests, args.steps)
        finally:
            stop_app(process)
        record["queue_size"] = args.queue_size
        print(json.dumps(record))
        if record["failed"] or record["lost"]:
            print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)


if __name__ == "__main__":
    main()
