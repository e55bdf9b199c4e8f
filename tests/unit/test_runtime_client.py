"""Upstream client: retries, circuit breaker and deadlines against a real grpc.aio server."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aiswa_runtime import ServiceError, Upstream
from aiswa_runtime._server import deadline_var


class FlakyHealth(health_pb2_grpc.HealthServicer):
    """Fails the first ``failures`` calls with ``code``, then answers SERVING."""

    def __init__(self, failures: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
                 delay: float = 0.0) -> None:
        self.failures = failures
        self.code = code
        self.delay = delay
        self.calls = 0

    async def Check(self, request, context):  # noqa: N802 - gRPC method name
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.calls <= self.failures:
            await context.abort(self.code, f"planned failure {self.calls}")
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


async def _server(servicer: FlakyHealth) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def test_idempotent_call_retried_on_unavailable():
    servicer = FlakyHealth(failures=2)
    server, port = await _server(servicer)
    upstream = Upstream("flaky", f"127.0.0.1:{port}", max_attempts=4, fail_max=10)
    stub = health_pb2_grpc.HealthStub(upstream.channel)
    reply = await upstream.call(stub.Check, health_pb2.HealthCheckRequest(), idempotent=True)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert servicer.calls == 3
    await upstream.close()
    await server.stop(None)


async def test_non_idempotent_call_not_retried():
    servicer = FlakyHealth(failures=2)
    server, port = await _server(servicer)
    upstream = Upstream("flaky", f"127.0.0.1:{port}", fail_max=10)
    stub = health_pb2_grpc.HealthStub(upstream.channel)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await upstream.call(stub.Check, health_pb2.HealthCheckRequest(), idempotent=False)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls == 1
    await upstream.close()
    await server.stop(None)


async def test_not_found_not_retried_and_not_counted():
    servicer = FlakyHealth(failures=100, code=grpc.StatusCode.NOT_FOUND)
    server, port = await _server(servicer)
    upstream = Upstream("answers", f"127.0.0.1:{port}", fail_max=2)
    stub = health_pb2_grpc.HealthStub(upstream.channel)
    for _ in range(4):
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await upstream.call(stub.Check, health_pb2.HealthCheckRequest(), idempotent=True)
        assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    assert servicer.calls == 4
    assert upstream.breaker.current_state == "closed"
    await upstream.close()
    await server.stop(None)


async def test_breaker_opens_fails_fast_and_recovers():
    servicer = FlakyHealth(failures=3)
    server, port = await _server(servicer)
    upstream = Upstream("projects", f"127.0.0.1:{port}", max_attempts=1, fail_max=3,
                        reset_timeout=0.5)
    stub = health_pb2_grpc.HealthStub(upstream.channel)
    for _ in range(3):
        with pytest.raises((grpc.aio.AioRpcError, ServiceError)):
            await upstream.call(stub.Check, health_pb2.HealthCheckRequest(), idempotent=True)
    assert upstream.breaker.current_state == "open"
    with pytest.raises(ServiceError) as open_error:
        await upstream.call(stub.Check, health_pb2.HealthCheckRequest(), idempotent=True)
    assert open_error.value.code == grpc.StatusCode.UNAVAILABLE
    assert "upstream projects" in open_error.value.message
    assert "circuit breaker is open" in open_error.value.message
    assert servicer.calls == 3, "an open breaker must not reach the upstream"
    await asyncio.sleep(0.6)
    reply = await upstream.call(stub.Check, health_pb2.HealthCheckRequest(), idempotent=True)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert upstream.breaker.current_state == "closed"
    await upstream.close()
    await server.stop(None)


async def test_unreachable_upstream_opens_breaker():
    upstream = Upstream("gone", "127.0.0.1:1", max_attempts=2, fail_max=2, reset_timeout=30,
                        max_retry_seconds=2)
    stub = health_pb2_grpc.HealthStub(upstream.channel)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await upstream.call(stub.Check, health_pb2.HealthCheckRequest(), idempotent=True,
                            timeout=1)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert upstream.breaker.current_state == "open"
    await upstream.close()


async def test_deadline_of_inbound_call_shortens_timeout():
    servicer = FlakyHealth(failures=0, delay=2.0)
    server, port = await _server(servicer)
    upstream = Upstream("slow", f"127.0.0.1:{port}", default_timeout=30, fail_max=10)
    stub = health_pb2_grpc.HealthStub(upstream.channel)
    token = deadline_var.set(time.monotonic() + 0.3)
    try:
        assert upstream.timeout_for("/grpc.health.v1.Health/Check") <= 0.3
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await upstream.call(stub.Check, health_pb2.HealthCheckRequest(), idempotent=False)
        assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        deadline_var.reset(token)
    assert upstream.timeout_for("/grpc.health.v1.Health/Check") == 30
    await upstream.close()
    await server.stop(None)


async def test_breaker_change_reported_to_listeners():
    from aiswa_runtime import on_breaker_change

    changes = []
    on_breaker_change(changes.append)
    upstream = Upstream("listened", "127.0.0.1:1", max_attempts=1, fail_max=1, reset_timeout=30)
    stub = health_pb2_grpc.HealthStub(upstream.channel)
    with pytest.raises(grpc.aio.AioRpcError):
        await upstream.call(stub.Check, health_pb2.HealthCheckRequest(), idempotent=True,
                            timeout=1)
    assert {"upstream": "listened", "from": "closed", "to": "open"} in changes
    await upstream.close()
