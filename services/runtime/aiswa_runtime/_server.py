from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import psycopg
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import _metrics
from ._authz import authorization_interceptor_from_env
from ._config import ServiceConfig
from ._errors import ServiceError, cancelled_from_outside, unavailable
from ._logging import caller_var, configure_logging, request_id_var
from ._telemetry import configure_tracing, shutdown_tracing

if TYPE_CHECKING:
    from ._credentials import Credentials
    from ._secrets import FatalSignal

log = logging.getLogger(__name__)

# Exit status after the process lost its OpenBao credentials (EX_TEMPFAIL in
# sysexits.h): the supervisor restarts it, and the new process logs in again.
EXIT_CREDENTIALS_LOST = 75

# The time.monotonic() value at which the current inbound call's deadline
# expires. Upstream calls made while serving it use it to shorten their own.
deadline_var: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "deadline", default=None
)

_FORWARDED_HEADERS = ("x-request-id", "x-jwt-payload", "l5d-client-id")


def _metadata_value(context: grpc.aio.ServicerContext, key: str) -> str:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value.decode() if isinstance(value, bytes) else value
    return ""


def _enter_call(context: grpc.aio.ServicerContext) -> None:
    request_id_var.set(_metadata_value(context, "x-request-id") or uuid.uuid4().hex)
    caller_var.set(_metadata_value(context, "l5d-client-id"))
    remaining = context.time_remaining()
    deadline_var.set(time.monotonic() + remaining if remaining is not None else None)


def _outage(service: str, method: str, exc: Exception) -> ServiceError | None:
    """Return the UNAVAILABLE error for an outage of the service's database, or None.

    A database that is down or unreachable (a refused connection, a
    connection lost mid-query, no pooled connection within the pool's
    timeout) is an outage that the caller can wait out, not a bug to report.
    So the caller gets UNAVAILABLE and "retry later" instead of INTERNAL. The
    database's own message names hosts and ports, so it goes to the log only.
    """
    if isinstance(exc, psycopg.OperationalError):
        log.warning("database unavailable", extra={"method": method, "error": str(exc)})
        return unavailable(f"{service} cannot reach its database now; retry later "
                           f"(request id {request_id_var.get()})")
    return None


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: BaseException) -> None:
    if isinstance(exc, ServiceError):
        log.info(
            "call failed",
            extra={"method": method, "code": exc.code.name, "error": exc.message},
        )
        await context.abort(exc.code, exc.message)
    log.exception("unhandled error", extra={"method": method})
    await context.abort(
        grpc.StatusCode.INTERNAL,
        f"internal error in {method}; quote request id {request_id_var.get()} "
        "when reporting it",
    )


