"""Tests of the local OpenBao: bootstrap, the mesh PKI, AppRole limits and the certificate agent.

The module starts its own OpenBao on free loopback ports in a temporary folder
and stops it afterwards. None of it needs the running platform.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from conftest import OpenBaoServer, free_port, private_openbao
from aiswa_mesh.openbao import OpenBao, OpenBaoError, identity_dns, identity_uri

NAMESPACE = "aiswa"
WORKLOADS = ["users", "projects", "reflector", "vision", "gateway"]
ROLE_TTL = "1h"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[OpenBaoServer]:
    with private_openbao(tmp_path_factory) as server:
        server.bao.configure_pki(WORKLOADS, NAMESPACE, ROLE_TTL)
        yield server


@pytest.fixture
def bao(server) -> OpenBao:
    return server.bao


def _client(bao: OpenBao, token: str | None = None) -> httpx.Client:
    headers = {"X-Vault-Token": token} if token else {}
    return httpx.Client(base_url=f"{bao.address}/v1/", headers=headers, trust_env=False,
                        verify=ssl.create_default_context(cafile=str(bao.ca_cert)), timeout=10)


def _root_token(bao: OpenBao) -> str:
    return bao.root_token_path.read_text().strip()


def _sans(cert: x509.Certificate) -> list[x509.GeneralName]:
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def _split_chain(pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode())


# --- bootstrap ----------------------------------------------------------------


def test_server_restart_unseals_from_stored_key(server):
    bao = server.bao
    root_token = _root_token(bao)
    unseal_key = bao.unseal_key_path.read_text()
    server.stop()
    server.start()
    with _client(bao) as client:
        status = _wait_json(client, "sys/seal-status")
    assert status["initialized"] is True
    assert status["sealed"] is True

    assert bao.initialize() is False

    with _client(bao) as client:
        assert client.get("sys/seal-status").json()["sealed"] is False
    assert _root_token(bao) == root_token
    assert bao.unseal_key_path.read_text() == unseal_key
    issued = bao.issue("users")
    assert "BEGIN CERTIFICATE" in issued.cert_chain_pem


def test_unseal_watch_unseals_restarted_server(server):
    bao = server.bao
    server.stop()
    server.start()
    watcher = subprocess.Popen(
        [sys.executable, "-m", "aiswa_mesh.openbao", "unseal", "--watch", "1",
         "--state", str(bao.root), "--port", str(bao.port),
         "--cluster-port", str(bao.cluster_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 30
        with _client(bao) as client:
            # sys/health returns 200 only when the server is unsealed and active.
            while _wait_status(client, "sys/health") != 200:
                assert watcher.poll() is None
                assert time.monotonic() < deadline, "the watcher did not unseal within 30 s"
                time.sleep(0.2)
    finally:
        watcher.terminate()
        output = watcher.communicate(timeout=20)[0].decode()
    assert "unsealed OpenBao" in output
    assert bao.issue("users")


def test_unseal_is_noop_when_unsealed(bao):
    assert bao.unseal() is False


def test_configure_pki_is_idempotent(bao):
    with _client(bao) as client:
        root_before = client.get("pki/ca/pem").text
        intermediate_before = client.get("pki_int/ca/pem").text
    orchestrator = bao.orchestrator_token_path.read_text()

    bao.configure_pki(WORKLOADS, NAMESPACE, ROLE_TTL)

    with _client(bao) as client:
        assert client.get("pki/ca/pem").text == root_before
        assert client.get("pki_int/ca/pem").text == intermediate_before
    assert bao.orchestrator_token_path.read_text() == orchestrator
    assert bao.login("users")


def test_configure_pki_replaces_invalid_orchestrator_token(bao):
    bao.orchestrator_token_path.write_text("s.not-a-token\n")

    bao.configure_pki(WORKLOADS, NAMESPACE, ROLE_TTL)

    assert bao.orchestrator_token_path.read_text().strip() != "s.not-a-token"
    assert stat.S_IMODE(bao.orchestrator_token_path.stat().st_mode) == 0o600
    assert bao.login("vision")


# --- secret id delivery -------------------------------------------------------


def test_payload_has_wrapping_token_only(bao):
    payload = json.loads(bao.bootstrap_payload("users"))
    assert set(payload) == {"role_id", "wrapping_token"}
    with _client(bao, payload["wrapping_token"]) as client:
        info = client.post("sys/wrapping/lookup", json={"token": payload["wrapping_token"]})
    assert info.status_code == 200, info.text
    assert info.json()["data"]["creation_path"] == "auth/approle/role/users/secret-id"


def test_payload_logs_in_once(bao):
    payload = bao.bootstrap_payload("users")
    assert bao.login_with_payload(payload)
    with pytest.raises(OpenBaoError) as second:
        bao.login_with_payload(payload)
    assert "may have been intercepted" in str(second.value)


def test_unwrapped_secret_id_logs_in_once(bao):
    payload = json.loads(bao.bootstrap_payload("projects"))
    with _client(bao, payload["wrapping_token"]) as client:
        secret_id = client.post("sys/wrapping/unwrap").json()["data"]["secret_id"]
    with _client(bao) as client:
        first = client.post("auth/approle/login",
                            json={"role_id": payload["role_id"], "secret_id": secret_id})
        second = client.post("auth/approle/login",
                             json={"role_id": payload["role_id"], "secret_id": secret_id})
    assert first.status_code == 200, first.text
    assert second.status_code == 400, second.text
    assert "invalid role or secret ID" in second.text


@pytest.mark.parametrize(("method", "path", "wrap"), [
    ("POST", "auth/approle/role/users/secret-id", False),
    ("POST", "pki_int/issue/users", True),
    ("GET", "sys/policies/acl/mesh-users", False),
    ("POST", "auth/token/create", True),
])
def test_orchestrator_token_only_mints_wrapped_secret_ids(bao, method, path, wrap):
    token = bao.orchestrator_token_path.read_text().strip()
    headers = {"X-Vault-Wrap-TTL": "60s"} if wrap else {}
    with _client(bao, token) as client:
        reply = client.request(method, path, json={} if method == "POST" else None,
                               headers=headers)
    assert reply.status_code == 403, reply.text


def test_no_secret_id_is_stored(bao):
    bao.issue("users")
    for workload in WORKLOADS:
        assert not (bao.secrets_dir / workload).exists()
    names = {path.name for path in bao.root.rglob("*")}
    assert "secret-id" not in names


# --- issued certificates ------------------------------------------------------


@pytest.mark.parametrize("workload", WORKLOADS)
def test_certificate_has_exactly_contract_sans(bao, workload):
    issued = bao.issue(workload)
    leaf = _split_chain(issued.cert_chain_pem)[0]

    names = _sans(leaf)
    assert [name.value for name in names if isinstance(name, x509.UniformResourceIdentifier)] == [
        identity_uri(workload, NAMESPACE)]
    assert [name.value for name in names if isinstance(name, x509.DNSName)] == [
        identity_dns(workload, NAMESPACE)]
    assert len(names) == 2
    common_names = [attribute.value for attribute in leaf.subject
                    if attribute.oid == NameOID.COMMON_NAME]
    assert common_names == [identity_dns(workload, NAMESPACE)]


def test_certificate_chains_to_mesh_root(bao):
    issued = bao.issue("users")
    leaf, *intermediates = _split_chain(issued.cert_chain_pem)
    roots = _split_chain(issued.ca_pem)
    dns = identity_dns("users", NAMESPACE)

    assert len(intermediates) == 1
    assert len(roots) == 1
    root = roots[0]
    assert root.subject == root.issuer
    assert root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "aiswa mesh root"
    builder = PolicyBuilder().store(Store([root]))
    server_chain = builder.build_server_verifier(x509.DNSName(dns)).verify(leaf, intermediates)
    assert server_chain[-1] == root
    client_chain = builder.build_client_verifier().verify(leaf, intermediates)
    assert client_chain.chain[-1] == root
    with _client(bao) as client:
        assert x509.load_pem_x509_certificate(client.get("pki/ca/pem").content) == root


def test_certificate_uses_p256_key_for_server_and_client(bao):
    issued = bao.issue("projects")
    leaf = _split_chain(issued.cert_chain_pem)[0]
    key = serialization.load_pem_private_key(issued.key_pem.encode(), password=None)

    public_key = leaf.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    assert key.public_key() == public_key
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    # The role omits basicConstraints on leaves, and an absent extension means "not a CA".
    basic = [ext.value for ext in leaf.extensions if isinstance(ext.value, x509.BasicConstraints)]
    assert all(value.ca is False for value in basic)


@pytest.mark.parametrize(("requested", "expected_seconds"), [
    ("30s", 30),
    ("10m", 600),
    (None, 3600),
    ("5h", 3600),  # capped at the role's max TTL
])
def test_certificate_lifetime_follows_ttl(bao, requested, expected_seconds):
    before = datetime.datetime.now(datetime.timezone.utc)
    issued = bao.issue("reflector", ttl=requested)
    after = datetime.datetime.now(datetime.timezone.utc)

    leaf = _split_chain(issued.cert_chain_pem)[0]
    assert leaf.not_valid_after_utc == issued.not_after
    assert issued.not_after >= before + datetime.timedelta(seconds=expected_seconds - 2)
    assert issued.not_after <= after + datetime.timedelta(seconds=expected_seconds + 2)


# --- what a workload's AppRole may not do -------------------------------------


def _post(bao: OpenBao, token: str, path: str, body: dict) -> httpx.Response:
    with _client(bao, token) as client:
        return client.post(path, json=body)


def test_approle_cannot_issue_other_identity(bao):
    token = bao.login("users")
    for other in ("projects", "gateway"):
        reply = _post(bao, token, f"pki_int/issue/{other}", {
            "common_name": identity_dns(other, NAMESPACE),
            "uri_sans": identity_uri(other, NAMESPACE),
        })
        assert reply.status_code == 403, (other, reply.text)


@pytest.mark.parametrize("extra", [
    {"alt_names": "evil.example.com"},
    {"alt_names": "projects.aiswa.serviceaccount.identity.linkerd.cluster.local"},
    {"alt_names": "admin@users.aiswa.serviceaccount.identity.linkerd.cluster.local"},
    {"ip_sans": "127.0.0.1"},
    {"uri_sans": "spiffe://root.linkerd.cluster.local/ns/aiswa/sa/projects"},
    {"uri_sans": "spiffe://root.linkerd.cluster.local/ns/aiswa/sa/users,spiffe://evil/x"},
    {"common_name": "projects.aiswa.serviceaccount.identity.linkerd.cluster.local"},
    {"common_name": "localhost"},
    {"other_sans": "1.3.6.1.4.1.311.20.2.3;UTF8:admin@example.com"},
    {"exclude_cn_from_sans": True},
    {"not_after": "2099-01-01T00:00:00Z"},
    {"user_ids": "admin"},
])
def test_approle_cannot_request_extra_names(bao, extra):
    token = bao.login("users")
    body = {"common_name": identity_dns("users", NAMESPACE),
            "uri_sans": identity_uri("users", NAMESPACE), **extra}

    reply = _post(bao, token, "pki_int/issue/users", body)

    assert reply.status_code == 403, reply.text


def test_approle_must_request_both_names(bao):
    token = bao.login("users")

    reply = _post(bao, token, "pki_int/issue/users",
                  {"common_name": identity_dns("users", NAMESPACE)})

    assert reply.status_code == 403, reply.text


def test_approle_query_parameters_add_no_names(bao):
    # OpenBao ignores query parameters on POST, so they cannot bypass the
    # policy's allowed_parameters.
    token = bao.login("users")
    with _client(bao, token) as client:
        reply = client.post(
            "pki_int/issue/users",
            params={"alt_names": "admin@users.aiswa.serviceaccount.identity.linkerd.cluster.local",
                    "ip_sans": "127.0.0.1"},
            json={"common_name": identity_dns("users", NAMESPACE),
                  "uri_sans": identity_uri("users", NAMESPACE)},
        )
    assert reply.status_code == 200, reply.text
    leaf = x509.load_pem_x509_certificate(reply.json()["data"]["certificate"].encode())
    assert len(_sans(leaf)) == 2


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "pki_int/roles/users"),
    ("LIST", "pki_int/roles"),
    ("POST", "pki_int/sign/users"),
    ("POST", "pki_int/sign-verbatim"),
    ("POST", "pki_int/issuer/default/issue/users"),
    ("POST", "pki/root/sign-intermediate"),
    ("POST", "pki/issue/users"),
    ("GET", "sys/policies/acl/mesh-users"),
    ("GET", "sys/mounts"),
    ("GET", "auth/approle/role/projects/role-id"),
    ("POST", "auth/approle/role/users/secret-id"),
    ("GET", "auth/token/lookup-self"),
    ("GET", "secret/data/anything"),
    ("GET", "cubbyhole/anything"),
])
def test_approle_cannot_use_other_paths(bao, method, path):
    token = bao.login("users")
    with _client(bao, token) as client:
        reply = client.request(method, path, json={} if method == "POST" else None)
    assert reply.status_code == 403, reply.text


def test_issue_for_other_workload_with_own_credentials_fails(bao):
    token = bao.login("users")
    with pytest.raises(OpenBaoError) as raised:
        bao.issue("projects", token=token)
    assert raised.value.status == 403


def test_role_rejects_extra_names_even_with_root_token(bao):
    # The role is the second layer: even a token without the policy's
    # parameter limits cannot get names outside the workload's identity.
    root_token = _root_token(bao)
    base = {"common_name": identity_dns("users", NAMESPACE)}
    for extra in ({"alt_names": "evil.example.com"}, {"ip_sans": "127.0.0.1"},
                  {"uri_sans": identity_uri("projects", NAMESPACE)},
                  {"common_name": identity_dns("projects", NAMESPACE)}):
        reply = _post(bao, root_token, "pki_int/issue/users", {**base, **extra})
        assert reply.status_code == 400, (extra, reply.text)


# --- the agent ----------------------------------------------------------------


def _read_pair(folder: Path) -> tuple[x509.Certificate, bool]:
    """Read cert.pem and key.pem of one folder; return the leaf and whether the key matches it."""
    leaf = x509.load_pem_x509_certificates((folder / "cert.pem").read_bytes())[0]
    key = serialization.load_pem_private_key((folder / "key.pem").read_bytes(), password=None)
    return leaf, key.public_key() == leaf.public_key()


class RotationWatcher(threading.Thread):
    """Read the agent's files in a loop and record every serial and every mismatched pair."""

    def __init__(self, out_dir: Path) -> None:
        super().__init__(daemon=True)
        self.out_dir = out_dir
        self.stop = threading.Event()
        self.first_seen: dict[int, datetime.datetime] = {}
        self.not_after: dict[int, datetime.datetime] = {}
        self.reads = 0
        self.mismatches: list[str] = []
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self._check_once()
            except FileNotFoundError as exc:
                self.errors.append(repr(exc))
            time.sleep(0.01)

    def _check_once(self) -> None:
        # A reader that resolves ..data once reads a single generation.
        generation = Path(os.path.realpath(self.out_dir / "..data"))
        leaf, matches = _read_pair(generation)
        if not matches:
            self.mismatches.append(f"generation {generation.name}")
        # A reader that opens cert.pem and key.pem through the links can get a
        # mismatched pair only when ..data switched between its two reads.
        before = os.readlink(self.out_dir / "..data")
        linked_leaf, linked_matches = _read_pair(self.out_dir)
        after = os.readlink(self.out_dir / "..data")
        if not linked_matches and before == after:
            self.mismatches.append(f"links at {before}")
        self.reads += 1
        self.first_seen.setdefault(leaf.serial_number,
                                   datetime.datetime.now(datetime.timezone.utc))
        self.not_after[leaf.serial_number] = leaf.not_valid_after_utc


