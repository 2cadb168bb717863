"""The real app with SERVE=ray: a local Ray instance, two CPU replicas, driven by gradio_client.

Both apps here run their engines with one thread (`OMP_NUM_THREADS=1`, what Ray gives a replica of
one CPU anyway), so the single-engine server and the replicas do the same arithmetic and the same
requests must give the same pixels. Ray's log lines name the replica's process (`pid=...`); its
log deduplication is off so that every request's line is kept.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest
import webuiapi
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import Status
from PIL import Image

from serving import WORKER_RESTARTED
from testkit.app_process import start_app, stop_app
from testkit.paths import ASSETS

ONE_THREAD = {"DEFAULT_IMAGE_RESOLUTION": "256", "OMP_NUM_THREADS": "1"}
TWO_REPLICAS = {"SERVE": "ray", "SERVE_REPLICAS": "2", "RAY_DEDUP_LOGS": "0", **ONE_THREAD}
FAST = {"prompt": "a photo", "steps": 2, "image_resolution": 256}
# (api_name, image, keywords): what several clients send at once, each with its own seed.
REQUESTS = [
    ("/canny", "coffee.jpg", {**FAST, "seed": 1, "num_images": 2}),
    ("/scribble", "scribble_house.png", {**FAST, "seed": 2}),
    ("/depth", "chelsea.jpg", {**FAST, "seed": 3, "control_mode": "prompt"}),
    ("/openpose", "astronaut.png", {**FAST, "seed": 4, "annotator": "mediapipe_pose"}),
    ("/canny", "astronaut.png", {**FAST, "seed": 5, "scheduler": "Euler a"}),
    ("/annotate", "rocket.jpg", {"annotator": "canny", "image_resolution": 256}),
]
SLOW = {**FAST, "steps": 40}  # long enough to be caught mid-run on any machine
REPLICA_LINE = re.compile(r"\(ServeReplica:controlnet:controlnet pid=(\d+)\).* CALL stream OK")


class App:
    def __init__(self, url: str, process, log):
        self.url, self.process, self.log = url, process, log

    def replica_pids(self) -> list[int]:
        """The replicas' worker processes (Ray names them `ray::ServeReplica:...`)."""
        pids = []
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                if child.name().startswith("ray::ServeReplica"):
                    pids.append(child.pid)
            except psutil.NoSuchProcess:
                continue
        return sorted(pids)

    def pids_that_served(self) -> set[int]:
        return {int(pid) for pid in REPLICA_LINE.findall(self.log.read_text(errors="replace"))}


def _start(models_dir, tmp_path_factory, name: str, env: dict[str, str]):
    log = tmp_path_factory.mktemp(name) / "app.log"
    try:
        url, process = start_app(models_dir, log, timeout=300, extra_env=env)
    except RuntimeError as error:
        pytest.fail(str(error))
    return App(url, process, log)


@pytest.fixture(scope="module")
def one_engine(models_dir, tmp_path_factory):
    app = _start(models_dir, tmp_path_factory, "one_engine", ONE_THREAD)
    yield app
    stop_app(app.process)


@pytest.fixture(scope="module")
def replicas(models_dir, tmp_path_factory):
    app = _start(models_dir, tmp_path_factory, "ray", TWO_REPLICAS)
    yield app
    ray_processes = psutil.Process(app.process.pid).children(recursive=True)
    assert len(ray_processes) > len(app.replica_pids())  # the replicas and Ray's own
    stop_app(app.process)
    # The local Ray instance ends with the app: none of its processes is left running.
    _gone, alive = psutil.wait_procs(ray_processes, timeout=30)
    assert not alive, [process.name() for process in alive]


def _send(url: str, request) -> list[np.ndarray]:
    """One request from a client of its own; the images it returned, map first."""
    api_name, image, keywords = request
    result = Client(url, verbose=False).predict(
        image=handle_file(ASSETS / image), api_name=api_name, **keywords
    )
    if api_name == "/annotate":
        return [np.asarray(Image.open(result[0]))]
    gallery, _seed = result
    return [np.asarray(Image.open(item["image"])) for item in gallery]


def test_two_replicas_give_the_single_engines_pixels_to_clients_at_once(replicas, one_engine):
    assert len(replicas.replica_pids()) == 2
    with ThreadPoolExecutor(len(REQUESTS)) as pool:  # every request at once, one client each
        served = list(pool.map(lambda request: _send(replicas.url, request), REQUESTS))
    for request, images in zip(REQUESTS, served, strict=True):
        expected = _send(one_engine.url, request)
        assert len(images) == len(expected), request
        for got, want in zip(images, expected, strict=True):
            np.testing.assert_array_equal(got, want, err_msg=str(request))
    # Both replicas ran requests: the load was spread, not queued behind one.
    pids = replicas.replica_pids()
    assert _served_by(replicas, pids) == set(pids)


def _a1111_txt2img(app: App) -> list[np.ndarray]:
    """AUTOMATIC1111's txt2img with one Canny unit, through the real `webuiapi` client."""
    parts = urllib.parse.urlsplit(app.url)
    unit = webuiapi.ControlNetUnit(
        image=Image.open(ASSETS / "coffee.jpg").convert("RGB"),
        module="canny",
        model="control_v11p_sd15_canny",
    )
    result = webuiapi.WebUIApi(host=parts.hostname, port=parts.port).txt2img(
        prompt="a cup", width=384, height=256, steps=2, seed=7, controlnet_units=[unit]
    )
    return [np.asarray(image.convert("RGB")) for image in result.images]


