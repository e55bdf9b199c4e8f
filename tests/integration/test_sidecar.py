"""The Envoy sidecars, run from their rendered configs between test gRPC apps.

Every process and port is on loopback and is started here. A mesh root CA, a
foreign CA and the workload certificates are made with ``cryptography``.
grpc.aio echo apps stand in for projects and reflector, and a real Envoy runs
as the sidecar of projects, reflector and gateway. Nothing here needs the
running platform.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest
import pytest_asyncio
import yaml
from cryptography import x509

from aiswa_mesh.envoy_sidecar import (
    IDENTITY_HEADER,
    expected_upstreams,
    identity_dns,
    identity_uri,
    render_sidecar_config,
    sidecar_command,
    write_certs_atomically,
    write_sidecar_config,
)
from aiswa_mesh.localca import CertificateAuthority, Credentials, free_port

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = ROOT / "mesh" / "topology.yaml"

ECHO_SERVICE = "aiswa.test.v1.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Identity"
CALL_TIMEOUT = 5.0


# --- test apps ----------------------------------------------------------------------


@dataclass
class EchoApp:
    """A grpc.aio server whose one method returns the ``l5d-client-id`` values it received."""

    server: grpc.aio.Server
    port: int
    # One entry per call: the l5d-client-id values of that call, in order.
    calls: list[list[str]] = field(default_factory=list)


async def _start_echo_app(server_credentials: grpc.ServerCredentials | None = None) -> EchoApp:
    server = grpc.aio.server()
    app = EchoApp(server=server, port=0)

    async def identity(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        values = [value for key, value in context.invocation_metadata() or ()
                  if key == IDENTITY_HEADER]
        app.calls.append(values)
        return json.dumps(values).encode()

    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        ECHO_SERVICE, {"Identity": grpc.unary_unary_rpc_method_handler(identity)},
    )])
    if server_credentials is None:
        app.port = server.add_insecure_port("127.0.0.1:0")
    else:
        app.port = server.add_secure_port("127.0.0.1:0", server_credentials)
    await server.start()
    return app


async def _call(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> list[str]:
    """Call the echo method and return the ``l5d-client-id`` values that the app received."""
    identity = channel.unary_unary(ECHO_METHOD)
    response = await identity(b"", timeout=CALL_TIMEOUT, metadata=metadata)
    return json.loads(response)


def _plaintext_channel(port: int) -> grpc.aio.Channel:
    # A local subchannel pool keeps channels from sharing connections, so each
    # test opens its own.
    return grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    )


def _mtls_channel(
    port: int, server_name: str, root_pem: bytes, client: Credentials | None
) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root_pem,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}",
        credentials,
        options=[
            # Sidecar certificates name the workload's identity, not 127.0.0.1.
            ("grpc.ssl_target_name_override", server_name),
            ("grpc.use_local_subchannel_pool", 1),
        ],
    )


# --- sidecars -----------------------------------------------------------------------


@dataclass
class Sidecar:
    workload: str
    process: subprocess.Popen[bytes]
    admin_url: str
    certs_dir: Path
    access_log: Path
    envoy_log: Path
    inbound_port: int | None
    # Local outbound port by upstream workload.
    outbound_ports: dict[str, int]


async def _start_sidecar(
    folder: Path,
    topology: dict,
    workload: str,
    credentials: Credentials,
    root_pem: bytes,
    *,
    inbound_port: int | None,
    app_port: int | None,
    upstreams: dict[str, tuple[str, int, int]],
) -> Sidecar:
    folder.mkdir(parents=True)
    certs_dir = folder / "certs"
    write_certs_atomically(certs_dir, credentials.cert_pem, credentials.key_pem, root_pem)
    admin_port = free_port()
    access_log = folder / "access.log"
    config = write_sidecar_config(
        topology,
        workload,
        path=folder / "sidecar.yaml",
        inbound=("127.0.0.1", inbound_port) if inbound_port else None,
        app=("127.0.0.1", app_port) if app_port else None,
        upstreams=upstreams,
        certs_dir=certs_dir,
        admin=("127.0.0.1", admin_port),
        access_log=access_log,
    )
    envoy_log = folder / "envoy.log"
    process = subprocess.Popen(
        # Info level logs every SDS reload, which the rotation test's failure message shows.
        sidecar_command(config, log_path=envoy_log, log_level="info", concurrency=1),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    sidecar = Sidecar(
        workload=workload,
        process=process,
        admin_url=f"http://127.0.0.1:{admin_port}",
        certs_dir=certs_dir,
        access_log=access_log,
        envoy_log=envoy_log,
        inbound_port=inbound_port,
        outbound_ports={name: local_port for name, (_, _, local_port) in upstreams.items()},
    )
    try:
        await _wait_ready(sidecar)
    except BaseException:
        _stop(process)
        raise
    return sidecar


async def _wait_ready(sidecar: Sidecar, timeout: float = 30.0) -> None:
    """Wait until Envoy is LIVE, which it reports only after loading its SDS secrets."""
    deadline = time.monotonic() + timeout
    state = "not started"
    async with httpx.AsyncClient(base_url=sidecar.admin_url, timeout=2) as admin:
        while time.monotonic() < deadline:
            if sidecar.process.poll() is not None:
                pytest.fail(f"the {sidecar.workload} sidecar exited with code "
                            f"{sidecar.process.returncode}:\n{_tail(sidecar.envoy_log)}")
            try:
                ready = await admin.get("/ready")
            except httpx.TransportError as exc:
                state = f"admin not reachable ({exc!r})"
            else:
                state = f"ready={ready.text.strip()}"
                if ready.status_code == 200:
                    return
            await asyncio.sleep(0.1)
    pytest.fail(f"the {sidecar.workload} sidecar was not ready within {timeout:.0f} s "
                f"({state}):\n{_tail(sidecar.envoy_log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _process_group_is_gone(process: subprocess.Popen[bytes]) -> bool:
    # Each Envoy leads its own process group (start_new_session).
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return True
    return False


async def _stat(sidecar: Sidecar, name: str) -> int:
    async with httpx.AsyncClient(base_url=sidecar.admin_url, timeout=2) as admin:
        response = await admin.get("/stats", params={"filter": f"^{name}$", "format": "json"})
    response.raise_for_status()
    values = [stat["value"] for stat in response.json()["stats"] if stat.get("name") == name]
    assert values, f"the {sidecar.workload} sidecar has no stat {name}"
    return int(values[0])


async def _loaded_serials(sidecar: Sidecar) -> set[int]:
    """Return the serials of the certificates in the chains that Envoy has loaded now."""
    async with httpx.AsyncClient(base_url=sidecar.admin_url, timeout=2) as admin:
        response = await admin.get("/certs")
    response.raise_for_status()
    return {
        int(cert["serial_number"], 16)
        for entry in response.json()["certificates"]
        for cert in entry.get("cert_chain", [])
    }


def _served_serial(port: int, server_name: str, root_pem: bytes, client: Credentials,
                   folder: Path) -> int:
    """Return the serial of the certificate that a new TLS connection to ``port`` receives."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=root_pem.decode())
    cert_file = folder / f"client-{client.serial:x}.pem"
    cert_file.write_bytes(client.cert_pem + client.key_pem)
    context.load_cert_chain(cert_file)
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=CALL_TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def _log_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- the mesh under test ------------------------------------------------------------


