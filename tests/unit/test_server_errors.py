"""How the runtime's server turns a handler's exception into the caller's status."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from aiswa_mesh.localca import free_port
from aiswa_runtime import _metrics
from aiswa_runtime._server import _ContextInterceptor

METHOD = "/aiswa.test.v1.Probe/Call"


@pytest.fixture
async def call() -> AsyncIterator[Callable[[Callable[[], Awaitable[None]]], Awaitable[grpc.aio.AioRpcError]]]:
    """Serve one method, as the service `projects`, whose handler runs the test's body."""
    servers: list[grpc.aio.Server] = []

    async def run(body: Callable[[], Awaitable[None]]) -> grpc.aio.AioRpcError:
        async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await body()
            return b"done"

        server = grpc.aio.server(interceptors=[_ContextInterceptor("projects")])
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "aiswa.test.v1.Probe", {"Call": grpc.unary_unary_rpc_method_handler(handler)})])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary(METHOD)(b"x", timeout=20)
        return caught.value

    yield run
    for server in servers:
        await server.stop(None)


def _served(code: str) -> float:
    return _metrics.RPC_REQUESTS.labels("projects", METHOD, code)._value.get()


async def test_database_error_is_unavailable_without_its_text(call):
    async def body() -> None:
        raise psycopg.OperationalError(
            'connection to server at "10.77.0.1", port 55432 failed: Connection refused')

    before = _served("UNAVAILABLE")
    error = await call(body)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details().startswith("projects cannot reach its database now; retry later")
    assert "request id" in error.details()
    assert "10.77.0.1" not in error.details()
    assert "55432" not in error.details()
    assert _served("UNAVAILABLE") == before + 1


async def test_pool_without_a_server_fails_as_unavailable(call):
    """A real pool whose server does not listen: the call ends at the pool's timeout."""
    pool = AsyncConnectionPool(f"postgresql://nobody@127.0.0.1:{free_port()}/nothing",
                               min_size=1, open=False, timeout=0.5,
                               reconnect_timeout=60)
    await pool.open(wait=False)

    async def body() -> None:
        async with pool.connection() as connection:
            await connection.execute("SELECT 1")

    try:
        error = await call(body)
    finally:
        await pool.close()
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "cannot reach its database now" in error.details()


async def test_other_errors_stay_internal_with_a_request_id(call):
    async def body() -> None:
        raise KeyError("a bug")

    before = _served("INTERNAL")
    error = await call(body)
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details().startswith(f"internal error in {METHOD}; quote request id ")
    assert "a bug" not in error.details()
    assert _served("INTERNAL") == before + 1