def _wrap_unary(
    service: str, method: str, behavior: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        _enter_call(context)
        started = time.perf_counter()
        code = "OK"
        try:
            return await behavior(request, context)
        except ServiceError as exc:
            code = exc.code.name
            await _abort(context, method, exc)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            code = "CANCELLED_OR_ABORTED"
            raise
        except Exception as exc:
            error = _outage(service, method, exc)
            code = error.code.name if error else "INTERNAL"
            await _abort(context, method, error or exc)
        finally:
            _metrics.RPC_REQUESTS.labels(service, method, code).inc()
            _metrics.RPC_LATENCY.labels(service, method).observe(
                time.perf_counter() - started
            )

    return handler


def _wrap_stream(
    service: str, method: str, behavior: Callable[..., Any]
) -> Callable[..., Any]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        _enter_call(context)
        code = "OK"
        try:
            async for item in behavior(request, context):
                yield item
        except ServiceError as exc:
            code = exc.code.name
            await _abort(context, method, exc)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            code = "CANCELLED_OR_ABORTED"
            raise
        except Exception as exc:
            error = _outage(service, method, exc)
            code = error.code.name if error else "INTERNAL"
            await _abort(context, method, error or exc)
        finally:
            _metrics.RPC_REQUESTS.labels(service, method, code).inc()

    return handler


class _ContextInterceptor(grpc.aio.ServerInterceptor):
    """Give every call a request id, deadline, caller, error mapping and metrics."""

    def __init__(self, service: str) -> None:
        self._service = service

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if method.startswith(("/grpc.health.", "/grpc.reflection.")):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(self._service, method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(self._service, method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def forwarded_metadata(context: grpc.aio.ServicerContext | None) -> list[tuple[str, str]]:
    """Metadata to pass on when a handler calls another service for the same user."""
    if context is None:
        return [("x-request-id", request_id_var.get())] if request_id_var.get() else []
    return [
        (key, value)
        for key in _FORWARDED_HEADERS
        if key != "l5d-client-id" and (value := _metadata_value(context, key))
    ]


class Service:
    """One service process: a grpc.aio server plus its background tasks.

    Example::

        service = Service(ServiceConfig.from_env("users"))
        service.add(users_pb2_grpc.add_UsersServiceServicer_to_server,
                    UsersServicer(...), "aiswa.users.v1.UsersService")
        await service.run()
    """

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        configure_logging(config.service, config.log_level)
        configure_tracing(config)
        # Authorization runs after the context interceptor, so a denial
        # carries the request id and is counted in the call metrics.
        self._authz = authorization_interceptor_from_env(config.service)
        interceptors: list[grpc.aio.ServerInterceptor] = [_ContextInterceptor(config.service)]
        if self._authz is not None:
            interceptors.append(self._authz)
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", 80 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names: list[str] = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        self._background: list[Callable[[], Awaitable[None]]] = []
        self._on_shutdown: list[Callable[[], Awaitable[None]]] = []
        self._stopping = asyncio.Event()
        self._fatal: FatalSignal | None = None
        if self._authz is not None:
            self._on_shutdown.append(self._authz.aclose)

    def add(self, add_to_server: Callable[[Any, grpc.aio.Server], None], servicer: Any, name: str) -> None:
        add_to_server(servicer, self.server)
        self._service_names.append(name)

    def background(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run ``task`` while the service runs; it is cancelled at shutdown."""
        self._background.append(task)

    def on_shutdown(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._on_shutdown.append(callback)

    def use_credentials(self, credentials: Credentials) -> None:
        """Exit with :data:`EXIT_CREDENTIALS_LOST` when ``credentials`` are lost; close them last.

        Call it before registering the pool and the broker, so that they close
        before the credentials' leases are revoked.
        """
        self._fatal = credentials.fatal
        self.on_shutdown(credentials.aclose)

    async def run(self) -> None:
        config = self.config
        reflection.enable_server_reflection(
            [*self._service_names, reflection.SERVICE_NAME], self.server
        )
        port = self.server.add_insecure_port(config.grpc_address)
        if port == 0:
            raise RuntimeError(
                f"{config.service}: could not bind {config.grpc_address}; is another "
                "process listening there? `make status` shows the platform's processes"
            )
        _metrics.serve_metrics(os.environ.get("AISWA_METRICS_ADDRESS"))
        await self.server.start()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stopping.set)
        tasks = [asyncio.create_task(supervise(job)) for job in self._background]
        for name in self._service_names:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "service started",
            extra={
                "address": config.grpc_address,
                "identity": config.identity,
                "version": _version(),
                "pid": os.getpid(),
            },
        )
        fatal_reason = await self._wait_for_stop()
        log.info("service stopping: draining in-flight calls",
                 extra={"grace_seconds": config.shutdown_grace_seconds})
        await self.health.enter_graceful_shutdown()
        await self.server.stop(config.shutdown_grace_seconds)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for callback in reversed(self._on_shutdown):
            try:
                await callback()
            except Exception:
                log.exception("shutdown step failed", extra={"step": repr(callback)})
        shutdown_tracing()
        log.info("service stopped", extra={"identity": config.identity})
        if fatal_reason is not None:
            raise SystemExit(EXIT_CREDENTIALS_LOST)

    async def _wait_for_stop(self) -> str | None:
        """Wait for SIGTERM/SIGINT or lost credentials; return the latter's reason or None."""
        waiters = [asyncio.create_task(self._stopping.wait())]
        if self._fatal is not None:
            waiters.append(asyncio.create_task(self._fatal.wait()))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if self._fatal is not None and self._fatal.is_set():
            log.critical(
                "service stopping: its OpenBao credentials are lost; exiting with status "
                f"{EXIT_CREDENTIALS_LOST} so that the supervisor restarts it",
                extra={"reason": self._fatal.reason},
            )
            return self._fatal.reason
        return None


async def supervise(job: Callable[[], Awaitable[None]]) -> None:
    """Run a background job until it returns, and restart it with a delay when it fails.

    With the restarts, a broker outage pauses consumption instead of killing
    the process.
    """
    delay = 1.0
    while True:
        try:
            await job()
            return
        except asyncio.CancelledError:
            if cancelled_from_outside():
                raise
            # Not a shutdown: a closed connection failed one of the job's
            # waits (see cancelled_from_outside).
            log.warning("background job ended by a closed connection; restarting",
                        extra={"delay": delay})
        except Exception as exc:
            if cancelled_from_outside():
                # The job turned a shutdown's cancel into another error.
                raise asyncio.CancelledError from exc
            log.exception("background job failed; restarting", extra={"delay": delay})
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("aiswa")
    except PackageNotFoundError:
        return "unknown"