@dataclass
class Mesh:
    topology: dict
    namespace: str
    root: CertificateAuthority
    foreign: CertificateAuthority
    # The certificate that each sidecar started with, by workload.
    credentials: dict[str, Credentials]
    projects_app: EchoApp
    reflector_app: EchoApp
    # A TLS server that presents a valid mesh certificate of the users
    # identity where the gateway expects vision.
    impostor_app: EchoApp
    projects: Sidecar
    reflector: Sidecar
    gateway: Sidecar
    folder: Path


def _test_topology() -> dict:
    topology = copy.deepcopy(yaml.safe_load(TOPOLOGY.read_text()))
    # The topology's ports belong to a platform that may be running; the tests
    # use free ports instead and name them in every render call.
    for workload in topology["workloads"].values():
        workload["port"] = None
    return topology


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def mesh(tmp_path_factory) -> AsyncIterator[Mesh]:
    folder = tmp_path_factory.mktemp("sidecar")
    topology = _test_topology()
    namespace = topology["namespace"]
    root = CertificateAuthority("aiswa test mesh root")
    foreign = CertificateAuthority("foreign root")
    credentials = {name: root.issue(name, namespace)
                   for name in ("projects", "reflector", "gateway", "users")}

    apps: list[EchoApp] = []
    sidecars: list[Sidecar] = []
    try:
        projects_app = await _start_echo_app()
        apps.append(projects_app)
        reflector_app = await _start_echo_app()
        apps.append(reflector_app)
        users = credentials["users"]
        impostor_app = await _start_echo_app(grpc.ssl_server_credentials(
            [(users.key_pem, users.cert_pem)], root_certificates=root.cert_pem,
            require_client_auth=True,
        ))
        apps.append(impostor_app)

        projects_inbound = free_port()
        reflector_inbound = free_port()
        # No listener is open here: users has no sidecar in these tests.
        closed_port = free_port()

        projects = await _start_sidecar(
            folder / "projects", topology, "projects", credentials["projects"], root.cert_pem,
            inbound_port=projects_inbound, app_port=projects_app.port, upstreams={},
        )
        sidecars.append(projects)
        reflector = await _start_sidecar(
            folder / "reflector", topology, "reflector", credentials["reflector"], root.cert_pem,
            inbound_port=reflector_inbound, app_port=reflector_app.port,
            upstreams={"projects": ("127.0.0.1", projects_inbound, free_port())},
        )
        sidecars.append(reflector)
        gateway = await _start_sidecar(
            folder / "gateway", topology, "gateway", credentials["gateway"], root.cert_pem,
            inbound_port=None, app_port=None,
            upstreams={
                "users": ("127.0.0.1", closed_port, free_port()),
                "projects": ("127.0.0.1", projects_inbound, free_port()),
                "reflector": ("127.0.0.1", reflector_inbound, free_port()),
                "vision": ("127.0.0.1", impostor_app.port, free_port()),
                # No listener here either: the dashboard has no sidecar in these tests.
                "dashboard": ("127.0.0.1", closed_port, free_port()),
            },
        )
        sidecars.append(gateway)

        yield Mesh(
            topology=topology, namespace=namespace, root=root, foreign=foreign,
            credentials=credentials, projects_app=projects_app, reflector_app=reflector_app,
            impostor_app=impostor_app, projects=projects, reflector=reflector, gateway=gateway,
            folder=folder,
        )
    finally:
        for sidecar in sidecars:
            _stop(sidecar.process)
        for app in apps:
            await app.server.stop(grace=None)
        for sidecar in sidecars:
            assert sidecar.process.returncode is not None, f"{sidecar.workload} sidecar still runs"
            assert _process_group_is_gone(sidecar.process), (
                f"processes of the {sidecar.workload} sidecar's group still run"
            )


