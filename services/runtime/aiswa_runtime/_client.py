from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import grpc
import pybreaker
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from . import _metrics
from ._errors import ServiceError, unavailable
from ._server import deadline_var

log = logging.getLogger(__name__)

# Codes that say the upstream is unhealthy: they count against its breaker.
# Any other code (NOT_FOUND, PERMISSION_DENIED, ...) is a valid answer.
_FAILURE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def _is_failure(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in _FAILURE_CODES


def _is_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE


_STATE_VALUES = {"closed": 0, "half-open": 1, "open": 2}
_breaker_listeners: list[Callable[[dict[str, str]], None]] = []


def on_breaker_change(listener: Callable[[dict[str, str]], None]) -> None:
    """Call ``listener`` with ``{"upstream", "from", "to"}`` on every breaker state change."""
    _breaker_listeners.append(listener)


class _BreakerLog(pybreaker.CircuitBreakerListener):
    def __init__(self, upstream: str) -> None:
        self._upstream = upstream

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        old = old_state.name if old_state else "none"
        log.warning(
            "circuit breaker state changed",
            extra={"upstream": self._upstream, "from": old, "to": new_state.name},
        )
        _metrics.BREAKER_STATE.labels(self._upstream).set(_STATE_VALUES[new_state.name])
        _metrics.BREAKER_TRANSITIONS.labels(self._upstream, new_state.name).inc()
        change = {"upstream": self._upstream, "from": old, "to": new_state.name}
        for listener in _breaker_listeners:
            listener(change)


class Upstream:
    """A client channel to one upstream service with deadlines, retries and a breaker.

    Every call gets a deadline: the method's own timeout, shortened to the
    deadline of the inbound call being served. Idempotent calls are retried on
    UNAVAILABLE with jittered exponential backoff, bounded in attempts and
    total time. After ``fail_max`` consecutive failures the breaker opens and
    calls fail at once with UNAVAILABLE naming the upstream, until a trial call
    after ``reset_timeout`` seconds succeeds.
    """

    def __init__(
        self,
        name: str,
        address: str,
        *,
        default_timeout: float = 5.0,
        method_timeouts: Mapping[str, float] | None = None,
        max_attempts: int = 4,
        max_retry_seconds: float = 10.0,
        fail_max: int = 5,
        reset_timeout: float = 10.0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.name = name
        self.address = address
        self.channel = grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", 80 * 1024 * 1024),
                ("grpc.keepalive_time_ms", 30_000),
                *options,
            ],
        )
        self._default_timeout = default_timeout
        self._method_timeouts = dict(method_timeouts or {})
        self._max_attempts = max_attempts
        self._max_retry_seconds = max_retry_seconds
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout,
            exclude=[lambda exc: not _is_failure(exc)],
            listeners=[_BreakerLog(name)],
            # The call that trips the breaker reports the upstream's own error.
            throw_new_error_on_trip=False,
            name=name,
        )
        _metrics.BREAKER_STATE.labels(name).set(0)

    def timeout_for(self, method: str) -> float:
        timeout = self._method_timeouts.get(method, self._default_timeout)
        deadline = deadline_var.get()
        if deadline is not None:
            timeout = min(timeout, max(deadline - time.monotonic(), 0.0))
        return timeout

    def _open_error(self) -> ServiceError:
        return unavailable(
            f"upstream {self.name} ({self.address}) is unavailable: its circuit "
            f"breaker is open after {self.breaker.fail_max} failures; calls resume "
            f"after a successful trial in {self.breaker.reset_timeout:.0f} s"
        )

    async def call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable,
        request: Any,
        *,
        idempotent: bool,
        metadata: Sequence[tuple[str, str]] = (),
        timeout: float | None = None,
    ) -> Any:
        name = _method_name(method)
        attempts = self._max_attempts if idempotent else 1

        def before_sleep(state: RetryCallState) -> None:
            _metrics.UPSTREAM_RETRIES.labels(self.name, name).inc()
            log.warning(
                "retrying upstream call",
                extra={
                    "upstream": self.name,
                    "method": name,
                    "attempt": state.attempt_number,
                    "error": str(state.outcome.exception()) if state.outcome else "",
                },
            )

        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts) | stop_after_delay(self._max_retry_seconds),
            wait=wait_random_exponential(multiplier=0.05, max=2.0),
            retry=retry_if_exception(_is_unavailable),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    with self.breaker.calling():
                        return await method(
                            request,
                            metadata=tuple(metadata),
                            timeout=timeout if timeout is not None else self.timeout_for(name),
                        )
        except pybreaker.CircuitBreakerError:
            raise self._open_error() from None
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def stream(
        self,
        method: grpc.aio.UnaryStreamMultiCallable,
        request: Any,
        *,
        metadata: Sequence[tuple[str, str]] = (),
        timeout: float | None = None,
    ) -> AsyncIterator[Any]:
        """Yield the messages of a server stream; a failure counts against the breaker."""
        name = _method_name(method)
        try:
            with self.breaker.calling():
                call = method(
                    request,
                    metadata=tuple(metadata),
                    timeout=timeout if timeout is not None else self.timeout_for(name),
                )
                async for message in call:
                    yield message
        except pybreaker.CircuitBreakerError:
            raise self._open_error() from None

    async def close(self) -> None:
        await self.channel.close()


def _method_name(method: Any) -> str:
    path = getattr(method, "_method", b"")
    return path.decode() if isinstance(path, bytes) else str(path)


def upstream_error(upstream: str, exc: grpc.aio.AioRpcError) -> ServiceError:
    """Turn an upstream's error into one this service returns to its own caller."""
    code = exc.code()
    if code in _FAILURE_CODES:
        return unavailable(f"upstream {upstream} failed: {exc.details()}")
    return ServiceError(code, exc.details() or f"upstream {upstream} returned {code.name}")