@pytest.fixture
def agent(bao, tmp_path) -> Iterator[tuple[Path, Path, subprocess.Popen[bytes]]]:
    # Inside the state folder, so that the root token scan covers these files.
    out_dir = bao.root / "identity" / tmp_path.name / "users"
    log_path = bao.root / f"agent-users-{tmp_path.name}.log"
    with open(log_path, "wb") as log:
        # Through aiswa_mesh.deliver, as supervisord starts it: the agent
        # logs in once with the payload from its pipe.
        process = subprocess.Popen(
            [sys.executable, "-m", "aiswa_mesh.deliver", "--state", str(bao.root),
             "--port", str(bao.port), "--approle", "users", "--",
             sys.executable, "-m", "aiswa_mesh.openbao", "agent", "--state", str(bao.root),
             "--port", str(bao.port), "--cluster-port", str(bao.cluster_port),
             "--workload", "users", "--out", str(out_dir), "--ttl", "30s",
             "--renew-fraction", "0.5"],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
    try:
        yield out_dir, log_path, process
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_agent_rotates_before_expiry_with_matching_pairs(agent):
    out_dir, log_path, process = agent
    deadline = time.monotonic() + 30
    while not (out_dir / "..data").exists():
        assert process.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, "the agent wrote no certificate within 30 s"
        time.sleep(0.1)
    watcher = RotationWatcher(out_dir)
    watcher.start()
    try:
        # Renewal at half of a 30 s lifetime: a third certificate appears
        # about 30 s after the first.
        deadline = time.monotonic() + 60
        while len(watcher.first_seen) < 3 and time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text()
            time.sleep(0.2)
    finally:
        watcher.stop.set()
        watcher.join(timeout=5)

    assert len(watcher.first_seen) >= 3, log_path.read_text()
    assert watcher.mismatches == []
    assert watcher.errors == []
    assert watcher.reads > 100
    serials = sorted(watcher.first_seen, key=watcher.first_seen.get)
    for old, new in zip(serials, serials[1:]):
        replaced_at = watcher.first_seen[new]
        # Replaced around half-life: well before the old certificate expired.
        assert replaced_at < watcher.not_after[old] - datetime.timedelta(seconds=10)
    log_text = log_path.read_text()
    for serial in serials:
        assert f"serial {serial:x}" in log_text
    assert "PRIVATE KEY" not in log_text


def test_agent_writes_files_with_private_key_mode(agent):
    out_dir, log_path, process = agent
    deadline = time.monotonic() + 30
    while not (out_dir / "key.pem").exists():
        assert process.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline
        time.sleep(0.1)

    assert stat.S_IMODE(Path(os.path.realpath(out_dir / "key.pem")).stat().st_mode) == 0o600
    assert stat.S_IMODE(out_dir.stat().st_mode) == 0o700
    leaf = x509.load_pem_x509_certificates((out_dir / "cert.pem").read_bytes())
    assert len(leaf) == 2
    root = x509.load_pem_x509_certificate((out_dir / "ca.pem").read_bytes())
    assert root.subject == root.issuer


def _envoy_bootstrap(sds_dir: Path, port: int, admin_port: int) -> dict:
    def sds(secret: str, file_name: str) -> dict:
        return {"name": secret, "sds_config": {
            "path_config_source": {"path": str(sds_dir / file_name)},
            "resource_api_version": "V3",
        }}

    tls_context = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                 "DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": {
            "tls_certificate_sds_secret_configs": [sds("mesh-identity", "sds-identity.yaml")],
            "validation_context_sds_secret_config": sds("mesh-trust", "sds-trust.yaml"),
        },
    }
    http = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                 "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "identity_test",
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        "route_config": {"virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}],
        }]},
    }
    loopback = "127.0.0.1"
    return {
        # Path-based SDS requires a node id and cluster.
        "node": {"id": "identity-test", "cluster": "identity-test"},
        "admin": {"address": {"socket_address": {"address": loopback, "port_value": admin_port}}},
        "static_resources": {"listeners": [{
            "name": "mesh_tls",
            "address": {"socket_address": {"address": loopback, "port_value": port}},
            "filter_chains": [{
                "transport_socket": {"name": "envoy.transport_sockets.tls",
                                     "typed_config": tls_context},
                "filters": [{"name": "envoy.filters.network.http_connection_manager",
                             "typed_config": http}],
            }],
        }]},
    }