# --- calls that the mesh allows -----------------------------------------------------


async def test_allowed_call_carries_caller_identity(mesh: Mesh) -> None:
    async with _plaintext_channel(mesh.reflector.outbound_ports["projects"]) as channel:
        identities = await _call(channel)

    assert identities == [identity_dns("reflector", mesh.namespace)]


async def test_forged_identity_header_is_replaced(mesh: Mesh) -> None:
    forged = identity_dns("admin", mesh.namespace)
    before = len(mesh.projects_app.calls)
    async with _plaintext_channel(mesh.reflector.outbound_ports["projects"]) as channel:
        identities = await _call(channel, metadata=((IDENTITY_HEADER, forged),))

    assert identities == [identity_dns("reflector", mesh.namespace)]
    assert mesh.projects_app.calls[before:] == [[identity_dns("reflector", mesh.namespace)]]


async def test_forged_header_on_direct_mtls_is_replaced(mesh: Mesh) -> None:
    # Also the control for the rejected connections below: the same client
    # setup, with a certificate that the projects sidecar accepts.
    channel = _mtls_channel(mesh.projects.inbound_port, identity_dns("projects", mesh.namespace),
                            mesh.root.cert_pem, mesh.credentials["reflector"])
    async with channel:
        identities = await _call(channel, metadata=((IDENTITY_HEADER, "admin"),))

    assert identities == [identity_dns("reflector", mesh.namespace)]


