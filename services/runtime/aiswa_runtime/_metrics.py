from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

RPC_REQUESTS = Counter(
    "aiswa_rpc_requests_total", "gRPC calls served", ["service", "method", "code"]
)
RPC_LATENCY = Histogram(
    "aiswa_rpc_duration_seconds", "gRPC call latency", ["service", "method"]
)
UPSTREAM_RETRIES = Counter(
    "aiswa_upstream_retries_total", "Retried upstream calls", ["upstream", "method"]
)
BREAKER_STATE = Gauge(
    "aiswa_breaker_state",
    "Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open",
    ["upstream"],
)
BREAKER_TRANSITIONS = Counter(
    "aiswa_breaker_transitions_total",
    "Circuit breaker state changes",
    ["upstream", "state"],
)
MESSAGES = Counter(
    "aiswa_messages_total", "Broker messages handled", ["queue", "outcome"]
)


def serve_metrics(address: str | None) -> None:
    """Serve /metrics for Prometheus on ``HOST:PORT`` when an address is given."""
    if not address:
        return
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host or "127.0.0.1")
    log.info("metrics endpoint started", extra={"address": address})
