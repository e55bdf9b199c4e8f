"""AuthorizationInterceptor against a real `opa run --server` with policies/rego.

A grpc.aio server on loopback serves the health service and two methods under
the projects service's name (GetProject unary, ReadArchive server-streaming),
with the interceptor for destination "projects". Callers set l5d-client-id as
the sidecar would. Fail-closed cases use a stopped OPA or a local HTTP stub
that responds wrongly or never.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import REGISTRY

from aiswa_mesh.localca import free_port
from aiswa_runtime import ConfigError
from aiswa_runtime._authz import AuthorizationInterceptor, authorization_interceptor_from_env
from aiswa_runtime._logging import _ContextFilter
from aiswa_runtime._server import _ContextInterceptor

ROOT = Path(__file__).resolve().parents[2]
OPA = ROOT / ".state" / "tools" / "go" / "bin" / "opa"
POLICY_DIR = ROOT / "policies" / "rego"

SERVICE = "aiswa.projects.v1.ProjectsService"
GET_PROJECT = f"/{SERVICE}/GetProject"
READ_ARCHIVE = f"/{SERVICE}/ReadArchive"
ADD_MEMBER = f"/{SERVICE}/AddMember"
WATCH_RUNS = f"/{SERVICE}/WatchRuns"


def identity(account: str) -> str:
    return f"{account}.aiswa.serviceaccount.identity.linkerd.cluster.local"


def claims_header(claims: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")


def denials(method: str, kind: str) -> float:
    labels = {"destination": "projects", "method": method, "reason_kind": kind}
    return REGISTRY.get_sample_value("aiswa_authz_denials_total", labels) or 0.0


# --- OPA and stand-ins for it -------------------------------------------------


class OpaProcess:
    """`opa run --server` on a free loopback port, with the version check off."""

    def __init__(self, policy_dir: Path, log_file: Path, *, watch: bool = False) -> None:
        if not OPA.exists():
            pytest.fail(f"{OPA} is missing; install it with `bash scripts/install-opa.sh`")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [str(OPA), "run", "--server", "--addr", f"127.0.0.1:{self.port}",
                   "--skip-version-check", "--log-level", "error", str(policy_dir)]
        if watch:
            command.insert(-1, "--watch")
        self._log = log_file.open("w")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        with httpx.Client(trust_env=False, timeout=1) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    pytest.fail(f"opa exited with status {self.process.returncode}; "
                                f"see {self._log.name}")
                try:
                    if client.get(f"{self.url}/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        self.stop()
        pytest.fail(f"opa did not become ready on {self.url} within 30 s; see {self._log.name}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class OpaStub:
    """HTTP/1.1 server on loopback that records each input and replies as configured.

    With ``status=None`` it reads the request and never replies.
    """

    def __init__(self, status: int | None = 200, body: str = "") -> None:
        self.status = status
        self.body = body
        self.inputs: list[dict[str, Any]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> OpaStub:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
                body = await reader.readexactly(int(length.group(1)) if length else 0)
                self.inputs.append(json.loads(body)["input"])
                if self.status is None:
                    await asyncio.Event().wait()
                payload = self.body.encode()
                head = (f"HTTP/1.1 {self.status} Stub\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(payload)}\r\n\r\n")
                writer.write(head.encode() + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


@pytest.fixture(scope="module")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaProcess]:
    server = OpaProcess(POLICY_DIR, tmp_path_factory.mktemp("opa") / "opa.log")
    yield server
    server.stop()


# --- the gRPC server under test -----------------------------------------------


async def _get_project(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"project"


async def _read_archive(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for chunk in (b"chunk-1", b"chunk-2"):
        yield chunk


async def _add_member(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    return b"+".join([request async for request in requests])


async def _watch_runs(requests: AsyncIterator[bytes],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


@contextlib.asynccontextmanager
async def serve(
    interceptor: AuthorizationInterceptor, outer: grpc.aio.ServerInterceptor | None = None
) -> AsyncIterator[grpc.aio.Channel]:
    """Start the test server with ``interceptor`` (inside ``outer``) and yield a channel."""
    server = grpc.aio.server(interceptors=[outer, interceptor] if outer else [interceptor])
    handlers = {
        "GetProject": grpc.unary_unary_rpc_method_handler(_get_project),
        "ReadArchive": grpc.unary_stream_rpc_method_handler(_read_archive),
        # Request-streaming stand-ins, so that all four kinds of call pass the guard.
        "AddMember": grpc.stream_unary_rpc_method_handler(_add_member),
        "WatchRuns": grpc.stream_stream_rpc_method_handler(_watch_runs),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection([SERVICE, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        await channel.close()
        await server.stop(None)
        await interceptor.aclose()


def metadata(
    account: str | None, claims: dict[str, Any] | str | None = None
) -> list[tuple[str, str]]:
    pairs = [("l5d-client-id", identity(account))] if account else []
    if isinstance(claims, dict):
        pairs.append(("x-jwt-payload", claims_header(claims)))
    elif isinstance(claims, str):
        pairs.append(("x-jwt-payload", claims))
    return pairs


async def get_project(channel: grpc.aio.Channel, account: str | None,
                      claims: dict[str, Any] | str | None = None) -> bytes:
    return await channel.unary_unary(GET_PROJECT)(b"", metadata=metadata(account, claims),
                                                  timeout=10)


async def read_archive(channel: grpc.aio.Channel, account: str | None) -> list[bytes]:
    call = channel.unary_stream(READ_ARCHIVE)(b"", metadata=metadata(account), timeout=10)
    return [chunk async for chunk in call]


# --- decisions of the real policy ---------------------------------------------


async def test_allowed_unary_call_passes(opa):
    async with serve(AuthorizationInterceptor("projects", opa.url, timeout=5)) as channel:
        assert await get_project(channel, "reflector") == b"project"


async def test_allowed_stream_call_passes(opa):
    async with serve(AuthorizationInterceptor("projects", opa.url, timeout=5)) as channel:
        assert await read_archive(channel, "reflector") == [b"chunk-1", b"chunk-2"]


async def test_ungranted_method_denied_with_reason(opa, caplog):
    caplog.set_level(logging.WARNING, logger="aiswa_runtime._authz")
    before = denials(READ_ARCHIVE, "policy")
    async with serve(AuthorizationInterceptor("projects", opa.url, timeout=5)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await read_archive(channel, "vision")
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.value.details() == (
        "vision.aiswa may not call /aiswa.projects.v1.ProjectsService/ReadArchive on projects: "
        "vision has no grant for ReadArchive on projects in data.aiswa.grants.service_methods"
    )
    assert denials(READ_ARCHIVE, "policy") == before + 1
    record = next(r for r in caplog.records if r.getMessage() == "call denied")
    assert record.caller == identity("vision")
    assert record.method == READ_ARCHIVE
    assert record.reason == error.value.details()


async def test_health_check_allowed_without_identity(opa):
    async with serve(AuthorizationInterceptor("projects", opa.url, timeout=5)) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_stream_denied(opa):
    async with serve(AuthorizationInterceptor("projects", opa.url, timeout=5)) as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")(
            iter([b""]), metadata=metadata("gateway", {"sub": "u-1", "role": "admin"}), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call.read()
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "serves aiswa.projects.v1.ProjectsService" in error.value.details()


async def test_gateway_claims_reach_policy(opa):
    viewer = {"sub": "u-1", "role": "viewer"}
    async with serve(AuthorizationInterceptor("projects", opa.url, timeout=5)) as channel:
        assert await get_project(channel, "gateway", viewer) == b"project"
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await get_project(channel, "gateway")
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "calls through the gateway need end-user claims" in error.value.details()


async def test_invalid_gateway_claims_denied(opa):
    before = denials(GET_PROJECT, "invalid_claims")
    async with serve(AuthorizationInterceptor("projects", opa.url, timeout=5)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await get_project(channel, "gateway", "not*base64")
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.value.details().startswith("the gateway's x-jwt-payload header is invalid")
    assert denials(GET_PROJECT, "invalid_claims") == before + 1


async def test_denial_inside_runtime_interceptor(opa, caplog):
    # With the runtime's context interceptor outside the authorization one, a denial
    # is logged with the request id and counted in aiswa_rpc_requests_total.
    caplog.set_level(logging.WARNING, logger="aiswa_runtime._authz")
    caplog.handler.addFilter(_ContextFilter())
    labels = {"service": "projects", "method": GET_PROJECT, "code": "CANCELLED_OR_ABORTED"}
    before = REGISTRY.get_sample_value("aiswa_rpc_requests_total", labels) or 0.0
    authz = AuthorizationInterceptor("projects", opa.url, timeout=5)
    async with serve(authz, outer=_ContextInterceptor("projects")) as channel:
        assert await get_project(channel, "vision") == b"project"
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await channel.unary_unary(GET_PROJECT)(
                b"", metadata=[*metadata("users"), ("x-request-id", "req-42")], timeout=10)
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.value.details().endswith("users.aiswa is not a client of projects in "
                                          "mesh/topology.yaml")
    record = next(r for r in caplog.records if r.getMessage() == "call denied")
    assert record.request_id == "req-42"
    assert record.caller == identity("users")
    assert REGISTRY.get_sample_value("aiswa_rpc_requests_total", labels) == before + 1


# --- the input that reaches OPA -----------------------------------------------


async def test_input_carries_gateway_claims_only():
    admin = {"sub": "u-1", "role": "admin"}
    allow = json.dumps({"result": {"allow": True, "reason": "stub"}})
    async with OpaStub(200, allow) as stub:
        async with serve(AuthorizationInterceptor("projects", stub.url, timeout=5)) as channel:
            await get_project(channel, "gateway", admin)
            await get_project(channel, "vision", admin)
    assert stub.inputs[0] == {"caller": identity("gateway"), "destination": "projects",
                              "method": GET_PROJECT, "claims": admin}
    assert stub.inputs[1] == {"caller": identity("vision"), "destination": "projects",
                              "method": GET_PROJECT}


async def test_every_call_kind_guarded():
    allow = json.dumps({"result": {"allow": True, "reason": "stub"}})
    async with OpaStub(200, allow) as stub:
        async with serve(AuthorizationInterceptor("projects", stub.url, timeout=5)) as channel:
            unary = await get_project(channel, "reflector")
            streamed = await read_archive(channel, "reflector")
            gathered = await channel.stream_unary(ADD_MEMBER)(iter([b"a", b"b"]), timeout=10)
            echoed = [m async for m in channel.stream_stream(WATCH_RUNS)(iter([b"c"]), timeout=10)]
    assert unary == b"project"
    assert streamed == [b"chunk-1", b"chunk-2"]
    assert gathered == b"a+b"
    assert echoed == [b"c"]
    assert [document["method"] for document in stub.inputs] == [
        GET_PROJECT, READ_ARCHIVE, ADD_MEMBER, WATCH_RUNS]


# --- fail closed --------------------------------------------------------------


async def test_stopped_opa_fails_closed(tmp_path):
    server = OpaProcess(POLICY_DIR, tmp_path / "opa.log")
    before = denials(GET_PROJECT, "unreachable")
    try:
        async with serve(AuthorizationInterceptor("projects", server.url, timeout=5)) as channel:
            assert await get_project(channel, "reflector") == b"project"
            server.stop()
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await get_project(channel, "reflector")
    finally:
        server.stop()
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.value.details().startswith(
        "authorization service unavailable: the request to OPA failed: ClientConnectorError")
    assert denials(GET_PROJECT, "unreachable") == before + 1


async def test_silent_opa_denied_within_timeout():
    before = denials(GET_PROJECT, "timeout")
    async with OpaStub(status=None) as stub:
        async with serve(AuthorizationInterceptor("projects", stub.url, timeout=0.25)) as channel:
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await get_project(channel, "reflector")
            elapsed = time.monotonic() - started
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.value.details() == (
        "authorization service unavailable: the request to OPA timed out after 250 ms"
    )
    # The 0.75 s beyond the timeout are a margin for a loaded test machine.
    assert 0.25 <= elapsed < 1.0
    assert denials(GET_PROJECT, "timeout") == before + 1


@pytest.mark.parametrize(("status", "body", "kind"), [
    (500, '{"code": "internal_error"}', "opa_error"),
    (200, "{}", "invalid_response"),
    (200, '{"result": {"allow": "true", "reason": "string, not bool"}}', "invalid_response"),
    (200, '{"result": {"allow": true}}', "invalid_response"),
    (200, "not json", "invalid_response"),
], ids=["http-500", "undefined", "allow-not-bool", "no-reason", "not-json"])
async def test_bad_opa_response_fails_closed(status, body, kind):
    before = denials(GET_PROJECT, kind)
    async with OpaStub(status, body) as stub:
        async with serve(AuthorizationInterceptor("projects", stub.url, timeout=5)) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await get_project(channel, "reflector")
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.value.details().startswith("authorization service unavailable: ")
    assert denials(GET_PROJECT, kind) == before + 1


# --- policy changes while OPA runs --------------------------------------------


async def test_grant_edit_applies_with_watch(tmp_path):
    policy_dir = tmp_path / "rego"
    shutil.copytree(POLICY_DIR, policy_dir)
    server = OpaProcess(policy_dir, tmp_path / "opa.log", watch=True)
    try:
        async with serve(AuthorizationInterceptor("projects", server.url, timeout=5)) as channel:
            assert await get_project(channel, "vision") == b"project"
            grants_file = policy_dir / "aiswa" / "grants" / "data.yaml"
            grants = yaml.safe_load(grants_file.read_text())
            grants["service_methods"]["projects"]["vision"] = []
            grants_file.write_text(yaml.safe_dump(grants))
            error = None
            deadline = time.monotonic() + 20
            while error is None and time.monotonic() < deadline:
                try:
                    await get_project(channel, "vision")
                    await asyncio.sleep(0.1)
                except grpc.aio.AioRpcError as exc:
                    error = exc
    finally:
        server.stop()
    assert error is not None, "OPA did not apply the edited grants within 20 s"
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details().endswith("vision has no grant for GetProject on projects in "
                                    "data.aiswa.grants.service_methods")


# --- configuration ------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://10.0.0.8:8181", "http://opa.example.org:8181",
                                 "unix:///run/opa.sock", "127.0.0.1:8181"])
def test_non_loopback_url_rejected(url):
    with pytest.raises(ValueError, match="loopback"):
        AuthorizationInterceptor("projects", url)


def test_from_env_unset_returns_none(monkeypatch):
    monkeypatch.delenv("AISWA_OPA_URL", raising=False)
    assert authorization_interceptor_from_env("projects") is None


def test_from_env_builds_interceptor(monkeypatch):
    monkeypatch.setenv("AISWA_OPA_URL", "http://[::1]:8181/")
    monkeypatch.setenv("AISWA_OPA_TIMEOUT", "0.5")
    interceptor = authorization_interceptor_from_env("projects")
    assert interceptor is not None
    assert interceptor.destination == "projects"
    assert interceptor.opa_url == "http://[::1]:8181"
    assert interceptor.timeout == 0.5


@pytest.mark.parametrize(("name", "value"), [("AISWA_OPA_URL", "http://10.0.0.8:8181"),
                                             ("AISWA_OPA_TIMEOUT", "fast"),
                                             ("AISWA_OPA_TIMEOUT", "0")])
def test_from_env_rejects_invalid(monkeypatch, name, value):
    monkeypatch.setenv("AISWA_OPA_URL", "http://127.0.0.1:8181")
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        authorization_interceptor_from_env("projects")
