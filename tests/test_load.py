"""A small run of benchmarks/load.py: concurrent clients across the tabs, nothing lost."""

from __future__ import annotations

import pytest

from benchmarks.load import run_load, serve_load
from testkit.app_process import start_app, stop_app


def test_concurrent_clients_across_tabs_all_complete(server):
    record = run_load(server.url, clients=3, requests_per_client=3)  # 9 requests: every tab
    assert record["submitted"] == 9
    assert record["failed"] == 0, record["failure_examples"]
    assert record["rejected"] == 0, record["rejection_examples"]
    assert record["completed"] == record["submitted"]
    assert record["lost"] == 0
    assert record["latency_p95_s"] > 0


@pytest.fixture
def small_queue_app(models_dir, tmp_path):
    """Its own `python app.py` on the tiny models, with a queue of one waiting event."""
    url, process = start_app(models_dir, tmp_path / "app.log", queue_size=1)
    yield url
    stop_app(process)


def test_a_full_queue_rejects_clearly_loses_nothing_and_keeps_serving(small_queue_app):
    record = run_load(small_queue_app, clients=6, requests_per_client=1)
    assert record["submitted"] == 6
    assert record["lost"] == 0
    assert record["failed"] == 0, record["failure_examples"]
    assert record["rejected"] >= 1
    assert all("Queue is full" in message for message in record["rejection_examples"])
    assert record["completed"] + record["rejected"] == 6 and record["completed"] >= 1
    after = run_load(small_queue_app, clients=1, requests_per_client=1)
    assert after["completed"] == 1, after


def test_the_ray_serve_load_reports_requests_per_minute_and_latency(models_dir, tmp_path):
    (record,) = serve_load(models_dir, tmp_path, [1], clients=2, requests_per_client=2)
    assert (record["serve"], record["replicas"]) == ("ray", 1)
    assert record["warm_up_failed"] == 0, record["warm_up_failures"]
    assert record["completed"] == record["submitted"] == 4, record["failure_examples"]
    assert record["lost"] == 0
    assert 0 < record["latency_p50_s"] <= record["latency_p95_s"] <= record["latency_max_s"]
    assert record["requests_per_min"] == round(60 * 4 / record["wall_s"], 2)
