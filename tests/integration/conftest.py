"""Fixtures for tests against the running platform (`make up`)."""

from __future__ import annotations

import io
import subprocess
import sys
import sysconfig
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from aiswa_cli._api import Client
from aiswa_mesh._rabbitmq import RabbitMQ
from aiswa_mesh._state import StateLayout, default_layout
from aiswa_mesh.localca import free_port
from aiswa_mesh.openbao import OpenBao
from aiswa_runtime import load_topology

ROOT = Path(__file__).resolve().parents[2]
STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="session")
def layout() -> StateLayout:
    layout = default_layout()
    if not layout.supervisor_socket.exists():
        pytest.fail("the platform is not running; `make test` starts it, or run `make up`")
    return layout


@pytest.fixture(scope="session")
def topology() -> dict:
    return load_topology(str(ROOT / "mesh" / "topology.yaml"))


@pytest.fixture(scope="session")
def rabbitmq(layout, topology) -> RabbitMQ:
    """The platform's RabbitMQ, for rabbitmqctl."""
    rabbit = topology["infrastructure"]["rabbitmq"]
    return RabbitMQ(layout, rabbit["amqp_port"], rabbit["dist_port"], rabbit["epmd_port"],
                    rabbit["vhost"], rabbit["management_port"])


@pytest.fixture(scope="session")
def gateway_url(topology) -> str:
    return f"https://127.0.0.1:{topology['gateway']['https_port']}"


@pytest.fixture(scope="session")
def ca_cert(layout) -> str:
    return str(layout.pki / "gateway-ca.pem")


@pytest.fixture(scope="session")
def admin(layout, gateway_url, ca_cert, tmp_path_factory) -> Client:
    client = Client(gateway_url, ca_cert, tmp_path_factory.mktemp("admin") / "token.json")
    client.login(layout.admin_key.read_text().strip())
    return client


@pytest.fixture(scope="session")
def make_user(admin, gateway_url, ca_cert, tmp_path_factory) -> Callable[[str], tuple[Client, dict]]:
    """Create a user with ``role`` through the API; return a logged-in client and the user."""

    def create(role: str) -> tuple[Client, dict]:
        user = admin.request("POST", "/v1/users", body={
            "email": f"{role}-{uuid.uuid4().hex[:8]}@example.test", "role": f"ROLE_{role.upper()}",
        })
        key = admin.request("POST", f"/v1/users/{user['user_id']}/api-keys", body={"name": "test"})
        client = Client(gateway_url, ca_cert, tmp_path_factory.mktemp(role) / "token.json")
        client.login(key["api_key"])
        return client, user

    return create


class Leases:
    """Short-lived credentials that the tests take from OpenBao with the root token.

    The tests act as the operator: they read a service's own creds path, so
    each login has exactly that service's rights. Every lease is revoked at
    the end of the session.
    """

    def __init__(self, layout: StateLayout, topology: dict) -> None:
        self.bao = OpenBao(layout, int(topology["mesh"]["openbao_port"]))
        self.topology = topology
        self.lease_ids: list[str] = []

    def read(self, path: str) -> dict:
        reply = self.bao.root_read(path)
        self.lease_ids.append(reply["lease_id"])
        return reply["data"]

    def service_dsn(self, service: str, *, migrate: bool = False) -> str:
        port = self.topology["infrastructure"]["postgres"]["port"]
        database = self.topology["workloads"][service]["database"]
        login = self.read(f"database/creds/{service}{'-migrate' if migrate else ''}")
        return (f"postgresql://{login['username']}:{quote(login['password'], safe='')}"
                f"@127.0.0.1:{port}/{database}")

    def amqp_url(self, role: str) -> str:
        rabbit = self.topology["infrastructure"]["rabbitmq"]
        login = self.read(f"rabbitmq/creds/{role}")
        return (f"amqp://{quote(login['username'], safe='')}:{quote(login['password'], safe='')}"
                f"@127.0.0.1:{rabbit['amqp_port']}/{rabbit['vhost']}")

    def revoke_all(self) -> None:
        for lease_id in self.lease_ids:
            try:
                self.bao.revoke_lease(lease_id)
            except Exception as exc:  # the platform may be down already
                print(f"could not revoke a test lease: {exc}")


@pytest.fixture
def leases(layout, topology) -> Iterator[Leases]:
    leases = Leases(layout, topology)
    yield leases
    leases.revoke_all()


@pytest.fixture
def database(leases) -> Callable[[str], psycopg.Connection]:
    connections: list[psycopg.Connection] = []

    def connect(service: str) -> psycopg.Connection:
        connection = psycopg.connect(leases.service_dsn(service), autocommit=True)
        connections.append(connection)
        return connection

    yield connect
    for connection in connections:
        connection.close()


@pytest.fixture
def amqp_url(leases) -> str:
    """A login with every right on the platform's vhost, like the launcher's."""
    return leases.amqp_url("operator")


class OpenBaoServer:
    """One private OpenBao process started from OpenBao.command(), logging into its state folder."""

    def __init__(self, bao: OpenBao) -> None:
        self.bao = bao
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.bao.config()
        log = open(self.bao.root / "openbao-server.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(self.bao.command(), stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


@contextmanager
def private_openbao(tmp_path_factory) -> Iterator[OpenBaoServer]:  # type: ignore[no-untyped-def]
    """Start and initialize an OpenBao of its own on free ports; stop it on exit."""
    state = tmp_path_factory.mktemp("openbao-state")
    server = OpenBaoServer(OpenBao(state, free_port(), cluster_port=free_port()))
    server.start()
    try:
        assert server.bao.initialize() is True
        yield server
    finally:
        server.stop()


def supervisorctl(layout: StateLayout, *args: str) -> str:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "supervisorctl"), "-c", str(layout.supervisord_conf),
         *args], capture_output=True, text=True, check=False,
    )
    return result.stdout


def python_files(package: Path) -> list[str]:
    return sorted(
        str(path.relative_to(package)) for path in package.rglob("*.py")
        if "__pycache__" not in path.parts
    )


@pytest.fixture
def project(admin) -> Iterator[dict]:
    yield admin.request("POST", "/v1/projects", body={"name": f"test-{uuid.uuid4().hex[:8]}"})


def pack_python(folders) -> bytes:
    """Return a tar.gz of the .py files of ``folders``, each under its folder's name."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for folder in folders:
            for path in sorted(folder.rglob("*.py")):
                if "__pycache__" not in path.parts:
                    archive.add(path, arcname=f"{folder.name}/{path.relative_to(folder)}")
    return buffer.getvalue()


def wait_run(client, run_id: str, timeout: float = 300) -> dict:
    """Poll the run until it completed or failed; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.run(run_id)
        if run["state"] in {"RUN_STATE_COMPLETED", "RUN_STATE_FAILED"}:
            return run
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} did not finish within {timeout} s: {run}")
