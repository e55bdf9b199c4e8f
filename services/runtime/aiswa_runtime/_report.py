"""Events for the dashboard: a service's request metrics, its denials and its breakers.

Every ``period`` seconds the reporter publishes ``metrics.service`` to the
``aiswa.events`` exchange with what the service served since the previous
event, read from the Prometheus metrics that the runtime already keeps (see
docs/dashboard.md for the schema). Each call that OPA denied becomes an
``authz.denied`` event, at most ``max_denials_per_second``; the rest are
counted only in ``metrics.service``. Breaker state changes become
``breaker.state_changed`` events.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable
from typing import Any, Protocol

from prometheus_client import Metric

from . import _metrics
from ._authz import AUTHZ_DENIALS, on_denial
from ._client import on_breaker_change

log = logging.getLogger(__name__)


class EventPublisher(Protocol):
    def publish_event_soon(self, routing_key: str, payload: dict[str, Any]) -> None: ...


def _samples(metric_collector: Any, name: str, label: str, value: str) -> Iterable[Any]:
    metric: Metric
    for metric in metric_collector.collect():
        for sample in metric.samples:
            if sample.name == name and sample.labels.get(label) == value:
                yield sample


def _quantile(buckets: list[tuple[float, float]], fraction: float) -> float | None:
    """Estimate a quantile from cumulative (upper bound, count) pairs, as PromQL's
    histogram_quantile does: linear interpolation inside the bucket that contains it."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = fraction * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for upper_bound, count in buckets:
        if count >= rank:
            if math.isinf(upper_bound):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + (upper_bound - lower_bound) * share
        lower_bound, lower_count = upper_bound, count
    return lower_bound


class Snapshot:
    """The service's cumulative counters at one moment."""

    def __init__(self, service: str) -> None:
        self.time = time.monotonic()
        self.requests = 0.0
        self.errors = 0.0
        for sample in _samples(_metrics.RPC_REQUESTS, "aiswa_rpc_requests_total", "service", service):
            self.requests += sample.value
            if sample.labels.get("code") != "OK":
                self.errors += sample.value
        self.buckets: dict[float, float] = {}
        for sample in _samples(_metrics.RPC_LATENCY, "aiswa_rpc_duration_seconds_bucket",
                               "service", service):
            bound = float(sample.labels["le"])
            self.buckets[bound] = self.buckets.get(bound, 0.0) + sample.value
        self.denials = sum(sample.value for sample in _samples(
            AUTHZ_DENIALS, "aiswa_authz_denials_total", "destination", service))


def window_event(service: str, before: Snapshot, after: Snapshot) -> dict[str, Any]:
    """Return the ``metrics.service`` payload for the window between two snapshots."""
    payload: dict[str, Any] = {
        "service": service,
        "window_seconds": round(max(after.time - before.time, 1e-3), 3),
        "requests": int(after.requests - before.requests),
        "errors": int(after.errors - before.errors),
        "authz_denials": int(after.denials - before.denials),
        "timestamp": time.time(),
    }
    buckets = sorted((bound, count - before.buckets.get(bound, 0.0))
                     for bound, count in after.buckets.items())
    for name, fraction in (("latency_p50_ms", 0.5), ("latency_p99_ms", 0.99)):
        seconds = _quantile(buckets, fraction)
        if seconds is not None:
            payload[name] = round(seconds * 1000, 3)
    return payload


class ServiceReporter:
    """Publish this service's metrics, denials and breaker changes as events.

    Example::

        reporter = ServiceReporter(broker, "projects")
        service.background(reporter.run)
    """

    def __init__(self, broker: EventPublisher, service: str, *, period: float = 5.0,
                 max_denials_per_second: float = 5.0) -> None:
        if period <= 0:
            raise ValueError(f"period {period!r} is invalid; give seconds greater than 0")
        self.broker = broker
        self.service = service
        self.period = period
        self.max_denials = max_denials_per_second
        self._tokens = max_denials_per_second
        self._refilled = time.monotonic()
        on_denial(self.denied)
        on_breaker_change(lambda change: broker.publish_event_soon(
            "breaker.state_changed", {"service": service, **change}))

    def denied(self, event: dict[str, str]) -> None:
        """Publish one denial, unless more than the per-second budget were published."""
        now = time.monotonic()
        self._tokens = min(self.max_denials, self._tokens + (now - self._refilled) * self.max_denials)
        self._refilled = now
        if self._tokens < 1:
            return
        self._tokens -= 1
        self.broker.publish_event_soon("authz.denied", {"service": self.service, **event,
                                                        "timestamp": time.time()})

    async def run(self) -> None:
        before = Snapshot(self.service)
        while True:
            await asyncio.sleep(self.period)
            after = Snapshot(self.service)
            self.broker.publish_event_soon("metrics.service",
                                           window_event(self.service, before, after))
            before = after
