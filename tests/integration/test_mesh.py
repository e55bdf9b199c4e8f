"""The running mesh: mTLS sidecars, verified identities and OPA on every call.

These tests run against the platform that `make up` started.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
import uuid
from pathlib import Path

import grpc
import httpx
import pytest
import yaml

from aiswa_mesh._mesh import Mesh
from aiswa_mesh.envoy_sidecar import identity_dns
from aiswa_runtime import load_topology
from conftest import ROOT, supervisorctl

MATRIX = yaml.safe_load((ROOT / "policies" / "rego" / "expected_matrix.yaml").read_text())[
    "expected_matrix"]
WORKLOADS = list(load_topology(str(ROOT / "mesh" / "topology.yaml"))["workloads"])
POLICY_DENIAL = "may not call"


@pytest.fixture(scope="module")
def mesh(layout, topology) -> Mesh:
    if "opa-users" not in supervisorctl(layout, "status"):
        pytest.fail("no OPA program runs; start the platform with `make up`")
    return Mesh(layout, topology)


@pytest.fixture(scope="module")
def identities(mesh, tmp_path_factory) -> dict[str, tuple[bytes, bytes, bytes]]:
    """A fresh certificate for every workload identity, issued by OpenBao."""
    issued = {}
    for workload in ["gateway", *WORKLOADS]:
        certificate = mesh.openbao.issue(workload, ttl="10m")
        issued[workload] = (_pem(certificate.cert_chain_pem), _pem(certificate.key_pem),
                            _pem(certificate.ca_pem))
    return issued


def _pem(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _channel(mesh: Mesh, destination: str, identity: tuple[bytes, bytes, bytes]) -> grpc.Channel:
    cert, key, ca = identity
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                               certificate_chain=cert)
    target_name = f"{destination}.aiswa.serviceaccount.identity.linkerd.cluster.local"
    host, port = mesh.inbound_address(destination)
    return grpc.secure_channel(f"{host}:{port}", credentials,
                               options=[("grpc.ssl_target_name_override", target_name)])


def _call(channel: grpc.Channel, method: str, metadata: list[tuple[str, str]]) -> grpc.StatusCode:
    """Call ``method`` with an empty request; return the status code it ended with."""
    try:
        if method.endswith(("ReadArchive", "Health/Watch")):
            for _ in channel.unary_stream(method)(b"", metadata=metadata, timeout=3):
                break
        elif method.endswith("SubscribeToUpdates"):
            # include_snapshot = true (field 2), so an allowed stream sends at once.
            for _ in channel.unary_stream(method)(b"\x10\x01", metadata=metadata, timeout=3):
                break
        elif method.endswith("ServerReflectionInfo"):
            for _ in channel.stream_stream(method)(iter([b""]), metadata=metadata, timeout=3):
                break
        else:
            channel.unary_unary(method)(b"", metadata=metadata, timeout=3)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.PERMISSION_DENIED and POLICY_DENIAL in (
                error.details() or ""):
            return grpc.StatusCode.PERMISSION_DENIED
        if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and method.endswith(
                ("Watch", "SubscribeToUpdates")):
            return grpc.StatusCode.OK  # an allowed Watch streams until the deadline
        return error.code()
    return grpc.StatusCode.OK


def _claims(role: str) -> str:
    import base64
    import json

    payload = {"sub": str(uuid.uuid4()), "email": "matrix@example.test", "role": role}
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def test_posture_matrix_through_the_mesh(mesh, identities, topology):
    """Every mesh identity against every method, through the real sidecars and OPA.

    Both layers apply: an identity that is not among the destination's clients
    is refused at the connection (UNAVAILABLE), and any other call gets the
    policy's decision from the expectation table.
    """
    mismatches = []
    checked = 0
    for destination, methods in MATRIX["destinations"].items():
        for column, (identity_name, spec) in enumerate(
                (name, MATRIX["identities"][name]) for name in MATRIX["columns"]):
            workload = spec["caller"].split(".")[0] if spec["caller"] else ""
            if workload not in identities:
                continue  # `unknown` and `anonymous` have no certificate; tested below
            metadata = [("x-jwt-payload", _claims(spec["claims"]["role"]))] if "claims" in spec else []
            with _channel(mesh, destination, identities[workload]) as channel:
                for method, row in methods.items():
                    code = _call(channel, method, metadata)
                    checked += 1
                    if workload not in topology["workloads"][destination]["clients"]:
                        expected, outcome = "refused", code == grpc.StatusCode.UNAVAILABLE
                    elif row[column].strip() == "deny":
                        expected, outcome = "deny", code == grpc.StatusCode.PERMISSION_DENIED
                    else:
                        expected = "allow"
                        outcome = code not in (grpc.StatusCode.PERMISSION_DENIED,
                                               grpc.StatusCode.UNAVAILABLE)
                    if not outcome:
                        mismatches.append((identity_name, destination, method, expected, code.name))
    assert checked > 200
    assert not mismatches


def test_identity_not_in_clients_refused_at_connection(mesh, identities):
    # users is not a client of projects: RBAC closes the connection before any call.
    with _channel(mesh, "projects", identities["users"]) as channel:
        code = _call(channel, "/grpc.health.v1.Health/Check", [])
    assert code == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("workload", WORKLOADS)
def test_plaintext_to_sidecar_fails(mesh, workload):
    host, port = mesh.inbound_address(workload)
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        code = _call(channel, "/grpc.health.v1.Health/Check", [])
    assert code == grpc.StatusCode.UNAVAILABLE


def test_tls_without_client_certificate_fails(mesh):
    context = ssl.create_default_context(cafile=None)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(mesh.inbound_address("projects"), timeout=3) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            with context.wrap_socket(raw) as tls:
                tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                if not tls.recv(1):
                    raise ConnectionError("closed by the sidecar")


def test_forged_client_id_replaced_by_verified_identity(gateway_url, ca_cert, admin, layout):
    token = __import__("json").loads(admin.token_file.read_text())["access_token"]
    missing = str(uuid.uuid4())
    reply = httpx.get(f"{gateway_url}/v1/projects/{missing}", verify=ssl.create_default_context(cafile=ca_cert), headers={
        "authorization": f"Bearer {token}",
        "l5d-client-id": "reflector.aiswa.serviceaccount.identity.linkerd.cluster.local",
    })
    assert reply.status_code == 404
    request_id = reply.headers["x-request-id"]
    log = layout.logs / "projects.log"
    deadline = time.monotonic() + 10
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = [line for line in log.read_text().splitlines() if request_id in line]
        if lines:
            break
        time.sleep(0.2)
    assert lines, f"no projects log line for request {request_id}"
    record = __import__("json").loads(lines[-1])
    assert record["caller"] == "gateway.aiswa.serviceaccount.identity.linkerd.cluster.local"


def test_stopped_opa_denies_then_recovers(layout, admin, project):
    path = f"/v1/projects/{project['project_id']}"
    assert admin.request("GET", path)["project_id"] == project["project_id"]
    supervisorctl(layout, "stop", "opa-projects")
    try:
        with pytest.raises(Exception) as failure:
            admin.request("GET", path)
        assert "HTTP 403" in str(failure.value)
        assert "authorization service unavailable" in str(failure.value)
    finally:
        supervisorctl(layout, "start", "opa-projects")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            assert admin.request("GET", path)["project_id"] == project["project_id"]
            return
        except Exception:
            time.sleep(0.3)
    pytest.fail("calls to projects were still denied 30 s after its OPA restarted")


def test_policy_edit_takes_effect_without_restart(admin, make_user, project):
    """Raising the role that ListRuns needs in the grants file denies a viewer at once."""
    viewer, user = make_user("viewer")
    admin.request("POST", f"/v1/projects/{project['project_id']}/members",
                  body={"user_id": user["user_id"], "role": "MEMBER_ROLE_VIEWER"})
    path = f"/v1/projects/{project['project_id']}/runs"
    assert _denied(viewer, path) is None
    grants = ROOT / "policies" / "rego" / "aiswa" / "grants" / "data.yaml"
    original = grants.read_text()
    assert "    ListRuns: viewer\n" in original
    grants.write_text(original.replace("    ListRuns: viewer\n", "    ListRuns: maintainer\n"))
    try:
        _wait_until(lambda: _denied(viewer, path) is not None, 20)
        assert "ListRuns" in _denied(viewer, path)
    finally:
        grants.write_text(original)
    _wait_until(lambda: _denied(viewer, path) is None, 20)


def _denied(admin, path: str) -> str | None:
    try:
        admin.request("GET", path)
    except Exception as error:  # noqa: BLE001 - the message is what the test checks
        return str(error) if "HTTP 403" in str(error) else None
    return None


def _wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"condition not met within {timeout} s")


def test_opa_gomaxprocs_is_one(layout, mesh):
    # With Go's default GOMAXPROCS (the number of cores), a decision takes longer (docs/benchmarks.md).
    for workload in WORKLOADS:
        pid = supervisorctl(layout, "pid", f"opa-{workload}").strip()
        assert pid.isdigit(), f"opa-{workload} is not running: {pid!r}"
        process = Path("/proc") / pid
        environment = (process / "environ").read_bytes().split(b"\0")
        assert b"GOMAXPROCS=1" in environment, f"opa-{workload} runs without GOMAXPROCS=1"
        assert (process / "exe").resolve().name == "opa"


def test_decisions_logged_per_workload(layout, mesh, identities):
    # reflector may connect to projects, and the policy denies it this method.
    method = "/aiswa.projects.v1.ProjectsService/CreateProject"
    caller = identity_dns("reflector", "aiswa")
    log = layout.logs / "opa-projects.log"

    def decisions() -> list[dict]:
        events = [json.loads(line) for line in log.read_text().splitlines()
                  if method in line and caller in line]
        return [event for event in events if event.get("msg") == "Decision Log"]

    before = len(decisions())
    with _channel(mesh, "projects", identities["reflector"]) as channel:
        assert _call(channel, method, []) == grpc.StatusCode.PERMISSION_DENIED
    deadline = time.monotonic() + 10
    while len(decisions()) == before:
        assert time.monotonic() < deadline, f"no decision on {method} in {log}"
        time.sleep(0.2)
    events = decisions()
    assert len(events) == before + 1
    event = events[-1]
    assert event["path"] == "aiswa/authz/result"
    assert event["input"] == {"caller": caller, "destination": "projects", "method": method}
    assert event["result"]["allow"] is False
    assert "may not call" in event["result"]["reason"]
    assert event["decision_id"]
    # Each workload's OPA logs to its own file, and without an access log line per request.
    assert caller not in (layout.logs / "opa-reflector.log").read_text()[-100_000:]
    text = log.read_text()
    since_start = text[text.rfind('"msg":"Initializing server."'):]
    assert "Received request." not in since_start
