"""The Ray Serve mode's settings, deployment options and queue width (no Ray cluster started)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from serving import ServeSettings
from settings import Settings
from testkit.paths import PROJECT_ROOT


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