async def test_gateway_sidecar_calls_as_gateway(mesh: Mesh) -> None:
    for upstream, app in (("projects", mesh.projects_app), ("reflector", mesh.reflector_app)):
        before = len(app.calls)
        async with _plaintext_channel(mesh.gateway.outbound_ports[upstream]) as channel:
            identities = await _call(channel)

        assert identities == [identity_dns("gateway", mesh.namespace)], upstream
        assert len(app.calls) == before + 1, upstream


async def test_request_log_is_json(mesh: Mesh) -> None:
    async with _plaintext_channel(mesh.reflector.outbound_ports["projects"]) as channel:
        await _call(channel)

    # sidecar_command makes Envoy write access log lines within 1 s.
    deadline = time.monotonic() + 5
    inbound: list[dict] = []
    while time.monotonic() < deadline and not inbound:
        await asyncio.sleep(0.2)
        inbound = [line for line in _log_lines(mesh.projects.access_log)
                   if line.get("log") == "request" and line.get("path") == ECHO_METHOD]
    assert inbound, "no request line for the echo method in the projects access log"
    assert inbound[-1]["downstream_peer_uri_san"] == identity_uri("reflector", mesh.namespace)
    assert inbound[-1]["grpc_status"] == 0
    outbound = [line for line in _log_lines(mesh.reflector.access_log)
                if line.get("log") == "request" and line.get("listener") == "outbound_projects"]
    assert outbound, "no request line of the outbound_projects listener in the reflector log"
    assert outbound[-1]["upstream_peer_uri_san"] == identity_uri("projects", mesh.namespace)


# --- connections that the mesh rejects ----------------------------------------------


async def _assert_rejected(mesh: Mesh, channel: grpc.aio.Channel) -> None:
    before = len(mesh.projects_app.calls)
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _call(channel)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value
    assert len(mesh.projects_app.calls) == before, "the projects app received the call"


async def test_plaintext_to_inbound_is_rejected(mesh: Mesh) -> None:
    await _assert_rejected(mesh, _plaintext_channel(mesh.projects.inbound_port))


async def test_client_without_certificate_is_rejected(mesh: Mesh) -> None:
    channel = _mtls_channel(mesh.projects.inbound_port, identity_dns("projects", mesh.namespace),
                            mesh.root.cert_pem, None)
    await _assert_rejected(mesh, channel)


async def test_certificate_of_foreign_ca_is_rejected(mesh: Mesh) -> None:
    # The same identity as an allowed client, issued by a CA that is not the mesh root.
    forged = mesh.foreign.issue("reflector", mesh.namespace)
    channel = _mtls_channel(mesh.projects.inbound_port, identity_dns("projects", mesh.namespace),
                            mesh.root.cert_pem, forged)
    await _assert_rejected(mesh, channel)


