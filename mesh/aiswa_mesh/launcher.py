"""Start, stop and inspect the local AI-SWA platform under supervisord.

Usage: ``python -m aiswa_mesh.launcher up|down|status|logs``. Everything it
creates lives under the state folder (``.state/`` in the checkout, or
``AISWA_STATE_DIR``); ``down`` stops only the processes it started.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aiswa_runtime import load_topology
from aiswa_runtime._amqp import declare_topology

from ._mesh import Mesh
from ._openbao_secrets import (
    DATABASE_MOUNT,
    OPERATOR_ROLE,
    POSTGRES_ADMIN_ROLE,
    RABBITMQ_MOUNT,
    app_role,
    database_roles,
    migrate_approle,
    owner_role,
)
from ._postgres import Postgres
from ._rabbitmq import RabbitMQ
from .deliver import pipe_with
from .openbao import BOOTSTRAP_FD_VARIABLE
from ._state import ROOT, StateLayout, default_layout, is_root
from ._supervisor import Program, Supervisor, render_config

log = logging.getLogger("aiswa.launcher")

PYTHON_SERVICES = ("users", "projects", "reflector", "vision")
# Node.js workloads: no database and no migrations; each runs dashboard-node/src/main.js.
NODE_SERVICES = ("dashboard",)
SERVICES = (*PYTHON_SERVICES, *NODE_SERVICES)
# RabbitMQ's administrator: the management API login of OpenBao's secrets engine.
RABBITMQ_ADMIN = "aiswa-admin"


class Platform:
    def __init__(self, layout: StateLayout) -> None:
        self.layout = layout
        self.topology = load_topology(str(ROOT / "mesh" / "topology.yaml"))
        infra = self.topology["infrastructure"]
        self.postgres = Postgres(layout, infra["postgres"]["port"])
        rabbit = infra["rabbitmq"]
        self.rabbitmq = RabbitMQ(
            layout, rabbit["amqp_port"], rabbit["dist_port"], rabbit["epmd_port"], rabbit["vhost"],
            rabbit["management_port"],
        )
        self.supervisor = Supervisor(layout)
        if os.environ.get("AISWA_MESH") == "0":
            raise SystemExit("AISWA_MESH=0 is no longer supported: the services get their "
                             "database and RabbitMQ credentials from the mesh's OpenBao")
        self.mesh = Mesh(layout, self.topology)

    @property
    def gateway_url(self) -> str:
        return f"https://127.0.0.1:{self.topology['gateway']['https_port']}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.topology['workloads']['dashboard']['http_port']}/"

    def service_environment(self, name: str) -> dict[str, str]:
        workload = self.topology["workloads"][name]
        infra = self.topology["infrastructure"]
        layout = self.layout
        env = {
            "AISWA_SERVICE": name,
            "AISWA_NAMESPACE": self.topology["namespace"],
            "AISWA_GRPC_ADDRESS": f"127.0.0.1:{workload['port']}",
            "AISWA_METRICS_ADDRESS": f"127.0.0.1:{workload['port'] + 1000}",
            "AISWA_STATE_DIR": str(layout.root),
            "AISWA_TOPOLOGY": str(ROOT / "mesh" / "topology.yaml"),
            "AISWA_TRACE_EXPORTER": os.environ.get("AISWA_TRACE_EXPORTER", "otlp"),
            "AISWA_TRACE_ENDPOINT": f"127.0.0.1:{infra['collector']['port']}",
            "AISWA_LOG_LEVEL": os.environ.get("AISWA_LOG_LEVEL", "INFO"),
            "PYTHONUNBUFFERED": "1",
            # No credentials: the service obtains them from OpenBao with the
            # login that aiswa_mesh.deliver hands over, and renews them.
            "AISWA_AMQP_URL": (f"amqp://127.0.0.1:{infra['rabbitmq']['amqp_port']}"
                               f"/{infra['rabbitmq']['vhost']}"),
            "AISWA_AMQP_CREDS": f"{RABBITMQ_MOUNT}/creds/{name}",
        }
        env.update(self.mesh.openbao_environment())
        if "database" in workload:
            env["AISWA_DATABASE_URL"] = (f"postgresql://127.0.0.1:{infra['postgres']['port']}"
                                         f"/{workload['database']}")
            env["AISWA_DATABASE_CREDS"] = f"{DATABASE_MOUNT}/creds/{database_roles(name)[0]}"
        for upstream in workload.get("upstreams", []):
            port = self.topology["workloads"][upstream]["port"]
            port = self.mesh.outbound_port(name, upstream)
            env[f"AISWA_UPSTREAM_{upstream.upper()}"] = f"127.0.0.1:{port}"
        env["AISWA_OPA_URL"] = self.mesh.opa_url(name)
        if name == "users":
            env["AISWA_USERS_SIGNING_KEY"] = str(layout.secrets / "users-signing-key.pem")
        if name == "projects":
            env["AISWA_ARCHIVE_DIR"] = str(layout.archives)
        if name == "dashboard":
            env["AISWA_HTTP_ADDRESS"] = f"127.0.0.1:{workload['http_port']}"
            env["AISWA_PROTO_ROOT"] = str(ROOT / "proto")
            queues = self.topology["queues"]
            env["AISWA_DASHBOARD_WATCH_QUEUES"] = ",".join(
                [*queues, *(spec["dead_letter"] for spec in queues.values() if "dead_letter" in spec)])
            # NOTE: browsers cannot send the mesh identity that OPA needs, so
            # the page's WebSocket is open to local clients, like the app
            # ports. The gRPC stream stays behind the sidecar and OPA.
            env["AISWA_DASHBOARD_WS_AUTHZ"] = "off"
        return env

    def programs(self) -> list[Program]:
        python = str(self.layout.venv_python)
        programs = [
            Program("postgres", self.postgres.command(), 10,
                    user=self.postgres.os_user if is_root() else None, stop_signal="INT"),
            Program("epmd", self.rabbitmq.epmd_command(), 15),
            Program("rabbitmq", self.rabbitmq.command(), 20,
                    environment=self.rabbitmq.environment(), stop_wait_seconds=60),
            Program("collector", [python, "-m", "aiswa_mesh.collector", "--address",
                                  f"127.0.0.1:{self.topology['infrastructure']['collector']['port']}",
                                  "--output", str(self.layout.traces / "spans.jsonl")], 25,
                    directory=ROOT),
        ]
        programs += self.mesh.infrastructure_programs(python)
        opa = str(self.layout.root / "tools" / "go" / "bin" / "opa")
        for name in ("gateway", *SERVICES):
            programs += self.mesh.workload_programs(name, opa)
        for priority, name in enumerate(PYTHON_SERVICES, start=30):
            programs.append(Program(
                name, self.mesh.delivered(python, name, [python, "-m", f"aiswa_{name}", "serve"]),
                priority, environment=self.service_environment(name), directory=ROOT,
            ))
        for name in NODE_SERVICES:
            programs.append(Program(
                name, self.mesh.delivered(
                    python, name, ["node", str(ROOT / f"{name}-node" / "src" / "main.js")]),
                45, environment=self.service_environment(name), directory=ROOT / f"{name}-node",
            ))
        programs.append(Program(
            "gateway", self._gateway_command(), 50, stop_wait_seconds=10,
        ))
        return programs

    def _gateway_command(self) -> list[str]:
        from .envoy_gateway import envoy_binary

        return [str(envoy_binary()), "-c", str(self.layout.envoy / "gateway.yaml"),
                "--log-level", "warn", "--base-id", "7340"]

    def _render_gateway(self) -> Path:
        from .envoy_gateway import write_gateway_config
        from .pki import ensure_gateway_tls

        tls = ensure_gateway_tls(self.layout.pki)
        # The edge calls each workload through the gateway's own sidecar,
        # which presents the `gateway` identity.
        service_hosts = {name: ("127.0.0.1", self.mesh.outbound_port("gateway", name))
                         for name in self.mesh.upstreams("gateway")}
        return write_gateway_config(
            self.topology,
            service_hosts=service_hosts,
            path=self.layout.envoy / "gateway.yaml",
            descriptor_set=self.layout.root / "gen" / "aiswa.pb",
            tls=tls,
            access_log=self.layout.logs / "gateway-access.log",
        )

    def render(self) -> list[Path]:
        """Write the configuration of every program from the topology; return the paths.

        Starts nothing. aiswa_mesh.render.verify checks the result.
        """
        layout = self.layout
        layout.create()
        written = [self._render_gateway()]
        written.append(self.mesh.openbao.config())
        written += self.mesh.render()
        conf = layout.supervisord_conf
        conf.write_text(render_config(layout, self.programs()))
        os.chmod(conf, 0o600)
        return [*written, conf]

    def up(self) -> None:
        layout = self.layout
        layout.create()
        if not is_root():
            print("launcher: not root, so every workload shares the loopback interface; "
                  "any local process can reach the services' gRPC ports")
        self.postgres.prepare()
        self.rabbitmq.prepare()
        # Static passwords of earlier versions; OpenBao issues every login now.
        for stale in [*layout.secrets.glob("postgres-*"), *layout.secrets.glob("rabbitmq-*")]:
            stale.unlink()
        self.render()
        self.supervisor.start_daemon()

        self._start("postgres", self.postgres.wait_ready)
        groups = []
        for name in PYTHON_SERVICES:
            workload = self.topology["workloads"][name]
            self.postgres.ensure_service_database(workload["database"], owner_role(name),
                                                  app_role(name))
            groups += [owner_role(name), app_role(name)]
        self.postgres.ensure_openbao_login(POSTGRES_ADMIN_ROLE, groups)
        self._start("epmd", lambda: time.sleep(0.3))
        self._start("rabbitmq", self.rabbitmq.wait_ready)
        # A new administrator password at every start, known only to OpenBao
        # once configure_secrets has passed it on.
        rabbitmq_admin = (RABBITMQ_ADMIN, secrets.token_urlsafe(32))
        self.rabbitmq.ensure_admin(*rabbitmq_admin)
        collector_port = self.topology["infrastructure"]["collector"]["port"]
        self._start("collector", lambda: _wait_grpc_port("collector", collector_port))
        self._start_mesh_infrastructure(rabbitmq_admin)
        self._declare_rabbitmq_topology()
        for name in PYTHON_SERVICES:
            self._migrate(name)
            self._start_pod_sidecars(name)
            port = self.topology["workloads"][name]["port"]
            self._start(name, lambda port=port, name=name: _wait_grpc_health(name, port))
            if name == "users":
                self._bootstrap_admin()
        for name in NODE_SERVICES:
            self._start_pod_sidecars(name)
            port = self.topology["workloads"][name]["port"]
            self._start(name, lambda port=port, name=name: _wait_grpc_health(name, port))
        self._start_pod_sidecars("gateway")
        self._start("gateway", self._wait_gateway)
        print(f"AI-SWA is up.\n  API (REST/JSON and gRPC): {self.gateway_url}"
              f"\n  dashboard:                {self.dashboard_url}"
              f"\n  gateway CA certificate:   {layout.pki / 'gateway-ca.pem'}"
              f"\n  admin API key:            {layout.admin_key}"
              f"\n  logs:                     {layout.logs}/<program>.log  (`make logs`)"
              f"\n  stop with:                make down")

    def _start_mesh_infrastructure(self, rabbitmq_admin: tuple[str, str]) -> None:
        mesh = self.mesh
        self._start("openbao", lambda: None)

        def postgres_password() -> str:
            # Handed to OpenBao, which rotates it at once (rotate-root).
            password = secrets.token_urlsafe(32)
            self.postgres.set_password(POSTGRES_ADMIN_ROLE, password)
            return password

        mesh.bootstrap(postgres_password=postgres_password, rabbitmq_admin=rabbitmq_admin)
        self._start("openbao-unseal", lambda: None)
        for name in ("gateway", *SERVICES):
            self._start(f"identity-{name}", lambda name=name: mesh.wait_identity(name))

    def _start_pod_sidecars(self, name: str) -> None:
        mesh = self.mesh
        ports = mesh.ports(name)
        if name != "gateway":
            self._start(f"opa-{name}", lambda: _wait_http(f"{mesh.opa_url(name)}/health"))
        self._start(f"sidecar-{name}",
                    lambda: _wait_http(f"http://127.0.0.1:{ports.admin}/ready"))

    def _declare_rabbitmq_topology(self) -> None:
        """Declare every exchange and queue with a short-lived operator login.

        Services may not create exchanges or other services' queues, so the
        operator declares them all before any service starts.
        """
        bao = self.mesh.openbao
        lease = bao.root_read(f"{RABBITMQ_MOUNT}/creds/{OPERATOR_ROLE}")
        infra = self.topology["infrastructure"]["rabbitmq"]
        login = lease["data"]
        url = (f"amqp://{quote(login['username'], safe='')}:{quote(login['password'], safe='')}"
               f"@127.0.0.1:{infra['amqp_port']}/{infra['vhost']}")
        try:
            asyncio.run(declare_topology(url))
        finally:
            bao.revoke_lease(lease["lease_id"])

    def _one_shot(self, name: str, approle: str, database_role: str,
                  args: list[str]) -> subprocess.CompletedProcess[str]:
        """Run ``python -m aiswa_<name> ARGS`` with its own single-use login as ``approle``."""
        env = {**os.environ, **self.service_environment(name),
               "AISWA_DATABASE_CREDS": f"{DATABASE_MOUNT}/creds/{database_role}"}
        read_end = pipe_with(self.mesh.openbao.bootstrap_payload(approle))
        env[BOOTSTRAP_FD_VARIABLE] = str(read_end)
        try:
            return subprocess.run(
                [str(self.layout.venv_python), "-m", f"aiswa_{name}", *args],
                env=env, capture_output=True, text=True, check=False, cwd=ROOT,
                pass_fds=(read_end,),
            )
        finally:
            os.close(read_end)

    def _migrate(self, name: str) -> None:
        # Migrations log in with the role that may change the schema; the
        # service itself cannot.
        result = self._one_shot(name, migrate_approle(name), database_roles(name)[1], ["migrate"])
        if result.returncode != 0:
            raise SystemExit(f"migrations of {name} failed:\n{result.stderr[-3000:]}")

    def _bootstrap_admin(self) -> None:
        result = self._one_shot("users", "users", database_roles("users")[0],
                                ["bootstrap-admin", "--key-file", str(self.layout.admin_key)])
        if result.returncode != 0:
            raise SystemExit(f"creating the admin user failed:\n{result.stderr[-3000:]}")
        if result.stdout.strip():
            print(result.stdout.strip())

    def _wait_gateway(self, timeout: float = 30.0) -> None:
        import urllib.request

        admin = self.topology["gateway"]["admin_port"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"the gateway did not become ready; see {self.layout.logs / 'gateway.log'}")

    def _start(self, name: str, wait_ready) -> None:  # type: ignore[no-untyped-def]
        started = time.monotonic()
        self.supervisor.start(name)
        try:
            wait_ready()
        except SystemExit:
            _print_tail(self.layout.logs / f"{name}.log")
            raise
        print(f"  {name:<10} ready ({time.monotonic() - started:.1f} s)")

    def down(self) -> None:
        if not self.supervisor.running():
            print("launcher: the platform is not running")
            return
        self.supervisor.shutdown()
        print("AI-SWA stopped.")


def _wait_grpc_health(name: str, port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as exc:
                last = exc.code().name
            time.sleep(0.3)
    raise SystemExit(f"{name} did not report SERVING on port {port} within {timeout:.0f} s "
                     f"(last: {last})")


def _wait_http(url: str, timeout: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.3)
    raise SystemExit(f"{url} did not return 200 within {timeout:.0f} s (last error: {last})")


def _wait_grpc_port(name: str, port: int, timeout: float = 30.0) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise SystemExit(f"{name} did not listen on port {port} within {timeout:.0f} s") from None


def _print_tail(path: Path, lines: int = 30) -> None:
    if path.exists():
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        print(f"--- last lines of {path} ---", *tail, sep="\n", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "logs"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="launcher: %(message)s")
    platform = Platform(default_layout())
    if args.command == "up":
        platform.up()
    elif args.command == "down":
        platform.down()
    elif args.command == "status":
        if not platform.supervisor.running():
            print("the platform is not running; start it with `make up`")
            sys.exit(3)
        print(platform.supervisor.status_text(), end="")
        print(f"API: {platform.gateway_url}   logs: {platform.layout.logs}")
    else:
        for path in sorted(platform.layout.logs.glob("*.log")):
            _print_tail(path, 10)


if __name__ == "__main__":
    main()
