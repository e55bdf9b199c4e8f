"""The dashboard events that every Python service publishes (aiswa_runtime._report)."""

from __future__ import annotations

import asyncio
import math
import uuid

import pytest

from aiswa_runtime import _metrics
from aiswa_runtime._authz import AUTHZ_DENIALS
from aiswa_runtime._report import ServiceReporter, Snapshot, _quantile, window_event


class RecordingBroker:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def publish_event_soon(self, routing_key: str, payload: dict) -> None:
        self.events.append((routing_key, payload))


def _service() -> str:
    # Prometheus counters are process-wide, so each test counts for its own service.
    return f"svc-{uuid.uuid4().hex[:8]}"


def test_quantile_interpolates_inside_bucket():
    buckets = [(0.005, 0.0), (0.01, 10.0), (0.025, 20.0), (math.inf, 20.0)]
    assert _quantile(buckets, 0.5) == pytest.approx(0.01)
    assert _quantile(buckets, 0.75) == pytest.approx(0.0175)


def test_quantile_of_empty_window_is_none():
    assert _quantile([(0.005, 0.0), (math.inf, 0.0)], 0.5) is None


def test_quantile_in_open_bucket_is_its_lower_bound():
    assert _quantile([(0.005, 1.0), (math.inf, 10.0)], 0.99) == pytest.approx(0.005)


def test_window_event_counts_only_the_window():
    service = _service()
    _metrics.RPC_REQUESTS.labels(service, "/x.v1.X/Old", "OK").inc(7)
    before = Snapshot(service)
    for _ in range(3):
        _metrics.RPC_REQUESTS.labels(service, "/x.v1.X/Get", "OK").inc()
        _metrics.RPC_LATENCY.labels(service, "/x.v1.X/Get").observe(0.003)
    _metrics.RPC_REQUESTS.labels(service, "/x.v1.X/Get", "INTERNAL").inc()
    _metrics.RPC_LATENCY.labels(service, "/x.v1.X/Get").observe(0.2)
    AUTHZ_DENIALS.labels(service, "/x.v1.X/Get", "policy").inc(2)
    after = Snapshot(service)

    event = window_event(service, before, after)
    assert event["service"] == service
    assert event["requests"] == 4
    assert event["errors"] == 1
    assert event["authz_denials"] == 2
    assert 0 < event["latency_p50_ms"] <= 5.0
    assert 100.0 < event["latency_p99_ms"] <= 250.0
    assert event["window_seconds"] > 0


def test_denials_beyond_budget_are_not_published():
    broker = RecordingBroker()
    reporter = ServiceReporter(broker, "projects", max_denials_per_second=5)
    for index in range(20):
        reporter.denied({"caller": "intruder", "method": f"/m{index}", "reason": "no",
                         "reason_kind": "policy"})
    published = [payload for key, payload in broker.events if key == "authz.denied"]
    assert len(published) == 5
    assert [payload["method"] for payload in published] == ["/m0", "/m1", "/m2", "/m3", "/m4"]
    assert all(payload["service"] == "projects" for payload in published)


async def test_reporter_publishes_every_period():
    broker = RecordingBroker()
    service = _service()
    reporter = ServiceReporter(broker, service, period=0.05)
    task = asyncio.create_task(reporter.run())
    await asyncio.sleep(0)  # run() takes its first snapshot
    _metrics.RPC_REQUESTS.labels(service, "/x.v1.X/Get", "OK").inc()
    await asyncio.sleep(0.18)
    task.cancel()
    windows = [payload for key, payload in broker.events if key == "metrics.service"]
    assert len(windows) >= 2
    assert sum(window["requests"] for window in windows) == 1
    assert all(window["service"] == service for window in windows)


def test_invalid_period_is_rejected():
    with pytest.raises(ValueError, match="period 0 is invalid"):
        ServiceReporter(RecordingBroker(), "projects", period=0)