async def test_identity_not_in_clients_is_rejected(mesh: Mesh) -> None:
    assert "users" not in mesh.topology["workloads"]["projects"]["clients"]
    denied_before = await _stat(mesh.projects, "inbound_rbac.rbac.denied")
    channel = _mtls_channel(mesh.projects.inbound_port, identity_dns("projects", mesh.namespace),
                            mesh.root.cert_pem, mesh.credentials["users"])
    await _assert_rejected(mesh, channel)

    assert await _stat(mesh.projects, "inbound_rbac.rbac.denied") > denied_before
    users_uri = identity_uri("users", mesh.namespace)
    deadline = time.monotonic() + 5
    denied: list[dict] = []
    while time.monotonic() < deadline and not denied:
        await asyncio.sleep(0.2)
        denied = [line for line in _log_lines(mesh.projects.access_log)
                  if line.get("log") == "connection"
                  and line.get("downstream_peer_uri_san") == users_uri]
    assert denied, "no connection line for the users identity in the projects access log"
    assert "rbac" in denied[-1]["termination_details"]


async def test_outbound_rejects_wrong_server_identity(mesh: Mesh) -> None:
    # The gateway's vision upstream points at a server with the users
    # identity, whose certificate is valid under the mesh root.
    failures_before = await _stat(mesh.gateway, "cluster.outbound_vision.ssl.fail_verify_san")
    async with _plaintext_channel(mesh.gateway.outbound_ports["vision"]) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _call(channel)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value
    # The message names the hop that failed.
    assert caught.value.details().endswith("(reported by the gateway sidecar, calling vision; retry later)")
    assert mesh.impostor_app.calls == []
    assert await _stat(mesh.gateway, "cluster.outbound_vision.ssl.fail_verify_san") > failures_before


# --- certificate rotation -----------------------------------------------------------


async def test_rotation_keeps_every_call(mesh: Mesh) -> None:
    namespace = mesh.namespace
    projects_name = identity_dns("projects", namespace)
    client = mesh.credentials["reflector"]
    old_serial = await asyncio.to_thread(
        _served_serial, mesh.projects.inbound_port, projects_name, mesh.root.cert_pem, client,
        mesh.folder,
    )
    # Short lifetimes, as the rotation agent issues them.
    new_projects = mesh.root.issue("projects", namespace, datetime.timedelta(minutes=10))
    new_reflector = mesh.root.issue("reflector", namespace, datetime.timedelta(minutes=10))
    assert old_serial != new_projects.serial

    max_calls = 2000
    stop = asyncio.Event()
    through_sidecar: list[grpc.aio.AioRpcError | None] = []
    new_connections: list[grpc.aio.AioRpcError | None] = []

    async def call_through_sidecar() -> None:
        # One channel: the calls share the reflector sidecar's pooled connection.
        async with _plaintext_channel(mesh.reflector.outbound_ports["projects"]) as channel:
            while not stop.is_set() and len(through_sidecar) < max_calls:
                try:
                    await _call(channel)
                except grpc.aio.AioRpcError as exc:
                    through_sidecar.append(exc)
                else:
                    through_sidecar.append(None)
                await asyncio.sleep(0.005)

    async def call_on_new_connections() -> None:
        # A new channel per call: every call needs a TLS handshake with projects.
        while not stop.is_set() and len(new_connections) < max_calls:
            channel = _mtls_channel(mesh.projects.inbound_port, projects_name,
                                    mesh.root.cert_pem, client)
            async with channel:
                try:
                    await _call(channel)
                except grpc.aio.AioRpcError as exc:
                    new_connections.append(exc)
                else:
                    new_connections.append(None)

    server_updates = f"listener.127.0.0.1_{mesh.projects.inbound_port}." \
        "server_ssl_socket_factory.ssl_context_update_by_sds"
    client_updates = "cluster.outbound_projects.client_ssl_socket_factory.ssl_context_update_by_sds"
    server_updates_before = await _stat(mesh.projects, server_updates)
    client_updates_before = await _stat(mesh.reflector, client_updates)

    callers = [asyncio.create_task(call_through_sidecar()),
               asyncio.create_task(call_on_new_connections())]
    try:
        deadline = time.monotonic() + 10
        while min(len(through_sidecar), len(new_connections)) < 10:
            assert time.monotonic() < deadline, "the callers made fewer than 10 calls in 10 s"
            await asyncio.sleep(0.05)

        write_certs_atomically(mesh.projects.certs_dir, new_projects.cert_pem,
                               new_projects.key_pem, mesh.root.cert_pem)
        write_certs_atomically(mesh.reflector.certs_dir, new_reflector.cert_pem,
                               new_reflector.key_pem, mesh.root.cert_pem)
        rotated_at = (len(through_sidecar), len(new_connections))

        deadline = time.monotonic() + 10
        served = old_serial
        while served != new_projects.serial and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            served = await asyncio.to_thread(
                _served_serial, mesh.projects.inbound_port, projects_name, mesh.root.cert_pem,
                client, mesh.folder,
            )
        while (new_reflector.serial not in await _loaded_serials(mesh.reflector)
               and time.monotonic() < deadline):
            await asyncio.sleep(0.1)
        reloaded_at = (len(through_sidecar), len(new_connections))

        # Keep calling for a while after the reload.
        deadline = time.monotonic() + 10
        while (len(through_sidecar) < reloaded_at[0] + 20
               or len(new_connections) < reloaded_at[1] + 20):
            assert time.monotonic() < deadline, "the callers stalled after the reload"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*callers)

    assert served == new_projects.serial, _tail(mesh.projects.envoy_log)
    assert new_reflector.serial in await _loaded_serials(mesh.reflector)
    assert await _loaded_serials(mesh.projects) == {new_projects.serial}
    # One rename in the certificate folder is one reload of the TLS context.
    assert await _stat(mesh.projects, server_updates) == server_updates_before + 1
    assert await _stat(mesh.reflector, client_updates) == client_updates_before + 1
    assert await _stat(mesh.projects, "sds.mesh-identity.key_rotation_failed") == 0
    assert [exc for exc in through_sidecar if exc is not None] == []
    assert [exc for exc in new_connections if exc is not None] == []
    assert len(through_sidecar) > rotated_at[0]
    assert len(new_connections) > rotated_at[1]