def _served_serial(out_dir: Path, port: int) -> int:
    """Connect with mTLS, using the agent's current files as the client identity."""
    generation = Path(os.path.realpath(out_dir / "..data"))
    context = ssl.create_default_context(cafile=str(generation / "ca.pem"))
    context.check_hostname = False
    context.load_cert_chain(generation / "cert.pem", generation / "key.pem")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw) as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            assert tls.recv(64).startswith(b"HTTP/1.1 200")
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def test_envoy_reloads_rotated_certificate(agent, tmp_path):
    import yaml

    from aiswa_mesh.envoy_gateway import envoy_binary
    from aiswa_mesh.envoy_sidecar import render_sds_files

    out_dir, log_path, process = agent
    deadline = time.monotonic() + 30
    while not (out_dir / "cert.pem").exists():
        assert process.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # The SDS files that the sidecar renderer writes for this certificate folder.
    sds_dir = tmp_path / "sds"
    sds_dir.mkdir()
    for name, document in render_sds_files(out_dir).items():
        (sds_dir / name).write_text(yaml.safe_dump(document))
    port = free_port()
    config = tmp_path / "envoy.yaml"
    config.write_text(yaml.safe_dump(_envoy_bootstrap(sds_dir, port, free_port())))
    envoy_log = open(tmp_path / "envoy.log", "wb")  # noqa: SIM115
    envoy = subprocess.Popen([str(envoy_binary()), "-c", str(config), "--disable-hot-restart",
                              "--log-level", "warn"], stdout=envoy_log, stderr=subprocess.STDOUT)
    envoy_log.close()
    served: list[int] = []
    try:
        deadline = time.monotonic() + 45
        while len(set(served)) < 2 and time.monotonic() < deadline:
            assert envoy.poll() is None, (tmp_path / "envoy.log").read_text()
            try:
                serial = _served_serial(out_dir, port)
            except (ConnectionRefusedError, ssl.SSLError):
                time.sleep(0.2)
                continue
            served.append(serial)
            time.sleep(0.5)
        # Envoy reloads a moment after the switch, so compare after a pause.
        time.sleep(1)
        final_serial = _served_serial(out_dir, port)
        on_disk = x509.load_pem_x509_certificates((out_dir / "cert.pem").read_bytes())[0]
    finally:
        envoy.terminate()
        envoy.wait(timeout=20)
    assert len(set(served)) >= 2, (tmp_path / "envoy.log").read_text()
    assert final_serial == on_disk.serial_number


# --- secret files ---------------------------------------------------------------


def test_secret_files_are_owner_only(bao):
    secret_files = [bao.root_token_path, bao.unseal_key_path, bao.orchestrator_token_path]
    secret_files += [bao.tls_dir / "ca-key.pem", bao.tls_dir / "server-key.pem"]

    for path in secret_files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert path.stat().st_uid == os.getuid(), path
    for folder in [bao.secrets_dir, bao.data_dir, bao.tls_dir]:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_root_token_appears_in_no_other_file(bao):
    issued = bao.issue("users")
    (bao.root / "issued.pem").write_text(issued.cert_chain_pem)
    root_token = _root_token(bao).encode()
    assert len(root_token) > 10

    scanned = 0
    for path in bao.root.rglob("*"):
        if path.is_symlink() or not path.is_file() or path == bao.root_token_path:
            continue
        assert root_token not in path.read_bytes(), path
        scanned += 1
    assert scanned > 10


def _wait_json(client: httpx.Client, path: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.get(path).json()
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _wait_status(client: httpx.Client, path: str, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.get(path).status_code
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
