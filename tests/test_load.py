"""A small run of benchmarks/load.py: concurrent clients across the tabs, nothing lost."""

from __future__ import annotations

import pytest

from benchmarks.load import run_load
from testkit.app_process import start_app, stop_app


def test_concurrent_clients_across_tabs_all_complete(server):
    record = run_load(server.url, clients=3, requests_per_client=2)
    assert record["submitted"] == 6
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