# --- rendering ----------------------------------------------------------------------


def _render(topology: dict, workload: str, upstreams: dict[str, tuple[str, int, int]],
            tmp_path: Path) -> dict:
    inbound = None if workload == "gateway" else ("127.0.0.1", 15000)
    app = None if workload == "gateway" else ("127.0.0.1", 15001)
    return render_sidecar_config(
        topology, workload, inbound=inbound, app=app, upstreams=upstreams,
        sds_dir=tmp_path / "sds", admin=("127.0.0.1", 15002), access_log=tmp_path / "access.log",
    )


def _all_upstreams(topology: dict, workload: str) -> dict[str, tuple[str, int, int]]:
    return {name: ("127.0.0.1", 16000 + index, 17000 + index)
            for index, name in enumerate(expected_upstreams(topology, workload))}


@pytest.mark.parametrize("workload", ["gateway", "users", "projects", "reflector", "vision"])
def test_rendered_rbac_matches_topology_clients(workload: str, tmp_path: Path) -> None:
    topology = _test_topology()
    config = _render(topology, workload, _all_upstreams(topology, workload), tmp_path)
    listeners = {listener["name"]: listener for listener in config["static_resources"]["listeners"]}

    assert set(listeners) - {"inbound"} == {
        f"outbound_{name}" for name in expected_upstreams(topology, workload)
    }
    if workload == "gateway":
        assert "inbound" not in listeners
        return
    rbac = listeners["inbound"]["filter_chains"][0]["filters"][0]["typed_config"]
    allowed = {
        principal["authenticated"]["principal_name"]["exact"]
        for policy in rbac["rules"]["policies"].values()
        for principal in policy["principals"]
    }
    namespace = topology["namespace"]
    assert rbac["rules"]["action"] == "ALLOW"
    assert allowed == {identity_uri(client, namespace)
                       for client in topology["workloads"][workload]["clients"]}


