"""The Ray Serve mode's settings, deployment options, queue width and a replica's own engine (no
Ray cluster started: tests/test_serve_ray.py starts one)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from errors import GpuOutOfMemoryError
from serving import ServeSettings
from settings import Settings
from testkit.paths import PROJECT_ROOT

FAST = {"steps": 2, "image_resolution": 256, "seed": 11}


def test_without_serve_nothing_imports_ray():
    code = "import sys, app, serving; assert 'ray' not in sys.modules, 'ray imported'"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert ServeSettings.from_env({}).mode is None


@pytest.mark.parametrize(
    "env, message",
    [
        ({"SERVE": "k8s"}, "unknown"),
        ({"SERVE": "ray", "SERVE_REPLICAS": "0"}, "at least 1"),
        ({"SERVE": "ray", "SERVE_REPLICAS": "two"}, "whole number"),
        ({"SERVE": "ray", "SERVE_MIN_REPLICAS": "1"}, "both"),
        ({"SERVE": "ray", "SERVE_MIN_REPLICAS": "3", "SERVE_MAX_REPLICAS": "2"}, "above"),
    ],
)
def test_bad_serve_settings_say_what_is_wrong(env, message):
    with pytest.raises(ValueError, match=message):
        ServeSettings.from_env(env)


def test_one_replica_per_gpu_unless_given_and_a_count_needed_without_gpus():
    from serving.remote import deployment_options

    on_gpus = deployment_options(ServeSettings.from_env({"SERVE": "ray"}), gpus=4)
    assert on_gpus["num_replicas"] == 4 and on_gpus["ray_actor_options"]["num_gpus"] == 1
    assert on_gpus["max_ongoing_requests"] == 1
    given = deployment_options(ServeSettings.from_env({"SERVE_REPLICAS": "2"}), gpus=0)
    assert given["num_replicas"] == 2 and given["ray_actor_options"]["num_cpus"] == 1.0
    with pytest.raises(ValueError, match="SERVE_REPLICAS"):
        deployment_options(ServeSettings.from_env({"SERVE": "ray"}), gpus=0)
    scaling = ServeSettings.from_env({"SERVE_MIN_REPLICAS": "1", "SERVE_MAX_REPLICAS": "3"})
    bounds = deployment_options(scaling, gpus=3)["autoscaling_config"]
    assert (bounds["min_replicas"], bounds["max_replicas"]) == (1, 3)


def test_the_page_queue_runs_as_many_generations_as_replicas():
    from ui import build_demo

    class ThreeReplicas:
        base_model_names = ["Stable Diffusion 1.5"]
        concurrent_runs = 3

        def describe(self) -> str:
            return "Ray Serve: 3 replica(s)"

    demo = build_demo(ThreeReplicas(), Settings(queue_size=7))
    assert demo._queue.default_concurrency_limit == 3
    assert demo._queue.max_size == 7  # the queue-full bound is unchanged


class _LocalHandle:
    """A DeploymentHandle's streaming call, run here on one `EngineReplica` (no Ray): what
    `RemoteEngine` sends and reads is the same."""

    def __init__(self, replica):
        self.replica = replica
        self.stream = self

    def options(self, stream: bool):
        assert stream
        return self

    def remote(self, *args):
        async def collect():
            return [event async for event in self.replica.stream(*args)]

        events = asyncio.run(collect())
        return _Responses(events)


class _Responses(list):
    def cancel(self) -> None:
        pass


def test_a_replica_out_of_memory_says_so_and_its_next_request_runs(
    settings, astronaut, monkeypatch
):
    from serving.remote import RemoteEngine
    from serving.replica import EngineReplica

    replica = EngineReplica(settings)
    info = replica.info()
    assert info["pid"] == os.getpid() and info["device"] == "cpu"
    remote = RemoteEngine(settings, _LocalHandle(replica), replicas=1, info=info)
    freed = []
    monkeypatch.setattr(replica.engine, "_free_memory", lambda: freed.append(True))

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    real_run = replica.engine._run
    monkeypatch.setattr(replica.engine, "_run", out_of_memory)
    with pytest.raises(GpuOutOfMemoryError, match="Lower the image resolution or the number"):
        remote.generate("canny", astronaut, "a", **FAST)
    assert freed  # the replica gave its memory back, as the single engine does
    monkeypatch.setattr(replica.engine, "_run", real_run)
    steps = []
    result = remote.generate(
        "canny", astronaut, "a", on_progress=lambda *s: steps.append(s), **FAST
    )
    alone = replica.engine.generate("canny", astronaut, "a", **FAST)
    np.testing.assert_array_equal(result.images[0], alone.images[0])
    assert steps[-1] == (2, 2) and remote.last_timing is not None