def test_the_a1111_api_runs_on_the_replicas_with_the_same_pixels(replicas, one_engine):
    served, expected = _a1111_txt2img(replicas), _a1111_txt2img(one_engine)
    assert len(served) == len(expected) == 2  # the image and the unit's map
    for got, want in zip(served, expected, strict=True):
        np.testing.assert_array_equal(got, want)


RUNNING = (Status.PROCESSING, Status.PROGRESS, Status.ITERATING)
MARGIN = 0.3  # s: how late a client may hear of a status change, and then some


def _running(jobs) -> int:
    return sum(job.status().code in RUNNING for job in jobs)


def _submit_slow(url: str, seeds) -> list:
    return [
        Client(url, verbose=False).submit(
            image=handle_file(ASSETS / "coffee.jpg"), api_name="/canny", **{**SLOW, "seed": seed}
        )
        for seed in seeds
    ]


def _served_by(app: App, pids, timeout: float = 20) -> set[int]:
    """The replicas among `pids` that ran a request, once their log lines reached the app's log
    (Ray forwards a worker's output a moment later)."""
    deadline = time.monotonic() + timeout
    while not set(pids) <= (served := app.pids_that_served()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return served & set(pids)


def _watch(jobs, timeout: float = 300) -> list[tuple[float, list]]:
    """Every job's status, sampled until all are done: [(time, [status per job])]."""
    samples, deadline = [], time.monotonic() + timeout
    while not all(job.done() for job in jobs):
        assert time.monotonic() < deadline, [job.status() for job in jobs]
        samples.append((time.monotonic(), [job.status() for job in jobs]))
        time.sleep(0.05)
    return samples


def _denoising_spans(samples, jobs) -> list[tuple[float, float]]:
    """When each job's denoising steps came: (first new step, last new step), seen from the
    client. Only a step count it had not shown before counts, so that a status still shown
    after the run ended (the client hears of the end a moment later) does not stretch a span."""
    spans = []
    for index in range(len(jobs)):
        seen, times = set(), []
        for moment, statuses in samples:
            progress = statuses[index].progress_data
            new = progress and progress[0].index not in seen
            if statuses[index].code == Status.PROGRESS and new:
                seen.add(progress[0].index)
                times.append(moment)
        assert len(times) >= 2, f"job {index}: too few steps seen"
        spans.append((times[0], times[-1]))
    return spans


def test_the_page_queue_runs_as_many_generations_at_once_as_there_are_replicas(replicas):
    jobs = _submit_slow(replicas.url, range(3))
    samples = _watch(jobs)
    assert all(len(job.result()[0]) == 2 for job in jobs)
    spans = _denoising_spans(samples, jobs)
    first, second, third = sorted(range(3), key=lambda index: spans[index][0])
    together = (
        max(spans[first][0], spans[second][0]) + MARGIN,
        min(spans[first][1], spans[second][1]) - MARGIN,
    )
    shorter = min(spans[first][1] - spans[first][0], spans[second][1] - spans[second][0])
    # No fewer: two generations denoise at the same time for most of their runs.
    assert together[1] - together[0] > shorter / 2, spans
    # No more: meanwhile the third waits in the page's queue, not at a replica's door.
    during = [statuses for moment, statuses in samples if together[0] <= moment <= together[1]]
    meanwhile = [statuses[third].code for statuses in during]
    assert meanwhile and not any(code in RUNNING for code in meanwhile), meanwhile
    # The replicas' TAESD previews streamed back to the page, as with one engine.
    for job in jobs:
        captions = [output[0][0]["caption"] for output in job.outputs()[:-1]]
        assert captions and all(caption.startswith("Preview 1, step") for caption in captions)


def test_a_killed_replica_loses_no_request_and_the_server_keeps_serving(replicas, one_engine):
    before = replicas.replica_pids()
    seeds = range(10, 14)
    jobs = _submit_slow(replicas.url, seeds)
    deadline = time.monotonic() + 120
    while _running(jobs) < 2:  # both replicas hold a request
        assert time.monotonic() < deadline, [job.status() for job in jobs]
        time.sleep(0.05)
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    completed, restarted = {}, 0
    for seed, job in zip(seeds, jobs, strict=True):  # each ends, one way or the other, none hangs
        try:
            gallery, _seed = job.result(timeout=180)
        except AppError as error:
            assert str(error) == WORKER_RESTARTED
            restarted += 1
        else:
            completed[seed] = np.asarray(Image.open(gallery[1]["image"]))
    assert restarted >= 1  # the request the killed replica held
    assert len(completed) + restarted == len(jobs) and completed
    # The others ran untouched: the single engine's pixels for the same requests.
    for seed, image in completed.items():
        request = ("/canny", "coffee.jpg", {**SLOW, "seed": seed})
        np.testing.assert_array_equal(image, _send(one_engine.url, request)[1])
    # Serve starts a replica in the killed one's place; the page keeps serving meanwhile.
    assert len(_send(replicas.url, REQUESTS[1])) == 2
    deadline = time.monotonic() + 120
    while len(now := replicas.replica_pids()) != 2 or victim in now:
        assert time.monotonic() < deadline, now
        time.sleep(0.5)
    barrier = threading.Barrier(2)

    def send_together(request):
        barrier.wait()
        return _send(replicas.url, request)

    with ThreadPoolExecutor(2) as pool:  # one for each replica, the new one too
        results = list(pool.map(send_together, [REQUESTS[0], REQUESTS[0]]))
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert _served_by(replicas, now) == set(now)