def test_rendered_addresses_are_loopback(tmp_path: Path) -> None:
    topology = _test_topology()
    config = _render(topology, "vision", _all_upstreams(topology, "vision"), tmp_path)
    addresses = [config["admin"]["address"]["socket_address"]["address"]]
    for listener in config["static_resources"]["listeners"]:
        addresses.append(listener["address"]["socket_address"]["address"])
    for cluster in config["static_resources"]["clusters"]:
        for group in cluster["load_assignment"]["endpoints"]:
            for endpoint in group["lb_endpoints"]:
                addresses.append(endpoint["endpoint"]["address"]["socket_address"]["address"])

    assert set(addresses) == {"127.0.0.1"}


def test_render_rejects_upstreams_not_in_topology(tmp_path: Path) -> None:
    topology = _test_topology()
    with pytest.raises(ValueError, match="missing \\['reflector'\\]"):
        _render(topology, "vision", {"projects": ("127.0.0.1", 16000, 17000)}, tmp_path)
    with pytest.raises(ValueError, match="not in the topology \\['users'\\]"):
        _render(topology, "reflector", {"projects": ("127.0.0.1", 16000, 17000),
                                        "users": ("127.0.0.1", 16001, 17001)}, tmp_path)


def test_render_rejects_caller_not_in_clients(tmp_path: Path) -> None:
    topology = _test_topology()
    topology["workloads"]["users"]["upstreams"] = ["vision"]
    with pytest.raises(ValueError, match="does not list 'users' in its clients"):
        _render(topology, "users", {"vision": ("127.0.0.1", 16000, 17000)}, tmp_path)


def test_render_rejects_inbound_for_gateway(tmp_path: Path) -> None:
    topology = _test_topology()
    with pytest.raises(ValueError, match="no inbound side"):
        render_sidecar_config(
            topology, "gateway", inbound=("127.0.0.1", 15000), app=("127.0.0.1", 15001),
            upstreams=_all_upstreams(topology, "gateway"), sds_dir=tmp_path,
            admin=("127.0.0.1", 15002), access_log=tmp_path / "access.log",
        )


def test_write_certs_rejects_mismatched_key(tmp_path: Path) -> None:
    root = CertificateAuthority("aiswa test mesh root")
    first = root.issue("projects", "aiswa")
    second = root.issue("projects", "aiswa")
    with pytest.raises(ValueError, match="does not belong"):
        write_certs_atomically(tmp_path / "certs", first.cert_pem, second.key_pem, root.cert_pem)
    assert not (tmp_path / "certs" / "cert.pem").exists()


def test_write_certs_keeps_two_generations(tmp_path: Path) -> None:
    root = CertificateAuthority("aiswa test mesh root")
    certs_dir = tmp_path / "certs"
    generations = []
    for _ in range(3):
        issued = root.issue("projects", "aiswa")
        generations.append(write_certs_atomically(
            certs_dir, issued.cert_pem, issued.key_pem, root.cert_pem))

    assert (certs_dir / "cert.pem").read_bytes() == issued.cert_pem
    assert (certs_dir / "key.pem").read_bytes() == issued.key_pem
    assert (certs_dir / "ca.pem").read_bytes() == root.cert_pem
    assert os.readlink(certs_dir / "..data") == generations[-1].name
    assert not generations[0].exists()
    assert generations[1].exists()
    assert (generations[-1] / "key.pem").stat().st_mode & 0o777 == 0o600


async def test_app_down_is_named_by_inbound(mesh: Mesh, tmp_path) -> None:
    # A projects sidecar whose app port is closed, as when the service has stopped.
    sidecar = await _start_sidecar(
        tmp_path / "projects-without-app", mesh.topology, "projects", mesh.credentials["projects"],
        mesh.root.cert_pem, inbound_port=free_port(), app_port=free_port(), upstreams={},
    )
    try:
        channel = _mtls_channel(sidecar.inbound_port, identity_dns("projects", mesh.namespace),
                                mesh.root.cert_pem, mesh.credentials["reflector"])
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _call(channel)
    finally:
        _stop(sidecar.process)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value
    assert caught.value.details().startswith("upstream connect error")
    assert caught.value.details().endswith(
        "(reported by the sidecar in front of projects: projects is not answering; retry later)")
