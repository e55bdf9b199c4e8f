"""The Envoy gateway, run from its rendered config in front of test gRPC backends.

Each gateway is a real Envoy process on free loopback ports, with TLS from
aiswa_mesh.pki, in front of grpc.aio test servers for the users and projects
services. Nothing here needs the running platform.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
import os
import signal
import ssl
import stat
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import pytest
import pytest_asyncio
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from google.api import httpbody_pb2

from aiswa.projects.v1 import projects_pb2, projects_pb2_grpc
from aiswa.reflector.v1 import reflector_pb2, reflector_pb2_grpc
from aiswa.users.v1 import users_pb2, users_pb2_grpc
from aiswa_mesh.localca import free_port
from aiswa_mesh.envoy_gateway import envoy_binary, render_gateway_config, write_gateway_config
from aiswa_mesh.pki import GatewayTls, ensure_gateway_tls

ROOT = Path(__file__).resolve().parents[2]
DESCRIPTOR_SET = ROOT / ".state" / "gen" / "aiswa.pb"
TOPOLOGY = ROOT / "mesh" / "topology.yaml"

PAYLOAD_HEADER = "x-jwt-payload"
FIXED_TOKEN = "fixed-test-token"
KEY_ID = "gateway-test-key"
MIB = 1024 * 1024
# Larger than the 1 MiB default of Envoy's buffer limits.
LARGE_RESPONSE_BYTES = 8 * MIB


# --- test backends --------------------------------------------------------------


@dataclass
class Calls:
    """The methods that the test backends served, with the metadata of each call."""

    records: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)

    def record(self, method: str, context: grpc.aio.ServicerContext) -> list[tuple[str, str]]:
        metadata = [(key, value) for key, value in context.invocation_metadata() or ()
                    if isinstance(value, str)]
        self.records.append((method, metadata))
        return metadata

    def of(self, method: str) -> list[list[tuple[str, str]]]:
        return [metadata for name, metadata in self.records if name == method]


def _payload_values(metadata: list[tuple[str, str]]) -> list[str]:
    return [value for key, value in metadata if key == PAYLOAD_HEADER]


class UsersBackend(users_pb2_grpc.UsersServiceServicer):
    def __init__(self, jwks: dict, calls: Calls) -> None:
        self.jwks = jwks
        self.calls = calls

    async def CreateToken(self, request, context):  # noqa: N802 - gRPC method name
        self.calls.record("CreateToken", context)
        return users_pb2.CreateTokenResponse(
            access_token=FIXED_TOKEN, token_type="Bearer", expires_in=900
        )

    async def GetJwks(self, request, context):  # noqa: N802
        self.calls.record("GetJwks", context)
        return httpbody_pb2.HttpBody(
            content_type="application/json", data=json.dumps(self.jwks).encode()
        )

    async def GetCurrentUser(self, request, context):  # noqa: N802
        metadata = self.calls.record("GetCurrentUser", context)
        # Echo every x-jwt-payload value received, so a test can see duplicates.
        return users_pb2.User(user_id=",".join(_payload_values(metadata)))


class ProjectsBackend(projects_pb2_grpc.ProjectsServiceServicer):
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    async def GetProject(self, request, context):  # noqa: N802
        self.calls.record("GetProject", context)
        if request.project_id == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "project missing not found")
        if request.project_id == "large":
            return projects_pb2.Project(project_id="large", name="n" * LARGE_RESPONSE_BYTES)
        return projects_pb2.Project(project_id=request.project_id, name="echo")

    async def UploadArchive(self, request, context):  # noqa: N802
        self.calls.record("UploadArchive", context)
        return projects_pb2.Archive(
            project_id=request.project_id,
            filename=request.filename,
            compressed_bytes=len(request.content),
            sha256=hashlib.sha256(request.content).hexdigest(),
        )

    async def ReadArchive(self, request, context):  # noqa: N802
        self.calls.record("ReadArchive", context)
        yield projects_pb2.ArchiveChunk(data=b"secret archive bytes", offset=0, total_bytes=20)


@dataclass
class Backends:
    server: grpc.aio.Server
    port: int
    calls: Calls
    signing_key: ec.EllipticCurvePrivateKey


def _jwks(key: ec.EllipticCurvePrivateKey) -> dict:
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": KEY_ID, "use": "sig", "alg": "ES256"})
    return {"keys": [jwk]}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def backends() -> AsyncIterator[Backends]:
    signing_key = ec.generate_private_key(ec.SECP256R1())
    calls = Calls()
    # The upload tests send 40 MiB and more, and gRPC's default receive limit is 4 MiB.
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 96 * MIB)])
    users_pb2_grpc.add_UsersServiceServicer_to_server(UsersBackend(_jwks(signing_key), calls), server)
    projects_pb2_grpc.add_ProjectsServiceServicer_to_server(ProjectsBackend(calls), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield Backends(server, port, calls, signing_key)
    await server.stop(grace=None)


# --- the gateway process -------------------------------------------------------------


@dataclass
class Gateway:
    url: str
    admin_url: str
    https_port: int
    tls: GatewayTls
    access_log: Path
    process: subprocess.Popen[bytes]


def _test_topology(rate_limit: dict[str, int]) -> dict:
    topology = copy.deepcopy(yaml.safe_load(TOPOLOGY.read_text()))
    topology["gateway"]["https_port"] = free_port()
    topology["gateway"]["admin_port"] = free_port()
    topology["gateway"]["rate_limit"] = rate_limit
    return topology


async def _start_gateway(folder: Path, backends: Backends, rate_limit: dict[str, int]) -> Gateway:
    if not DESCRIPTOR_SET.exists():
        pytest.fail(f"{DESCRIPTOR_SET} is missing; run `bash scripts/setup.sh` first")
    topology = _test_topology(rate_limit)
    tls = ensure_gateway_tls(folder / "pki")
    access_log = folder / "access.log"

    # Reflector and vision get a closed port: no test calls them, and no call
    # may reach a platform that happens to run on the topology's ports.
    closed_port = free_port()
    hosts = {
        "users": ("127.0.0.1", backends.port),
        "projects": ("127.0.0.1", backends.port),
        "reflector": ("127.0.0.1", closed_port),
        "vision": ("127.0.0.1", closed_port),
    }
    config = write_gateway_config(
        topology, path=folder / "gateway.yaml", descriptor_set=DESCRIPTOR_SET, tls=tls,
        access_log=access_log, service_hosts=hosts,
    )

    process = subprocess.Popen(
        [str(envoy_binary()), "-c", str(config), "--disable-hot-restart",
         "--log-level", "warn", "--log-path", str(folder / "envoy.log")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    gateway = Gateway(
        url=f"https://127.0.0.1:{topology['gateway']['https_port']}",
        admin_url=f"http://127.0.0.1:{topology['gateway']['admin_port']}",
        https_port=topology["gateway"]["https_port"],
        tls=tls,
        access_log=access_log,
        process=process,
    )
    try:
        await _wait_ready(gateway, folder / "envoy.log")
    except BaseException:
        _stop(process)
        raise
    return gateway


async def _wait_ready(gateway: Gateway, log: Path, timeout: float = 30.0) -> None:
    """Wait until Envoy is LIVE and jwt_authn has fetched the JWKS through the gateway."""
    deadline = time.monotonic() + timeout
    state = "not started"
    async with httpx.AsyncClient(base_url=gateway.admin_url, timeout=2) as admin:
        while time.monotonic() < deadline:
            if gateway.process.poll() is not None:
                pytest.fail(f"envoy exited with code {gateway.process.returncode}:\n"
                            f"{log.read_text(errors='replace')[-3000:]}")
            try:
                ready = await admin.get("/ready")
                stats = await admin.get("/stats", params={"filter": "jwks_fetch_success"})
            except httpx.TransportError as exc:
                state = f"admin not reachable ({exc!r})"
            else:
                fetched = any(line.rsplit(":", 1)[-1].strip() not in ("", "0")
                              for line in stats.text.splitlines())
                state = f"ready={ready.text.strip()} jwks_fetched={fetched}"
                if ready.status_code == 200 and fetched:
                    return
            await asyncio.sleep(0.2)
    pytest.fail(f"the gateway was not ready within {timeout:.0f} s ({state}):\n"
                f"{log.read_text(errors='replace')[-3000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(backends, tmp_path_factory) -> AsyncIterator[Gateway]:
    # A bucket large enough that no test but the rate-limit one gets a 429.
    folder = tmp_path_factory.mktemp("gateway")
    running = await _start_gateway(
        folder, backends, {"max_tokens": 10000, "tokens_per_fill": 10000, "fill_interval_seconds": 1}
    )
    yield running
    _stop(running.process)


def _trusting(gateway: Gateway) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(gateway.tls.ca_cert))


@pytest_asyncio.fixture(loop_scope="session")
async def client(gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=gateway.url, verify=_trusting(gateway), timeout=60
    ) as http:
        yield http


# --- tokens ------------------------------------------------------------------------


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": "aiswa-users",
        "aud": "aiswa-api",
        "sub": "user-1",
        "email": "user-1@example.test",
        "role": "viewer",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    }
    claims.update(overrides)
    return {key: value for key, value in claims.items() if value is not None}


def _token(key: ec.EllipticCurvePrivateKey, **overrides: Any) -> str:
    return jwt.encode(_claims(**overrides), key, algorithm="ES256", headers={"kid": KEY_ID})


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _decode_segment(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _encode_segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _tampered(token: str) -> str:
    """Change one byte of the payload ("user-1" to "user-2") and keep the signature."""
    header, payload, signature = token.split(".")
    changed = _decode_segment(payload).replace(b'"user-1"', b'"user-2"', 1)
    assert changed != _decode_segment(payload)
    return f"{header}.{_encode_segment(changed)}.{signature}"


# --- authentication ----------------------------------------------------------------


async def test_create_token_needs_no_token(client, backends):
    reply = await client.post("/v1/auth/token", json={"api_key": "aiswa_k_secret"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["access_token"] == FIXED_TOKEN
    # print_options: zero values are present, under the .proto field names.
    assert reply.json()["token_type"] == "Bearer"
    assert reply.json()["expires_in"] == 900


async def test_jwks_needs_no_token(client, backends):
    reply = await client.get("/.well-known/jwks.json")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert [key["kid"] for key in reply.json()["keys"]] == [KEY_ID]


async def test_missing_token_rejected(client, backends):
    before = len(backends.calls.of("GetCurrentUser"))
    reply = await client.get("/v1/users/me")
    assert reply.status_code == 401
    assert len(backends.calls.of("GetCurrentUser")) == before
    # Envoy's own replies come as JSON in the transcoder's shape, with what to do next.
    assert reply.headers["content-type"] == "application/json"
    assert reply.json()["code"] == 16
    assert reply.json()["message"].startswith("Jwt is missing. ")
    assert "POST /v1/auth/token" in reply.json()["message"]
    assert reply.json()["details"] == []


async def test_gateway_errors_have_service_error_keys(client, backends):
    """The gateway's own errors and the services' transcoded ones have the same keys."""
    route_404 = await client.get("/v1/no-such-thing", headers=_bearer(_token(backends.signing_key)))
    token_401 = await client.get("/v1/users/me")
    service_404 = await client.get("/v1/projects/missing",
                                   headers=_bearer(_token(backends.signing_key)))
    assert service_404.status_code == 404
    assert sorted(service_404.json()) == ["code", "details", "message"]
    assert sorted(route_404.json()) == sorted(service_404.json())
    assert sorted(token_401.json()) == sorted(service_404.json())


async def test_body_not_json_gets_advice(client, backends):
    headers = {**_bearer(_token(backends.signing_key)), "content-type": "application/json"}
    before = len(backends.calls.of("CreateProject"))
    reply = await client.post("/v1/projects", content=b"name=demo", headers=headers)
    assert reply.status_code == 400, reply.text
    assert len(backends.calls.of("CreateProject")) == before
    assert reply.json()["code"] == 3
    assert "docs/api/aiswa.swagger.json" in reply.json()["message"]


async def test_valid_token_forwards_claims(client, backends):
    reply = await client.get("/v1/users/me", headers=_bearer(_token(backends.signing_key)))
    assert reply.status_code == 200, reply.text
    received = reply.json()["user_id"].split(",")
    assert len(received) == 1
    claims = json.loads(_decode_segment(received[0]))
    assert claims["sub"] == "user-1"
    assert claims["role"] == "viewer"
    assert claims["aud"] == "aiswa-api"
    # always_print_primitive_fields and preserve_proto_field_names.
    assert reply.json()["email"] == ""
    assert reply.json()["role"] == "ROLE_UNSPECIFIED"
    # The token itself is not forwarded, only its verified payload.
    forwarded = backends.calls.of("GetCurrentUser")[-1]
    assert "authorization" not in {key for key, _ in forwarded}


def _other_key_token() -> str:
    # Same kid as the published key, so the gateway must check the signature.
    return _token(ec.generate_private_key(ec.SECP256R1()))


INVALID_TOKENS = {
    "tampered": lambda key: _tampered(_token(key)),
    # Past the gateway's 60 s clock-skew allowance.
    "expired": lambda key: _token(key, iat=int(time.time()) - 7200, nbf=int(time.time()) - 7200,
                                  exp=int(time.time()) - 3600),
    "other_key": lambda key: _other_key_token(),
    "wrong_audience": lambda key: _token(key, aud="another-api"),
    "wrong_issuer": lambda key: _token(key, iss="someone-else"),
    "no_expiry": lambda key: _token(key, exp=None),
    "not_yet_valid": lambda key: _token(key, nbf=int(time.time()) + 3600,
                                        exp=int(time.time()) + 7200),
}


@pytest.mark.parametrize("kind", sorted(INVALID_TOKENS))
async def test_invalid_token_rejected(client, backends, kind):
    before = len(backends.calls.of("GetCurrentUser"))
    token = INVALID_TOKENS[kind](backends.signing_key)
    reply = await client.get("/v1/users/me", headers=_bearer(token))
    assert reply.status_code == 401, reply.text
    assert len(backends.calls.of("GetCurrentUser")) == before
    assert reply.json()["code"] == 16
    assert "Authorization: Bearer TOKEN" in reply.json()["message"]


async def test_token_in_query_rejected(client, backends):
    # Only the Authorization header carries tokens, because query strings end up in logs.
    token = _token(backends.signing_key)
    reply = await client.get("/v1/users/me", params={"access_token": token})
    assert reply.status_code == 401


async def test_forged_payload_header_replaced(client, backends):
    forged = _encode_segment(json.dumps({"sub": "admin-0", "role": "admin"}).encode())
    headers = {**_bearer(_token(backends.signing_key)), PAYLOAD_HEADER: forged}
    reply = await client.get("/v1/users/me", headers=headers)
    assert reply.status_code == 200, reply.text
    received = _payload_values(backends.calls.of("GetCurrentUser")[-1])
    assert forged not in received
    assert len(received) == 1
    assert json.loads(_decode_segment(received[0]))["sub"] == "user-1"


async def test_forged_payload_header_without_token_rejected(client, backends):
    forged = _encode_segment(json.dumps({"sub": "admin-0", "role": "admin"}).encode())
    before = len(backends.calls.of("GetCurrentUser"))
    reply = await client.get("/v1/users/me", headers={PAYLOAD_HEADER: forged})
    assert reply.status_code == 401
    assert len(backends.calls.of("GetCurrentUser")) == before


async def test_forged_payload_header_dropped_on_public_method(client, backends):
    forged = _encode_segment(json.dumps({"sub": "admin-0", "role": "admin"}).encode())
    reply = await client.post("/v1/auth/token", json={"api_key": "k"}, headers={PAYLOAD_HEADER: forged})
    assert reply.status_code == 200, reply.text
    assert _payload_values(backends.calls.of("CreateToken")[-1]) == []


# --- routing and transcoding --------------------------------------------------------


async def test_internal_method_returns_404(client, backends):
    headers = {**_bearer(_token(backends.signing_key)), "content-type": "application/json"}
    reply = await client.post(
        "/aiswa.projects.v1.ProjectsService/ReadArchive", json={"archive_id": "a1"}, headers=headers
    )
    assert reply.status_code == 404
    assert reply.json()["message"] == "no such API method"
    assert backends.calls.of("ReadArchive") == []


async def test_internal_method_unimplemented_for_grpc(gateway, backends):
    async with _grpc_channel(gateway) as channel:
        stub = projects_pb2_grpc.ProjectsServiceStub(channel)
        metadata = (("authorization", f"Bearer {_token(backends.signing_key)}"),)
        call = stub.ReadArchive(projects_pb2.ReadArchiveRequest(archive_id="a1"), metadata=metadata)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            async for _ in call:
                pass
    # Envoy maps its local 404 to UNIMPLEMENTED for gRPC clients.
    assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert backends.calls.of("ReadArchive") == []
    # The backend does serve the method, so the gateway alone blocked it.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{backends.port}") as direct:
        stub = projects_pb2_grpc.ProjectsServiceStub(direct)
        chunks = [chunk async for chunk in stub.ReadArchive(
            projects_pb2.ReadArchiveRequest(archive_id="a1"))]
    assert len(chunks) == 1


async def test_grpc_error_becomes_json_404(client, backends):
    reply = await client.get("/v1/projects/missing", headers=_bearer(_token(backends.signing_key)))
    assert reply.status_code == 404
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert body["code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert body["message"] == "project missing not found"


async def test_rest_path_parameter_transcoded(client, backends):
    reply = await client.get("/v1/projects/p-42", headers=_bearer(_token(backends.signing_key)))
    assert reply.status_code == 200, reply.text
    assert reply.json()["project_id"] == "p-42"
    # preserve_proto_field_names gives owner_id, not ownerId, printed even when empty.
    assert reply.json()["owner_id"] == ""


async def test_large_response_transcoded(client, backends):
    reply = await client.get("/v1/projects/large", headers=_bearer(_token(backends.signing_key)))
    assert reply.status_code == 200, reply.text[:500]
    assert len(reply.json()["name"]) == LARGE_RESPONSE_BYTES


async def test_unknown_query_parameter_rejected(client, backends):
    reply = await client.get(
        "/v1/projects/p-1", params={"colour": "red"}, headers=_bearer(_token(backends.signing_key))
    )
    assert reply.status_code == 400
    assert reply.json()["code"] == 3
    assert "colour" in reply.json()["message"]
    assert "as query parameters" in reply.json()["message"]


async def test_unknown_path_returns_404(client, backends):
    reply = await client.get("/v1/no-such-thing", headers=_bearer(_token(backends.signing_key)))
    assert reply.status_code == 404
    assert reply.headers["content-type"] == "application/json"
    assert reply.json()["message"] == "no API method at this path"


async def test_grpc_client_routed(gateway, backends):
    async with _grpc_channel(gateway) as channel:
        stub = users_pb2_grpc.UsersServiceStub(channel)
        metadata = (("authorization", f"Bearer {_token(backends.signing_key)}"),)
        user = await stub.GetCurrentUser(users_pb2.GetCurrentUserRequest(), metadata=metadata)
        assert json.loads(_decode_segment(user.user_id))["sub"] == "user-1"
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.GetCurrentUser(users_pb2.GetCurrentUserRequest())
        with pytest.raises(grpc.aio.AioRpcError) as wrong_audience:
            await stub.GetCurrentUser(users_pb2.GetCurrentUserRequest(), metadata=(
                ("authorization", f"Bearer {_token(backends.signing_key, aud='another-api')}"),))
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # gRPC clients keep Envoy's plain message, not the JSON that REST clients get.
    assert failure.value.details() == "Jwt is missing"
    assert wrong_audience.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert wrong_audience.value.details() == "Audiences in Jwt are not allowed"


async def test_grpc_public_method_needs_no_token(gateway, backends):
    async with _grpc_channel(gateway) as channel:
        stub = users_pb2_grpc.UsersServiceStub(channel)
        reply = await stub.CreateToken(users_pb2.CreateTokenRequest(api_key="k"))
    assert reply.access_token == FIXED_TOKEN


def _grpc_channel(gateway: Gateway) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(gateway.tls.ca_cert.read_bytes())
    return grpc.aio.secure_channel(f"127.0.0.1:{gateway.https_port}", credentials)


async def test_40_mib_upload_passes(client, backends):
    content = os.urandom(30 * MIB)
    body = json.dumps({
        "filename": "big.tar.gz", "content": base64.b64encode(content).decode(),
    }).encode()
    assert len(body) >= 40 * MIB
    headers = {**_bearer(_token(backends.signing_key)), "content-type": "application/json"}
    reply = await client.post("/v1/projects/p-1/archives", content=body, headers=headers)
    assert reply.status_code == 200, reply.text[:500]
    assert int(reply.json()["compressed_bytes"]) == len(content)
    assert reply.json()["sha256"] == hashlib.sha256(content).hexdigest()


async def test_grpc_40_mib_upload_passes(gateway, backends):
    content = os.urandom(40 * MIB)
    async with _grpc_channel(gateway) as channel:
        stub = projects_pb2_grpc.ProjectsServiceStub(channel)
        metadata = (("authorization", f"Bearer {_token(backends.signing_key)}"),)
        archive = await stub.UploadArchive(
            projects_pb2.UploadArchiveRequest(project_id="p-1", filename="big.tar.gz",
                                              content=content),
            metadata=metadata,
        )
    assert archive.compressed_bytes == len(content)
    assert archive.sha256 == hashlib.sha256(content).hexdigest()


async def test_upload_over_limit_rejected(client, backends):
    limit = yaml.safe_load(TOPOLOGY.read_text())["gateway"]["max_request_bytes"]
    body = b'{"filename": "huge.tar.gz", "content": "' + b"A" * limit + b'"}'
    headers = {**_bearer(_token(backends.signing_key)), "content-type": "application/json"}
    before = len(backends.calls.of("UploadArchive"))
    reply = await client.post("/v1/projects/p-1/archives", content=body, headers=headers)
    assert reply.status_code == 413
    assert len(backends.calls.of("UploadArchive")) == before
    assert reply.json()["code"] == 8
    assert f"at most {limit} bytes" in reply.json()["message"]


async def test_unreachable_service_gets_json_503(client, backends):
    # Reflector's port is closed in these tests.
    reply = await client.get("/v1/runs/r-1/report", headers=_bearer(_token(backends.signing_key)))
    assert reply.status_code == 503
    assert reply.headers["content-type"] == "application/json"
    assert reply.json()["code"] == 14
    assert reply.json()["message"].endswith("unavailable. Retry later.")


async def test_unreachable_service_plain_for_grpc(gateway, backends):
    metadata = (("authorization", f"Bearer {_token(backends.signing_key)}"),)
    async with _grpc_channel(gateway) as channel:
        stub = reflector_pb2_grpc.ReflectorServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.GetReport(reflector_pb2.GetReportRequest(run_id="r-1"), metadata=metadata)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert failure.value.details().startswith("upstream connect error")
    assert "Retry later" not in failure.value.details()


# --- transport and logs ---------------------------------------------------------------


async def test_plain_http_fails(gateway):
    async with httpx.AsyncClient(timeout=10) as plain:
        with pytest.raises(httpx.TransportError) as failure:
            await plain.post(f"http://127.0.0.1:{gateway.https_port}/v1/auth/token", json={})
    # The TCP connection opens; the TLS listener then closes it without an HTTP reply.
    assert not isinstance(failure.value, httpx.ConnectError)


async def test_access_log_records_request(client, gateway, backends):
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    reply = await client.get(
        "/v1/users/me", headers={**_bearer(_token(backends.signing_key)), "traceparent": traceparent}
    )
    assert reply.status_code == 200
    request_id = reply.headers["x-request-id"]
    record = await _access_log_record(gateway.access_log, request_id)
    # Envoy's tracer continues the client's trace with a span of its own, so
    # the logged header keeps the trace id and names the gateway's span.
    version, trace_id, parent_id, flags = record["traceparent"].split("-")
    assert trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert parent_id != "00f067aa0ba902b7"
    assert record["status"] == 200
    assert record["grpc_status"] == 0
    assert record["upstream_cluster"] == "users"
    assert record["path"] == "/v1/users/me"
    assert isinstance(record["duration_ms"], int)


async def _access_log_record(path: Path, request_id: str, timeout: float = 10.0) -> dict:
    # Envoy flushes the access log about once a second.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if record.get("request_id") == request_id:
                    return record
        await asyncio.sleep(0.2)
    pytest.fail(f"no access log line with request_id {request_id} in {path} within {timeout} s")


# --- rate limit ----------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def limited_gateway(backends, tmp_path_factory) -> AsyncIterator[Gateway]:
    # Five tokens that refill only after a minute, so a burst of 20 must hit the limit.
    folder = tmp_path_factory.mktemp("limited-gateway")
    running = await _start_gateway(
        folder, backends, {"max_tokens": 5, "tokens_per_fill": 5, "fill_interval_seconds": 60}
    )
    yield running
    _stop(running.process)


async def test_burst_over_rate_limit_gets_429(limited_gateway):
    async with httpx.AsyncClient(
        base_url=limited_gateway.url, verify=_trusting(limited_gateway), timeout=30
    ) as http:
        replies = await asyncio.gather(*(
            http.post("/v1/auth/token", json={"api_key": "k"}) for _ in range(20)
        ))
    statuses = [reply.status_code for reply in replies]
    limited = [reply for reply in replies if reply.status_code == 429]
    assert limited, statuses
    assert 200 in statuses
    assert set(statuses) <= {200, 429}
    assert limited[0].headers["x-ratelimit-limit"] == "5"
    assert limited[0].headers["x-ratelimit-remaining"] == "0"
    assert limited[0].json()["code"] == 8
    assert limited[0].json()["message"] == (
        "local_rate_limited. The gateway takes 5 requests per 60 s after a burst of 5. "
        "Wait 60 s and retry.")


# --- configuration and certificates ------------------------------------------------------


def test_unknown_public_method_rejected(tmp_path):
    topology = _test_topology({"max_tokens": 1, "tokens_per_fill": 1, "fill_interval_seconds": 1})
    topology["workloads"]["users"]["public_methods"].append("NoSuchMethod")
    with pytest.raises(ValueError, match="NoSuchMethod"):
        render_gateway_config(
            topology, descriptor_set=DESCRIPTOR_SET, tls=ensure_gateway_tls(tmp_path),
            access_log=tmp_path / "access.log",
        )


def test_written_config_names_its_command(tmp_path):
    topology = _test_topology({"max_tokens": 1, "tokens_per_fill": 1, "fill_interval_seconds": 1})
    path = write_gateway_config(
        topology, path=tmp_path / "gateway.yaml", descriptor_set=DESCRIPTOR_SET,
        tls=ensure_gateway_tls(tmp_path / "pki"), access_log=tmp_path / "access.log",
    )
    assert path.read_text().startswith("# Generated by `")
    assert yaml.safe_load(path.read_text())["admin"]["address"]["socket_address"]["address"] == (
        "127.0.0.1"
    )


def test_pki_keys_private_and_reused(tmp_path):
    first = ensure_gateway_tls(tmp_path)
    files = {path: path.read_bytes() for path in tmp_path.glob("*.pem")}
    assert len(files) == 4
    for key in (first.key, tmp_path / "gateway-ca-key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    second = ensure_gateway_tls(tmp_path)
    assert second == first
    assert {path: path.read_bytes() for path in tmp_path.glob("*.pem")} == files


def test_pki_replaces_mismatched_server_key(tmp_path):
    tls = ensure_gateway_tls(tmp_path)
    ca_before = tls.ca_cert.read_bytes()
    cert_before = tls.cert.read_bytes()
    other = ensure_gateway_tls(tmp_path / "other")
    tls.key.write_bytes(other.key.read_bytes())
    ensure_gateway_tls(tmp_path)
    assert tls.ca_cert.read_bytes() == ca_before
    assert tls.cert.read_bytes() != cert_before
    assert stat.S_IMODE(tls.key.stat().st_mode) == 0o600


def test_pki_new_ca_reissues_server_cert(tmp_path):
    tls = ensure_gateway_tls(tmp_path)
    cert_before = tls.cert.read_bytes()
    (tmp_path / "gateway-ca-key.pem").unlink()
    ensure_gateway_tls(tmp_path)
    assert tls.cert.read_bytes() != cert_before
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tls.ca_cert), str(tls.cert)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
