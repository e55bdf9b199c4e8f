"""Call-level authorization: the OPA beside the workload decides every gRPC call.

The sidecar sets ``l5d-client-id`` to the verified peer identity, so the caller
comes from that header only. Before any handler runs, the interceptor POSTs
``{"input": {"caller", "destination", "method", "claims"?}}`` to OPA's Data API
at ``/v1/data/aiswa/authz/result`` (policies/rego/aiswa/authz.rego) and lets the
call proceed only on ``{"allow": true}``. The check fails closed: a timeout, a
connection error, an HTTP error or a malformed response is a denial.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import ipaddress
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import grpc
from prometheus_client import Counter

from ._auth import JWT_PAYLOAD_HEADER
from ._config import ConfigError
from ._logging import caller_var

log = logging.getLogger(__name__)

CALLER_HEADER = "l5d-client-id"
DECISION_PATH = "/v1/data/aiswa/authz/result"
# Every fail-closed denial starts with this, so callers and alerts can tell an
# outage of OPA from a policy decision.
UNAVAILABLE = "authorization service unavailable"

AUTHZ_DENIALS = Counter(
    "aiswa_authz_denials_total",
    "gRPC calls denied by call-level authorization. reason_kind is policy, "
    "invalid_claims, timeout, unreachable, opa_error or invalid_response",
    ["destination", "method", "reason_kind"],
)

_Metadata = Iterable[tuple[str, str | bytes]]

_denial_listeners: list[Callable[[dict[str, str]], None]] = []


def on_denial(listener: Callable[[dict[str, str]], None]) -> None:
    """Call ``listener`` with ``{"caller", "method", "reason", "reason_kind"}`` on every denial."""
    _denial_listeners.append(listener)


@dataclass(frozen=True, slots=True)
class Decision:
    """Outcome of one authorization check."""

    allow: bool
    reason: str
    # "allowed" or, for a denial, the reason_kind label of AUTHZ_DENIALS.
    kind: str


def _header(metadata: _Metadata | None, key: str) -> str:
    for name, value in metadata or ():
        if name == key:
            return value.decode() if isinstance(value, bytes) else value
    return ""


def _decode_claims(value: str) -> dict[str, Any]:
    """Decode the gateway's base64url JSON claims header, or raise ValueError."""
    padded = value + "=" * (-len(value) % 4)
    try:
        payload = json.loads(base64.urlsafe_b64decode(padded))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"it is not base64url JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise ValueError(f"it is JSON {type(payload).__name__}, not an object")
    return payload


def _check_loopback(opa_url: str) -> None:
    parts = urlsplit(opa_url)
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme not in ("http", "https") or not loopback:
        raise ValueError(
            f"OPA URL {opa_url!r} is invalid: it must be http(s) on a loopback address, "
            "because OPA runs beside the workload, e.g. http://127.0.0.1:8181"
        )


class AuthorizationInterceptor(grpc.aio.ServerInterceptor):
    """Ask OPA about every call to this server and abort denied calls.

    A denied call ends with ``PERMISSION_DENIED`` and the policy's reason, or a
    reason starting with "authorization service unavailable" when OPA returned no
    valid decision within ``timeout`` seconds. Each denial is counted in
    ``aiswa_authz_denials_total`` and logged with caller, method and reason.

    Example::

        authz = AuthorizationInterceptor("projects", "http://127.0.0.1:8181")
        server = grpc.aio.server(interceptors=[authz])
        ...
        await authz.aclose()
    """

    def __init__(self, destination: str, opa_url: str, timeout: float = 0.25,
                 *, namespace: str = "aiswa") -> None:
        _check_loopback(opa_url)
        if timeout <= 0:
            raise ValueError(f"timeout {timeout!r} is invalid; give seconds greater than 0")
        self.destination = destination
        self.opa_url = opa_url.rstrip("/")
        self.timeout = timeout
        # Only the gateway speaks for end users, so only its claims reach the policy.
        self._gateway = f"gateway.{namespace}.serviceaccount.identity.linkerd.cluster.local"
        self._client: aiohttp.ClientSession | None = None

    async def aclose(self) -> None:
        """Close the HTTP connections to OPA."""
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            # grpc returns UNIMPLEMENTED for methods that the server does not serve.
            return handler
        method = handler_call_details.method
        serializers = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._guard_unary(method, handler.unary_unary), **serializers)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._guard_stream(method, handler.unary_stream), **serializers)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._guard_unary(method, handler.stream_unary), **serializers)
        return grpc.stream_stream_rpc_method_handler(
            self._guard_stream(method, handler.stream_stream), **serializers)

    def _guard_unary(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._authorize(method, context)
            return await behavior(request, context)

        return guarded

    def _guard_stream(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await self._authorize(method, context)
            responses = behavior(request, context)
            if inspect.isasyncgen(responses):
                async for response in responses:
                    yield response
            elif inspect.isawaitable(responses):
                # A handler that sends its responses with context.write().
                await responses
            else:
                for response in responses:
                    yield response

        return guarded

    async def _authorize(self, method: str, context: grpc.aio.ServicerContext) -> None:
        metadata = context.invocation_metadata()
        caller = _header(metadata, CALLER_HEADER)
        caller_var.set(caller)
        remaining = context.time_remaining()
        timeout = self.timeout if remaining is None else max(min(self.timeout, remaining), 0.001)
        decision = await self.decide(method, caller, metadata, timeout)
        if decision.allow:
            return
        AUTHZ_DENIALS.labels(self.destination, method, decision.kind).inc()
        log.log(
            logging.WARNING if decision.kind in ("policy", "invalid_claims") else logging.ERROR,
            "call denied",
            extra={"caller": caller, "method": method, "destination": self.destination,
                   "reason": decision.reason, "reason_kind": decision.kind,
                   "opa_url": self.opa_url},
        )
        for listener in _denial_listeners:
            try:
                listener({"caller": caller, "method": method, "reason": decision.reason,
                          "reason_kind": decision.kind})
            except Exception:  # a listener must never change the decision
                log.exception("denial listener failed", extra={"method": method})
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, decision.reason)

    async def decide(self, method: str, caller: str, metadata: _Metadata | None = None,
                     timeout: float | None = None) -> Decision:
        """Ask OPA to decide one call; a missing or invalid decision is a denial."""
        document: dict[str, Any] = {
            "caller": caller, "destination": self.destination, "method": method,
        }
        claims_header = _header(metadata, JWT_PAYLOAD_HEADER) if caller == self._gateway else ""
        if claims_header:
            try:
                document["claims"] = _decode_claims(claims_header)
            except ValueError as exc:
                return Decision(False, f"the gateway's {JWT_PAYLOAD_HEADER} header is invalid: "
                                       f"{exc}", "invalid_claims")
        return await self._ask(document, self.timeout if timeout is None else timeout)

    async def _ask(self, document: dict[str, Any], timeout: float) -> Decision:
        url = self.opa_url + DECISION_PATH
        try:
            async with asyncio.timeout(timeout):
                async with self._http().post(url, json={"input": document}) as response:
                    status, text = response.status, await response.text()
        except TimeoutError:
            return Decision(False, f"{UNAVAILABLE}: the request to OPA timed out after "
                                   f"{timeout * 1000:.0f} ms", "timeout")
        except aiohttp.ClientError as exc:
            return Decision(False, f"{UNAVAILABLE}: the request to OPA failed: "
                                   f"{type(exc).__name__}: {exc}", "unreachable")
        if status != 200:
            return Decision(False, f"{UNAVAILABLE}: OPA returned HTTP {status}: "
                                   f"{text[:200]}", "opa_error")
        try:
            result = json.loads(text).get("result")
        except (ValueError, AttributeError):
            result = None
        if (not isinstance(result, dict) or not isinstance(result.get("allow"), bool)
                or not isinstance(result.get("reason"), str)):
            return Decision(False, f'{UNAVAILABLE}: OPA returned no {{"allow": bool, '
                                   f'"reason": string}} at {DECISION_PATH}: '
                                   f"{text[:200]}", "invalid_response")
        allow = result["allow"]
        return Decision(allow, result["reason"], "allowed" if allow else "policy")

    def _http(self) -> aiohttp.ClientSession:
        if self._client is None:
            # aiohttp, not httpx: it halves the time of a decision request (see
            # docs/benchmarks.md). trust_env=False: no proxy from the
            # environment may carry these calls away from loopback.
            # asyncio.timeout in _ask bounds each request.
            self._client = aiohttp.ClientSession(
                trust_env=False, timeout=aiohttp.ClientTimeout(total=None),
                connector=aiohttp.TCPConnector(limit=64, ttl_dns_cache=None))
        return self._client


def authorization_interceptor_from_env(service: str) -> AuthorizationInterceptor | None:
    """Build the interceptor for ``service`` from ``AISWA_OPA_URL``, or None when unset.

    ``AISWA_OPA_TIMEOUT`` sets the decision timeout in seconds (default 0.25), and
    ``AISWA_NAMESPACE`` the mesh namespace of the gateway identity (default aiswa).
    """
    opa_url = os.environ.get("AISWA_OPA_URL", "")
    if not opa_url:
        log.warning("AISWA_OPA_URL is not set: calls are not authorized by OPA",
                    extra={"destination": service})
        return None
    raw_timeout = os.environ.get("AISWA_OPA_TIMEOUT", "0.25")
    try:
        timeout = float(raw_timeout)
    except ValueError:
        timeout = float("nan")
    if not timeout > 0:
        raise ConfigError(f"AISWA_OPA_TIMEOUT={raw_timeout!r} is invalid; give seconds "
                          "greater than 0, e.g. 0.25")
    try:
        interceptor = AuthorizationInterceptor(
            service, opa_url, timeout, namespace=os.environ.get("AISWA_NAMESPACE", "aiswa"))
    except ValueError as exc:
        raise ConfigError(f"AISWA_OPA_URL: {exc}") from None
    log.info("call-level authorization enabled",
             extra={"destination": service, "opa_url": interceptor.opa_url, "timeout": timeout})
    return interceptor
