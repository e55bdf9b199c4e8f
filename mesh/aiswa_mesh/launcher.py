"""Start, stop and inspect the local AI-SWA platform under supervisord.

Usage: ``python -m aiswa_mesh.launcher up|down|status|logs|url NAME``.
Everything it creates lives under the state folder (``.state/`` in the
checkout, or ``AISWA_STATE_DIR``), except the pods' network namespaces and
links (aiswa_mesh._network); ``down`` stops only the processes it started and
removes only the namespaces and links that it created.
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
import httpx

from aiswa_runtime import load_topology
from aiswa_runtime._amqp import declare_topology

from ._mesh import Mesh
from ._network import CIDR_VARIABLE
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
from .pods import PodsConfigError
from ._state import ROOT, StateLayout, default_layout, is_root
from ._supervisor import Program, Supervisor, render_config
from ._users import workload_home

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
        self.supervisor = Supervisor(layout)
        if os.environ.get("AISWA_MESH") == "0":
            raise SystemExit("AISWA_MESH=0 is no longer supported: the services get their "
                             "database and RabbitMQ credentials from the mesh's OpenBao")
        self._configure()

    def _configure(self) -> None:
        """Set every server's addresses from the pods' current state (see _network)."""
        layout = self.layout
        try:
            self.mesh = Mesh(layout, self.topology)
        except PodsConfigError as exc:
            raise SystemExit(f"launcher: {exc} (mesh.pods in mesh/topology.yaml, or "
                             f"{CIDR_VARIABLE})") from None
        self.network = self.mesh.network
        hosts = tuple(self.network.host_addresses)
        infra = self.topology["infrastructure"]
        self.postgres = Postgres(
            layout, infra["postgres"]["port"], listen_hosts=hosts,
            client_range=str(self.network.pods.network) if self.network.enabled else None)
        rabbit = infra["rabbitmq"]
        self.rabbitmq = RabbitMQ(
            layout, rabbit["amqp_port"], rabbit["dist_port"], rabbit["epmd_port"], rabbit["vhost"],
            rabbit["management_port"], listen_hosts=hosts,
        )

    @property
    def gateway_url(self) -> str:
        return f"https://127.0.0.1:{self.topology['gateway']['https_port']}"

    @property
    def dashboard_url(self) -> str:
        """The live page, on the dashboard's pod address (the host reaches it over the bridge)."""
        return (f"http://{self.network.address('dashboard')}:"
                f"{self.topology['workloads']['dashboard']['http_port']}/")

    def service_environment(self, name: str) -> dict[str, str]:
        workload = self.topology["workloads"][name]
        infra = self.topology["infrastructure"]
        layout = self.layout
        # Shared servers, as the pods reach them: on the bridge when there are pods.
        host = self.network.host_address
        env = {
            "AISWA_SERVICE": name,
            "AISWA_NAMESPACE": self.topology["namespace"],
            # Inside the pod only: its sidecar is the one way in.
            "AISWA_GRPC_ADDRESS": f"127.0.0.1:{workload['port']}",
            # On the pod's address, for a metrics scraper on the host.
            "AISWA_METRICS_ADDRESS": f"{self.network.address(name)}:{workload['port'] + 1000}",
            "AISWA_STATE_DIR": str(layout.root),
            "AISWA_TOPOLOGY": str(ROOT / "mesh" / "topology.yaml"),
            "AISWA_TRACE_EXPORTER": os.environ.get("AISWA_TRACE_EXPORTER", "otlp"),
            "AISWA_TRACE_ENDPOINT": f"{host}:{infra['collector']['port']}",
            "AISWA_LOG_LEVEL": os.environ.get("AISWA_LOG_LEVEL", "INFO"),
            "PYTHONUNBUFFERED": "1",
            # No credentials: the service obtains them from OpenBao with the
            # login that aiswa_mesh.deliver hands over, and renews them.
            "AISWA_AMQP_URL": (f"amqp://{host}:{infra['rabbitmq']['amqp_port']}"
                               f"/{infra['rabbitmq']['vhost']}"),
            "AISWA_AMQP_CREDS": f"{RABBITMQ_MOUNT}/creds/{name}",
        }
        env.update(self.mesh.openbao_environment())
        if "database" in workload:
            env["AISWA_DATABASE_URL"] = (f"postgresql://{host}:{infra['postgres']['port']}"
                                         f"/{workload['database']}")
            env["AISWA_DATABASE_CREDS"] = f"{DATABASE_MOUNT}/creds/{database_roles(name)[0]}"
        for upstream in workload.get("upstreams", []):
            port = self.mesh.outbound_port(name, upstream)
            env[f"AISWA_UPSTREAM_{upstream.upper()}"] = f"127.0.0.1:{port}"
        env["AISWA_OPA_URL"] = self.mesh.opa_url(name)
        if name == "users":
            env["AISWA_USERS_SIGNING_KEY"] = str(self.signing_key)
        if name == "projects":
            env["AISWA_ARCHIVE_DIR"] = str(layout.archives)
        if name == "dashboard":
            env["AISWA_HTTP_ADDRESS"] = f"{self.network.address(name)}:{workload['http_port']}"
            env["AISWA_PROTO_ROOT"] = str(ROOT / "proto")
            queues = self.topology["queues"]
            env["AISWA_DASHBOARD_WATCH_QUEUES"] = ",".join(
                [*queues, *(spec["dead_letter"] for spec in queues.values() if "dead_letter" in spec)])
            # NOTE: browsers cannot send the mesh identity that OPA needs, so
            # the page and its WebSocket are open to the host and the other
            # pods. The gRPC stream stays behind the sidecar and OPA.
            env["AISWA_DASHBOARD_WS_AUTHZ"] = "off"
        return env

    @property
    def signing_key(self) -> Path:
        """The users service's token signing key, in its home."""
        return workload_home(self.layout, "users") / "signing-key.pem"

    def programs(self) -> list[Program]:
        python = str(self.layout.venv_python)
        as_user = self.mesh.users.command
        programs = [
            Program("postgres", self.postgres.command(), 10,
                    user=self.postgres.os_user if is_root() else None, stop_signal="INT"),
            Program("epmd", as_user("rabbitmq", self.rabbitmq.epmd_command()), 15),
            Program("rabbitmq", as_user("rabbitmq", self.rabbitmq.command()), 20,
                    environment=self.rabbitmq.environment(), stop_wait_seconds=60),
            Program("collector", as_user("collector", [
                python, "-m", "aiswa_mesh.collector",
                *(argument for host in self.network.host_addresses for argument in (
                    "--address", f"{host}:{self.topology['infrastructure']['collector']['port']}")),
                "--output", str(self.layout.traces / "spans.jsonl")]), 25, directory=ROOT),
        ]
        programs += self.mesh.infrastructure_programs(python)
        opa = str(self.layout.root / "tools" / "go" / "bin" / "opa")
        for name in ("gateway", *SERVICES):
            programs += self.mesh.workload_programs(name, opa)
        # deliver runs on the host, where it reaches OpenBao, and then
        # executes `ip netns exec <pod>`, which executes the app in its pod.
        in_pod = self.mesh.in_pod
        for priority, name in enumerate(PYTHON_SERVICES, start=30):
            programs.append(Program(
                name, self.mesh.delivered(
                    python, name, in_pod(name, name, [python, "-m", f"aiswa_{name}", "serve"])),
                priority, environment=self.service_environment(name), directory=ROOT,
            ))
        for name in NODE_SERVICES:
            programs.append(Program(
                name, self.mesh.delivered(python, name, in_pod(
                    name, name, ["node", str(ROOT / f"{name}-node" / "src" / "main.js")])),
                45, environment=self.service_environment(name), directory=ROOT / f"{name}-node",
            ))
        programs.append(Program(
            "gateway", self._gateway_command(), 50, stop_wait_seconds=10,
        ))
        return programs

    def _gateway_command(self) -> list[str]:
        from .envoy_gateway import envoy_binary

        # Nothing restarts the edge in place, and hot restart's shared memory
        # in /dev/shm would outlive it.
        return self.mesh.users.command("edge", [
            str(envoy_binary()), "-c", str(self.layout.envoy / "gateway.yaml"),
            "--log-level", "warn", "--disable-hot-restart"])

    def _render_gateway(self) -> Path:
        from .envoy_gateway import write_gateway_config
        from .pki import ensure_gateway_tls

        tls = ensure_gateway_tls(self.layout.pki)
        # The edge calls each workload through the gateway's own sidecar,
        # which presents the `gateway` identity. The edge is the platform's
        # ingress and stays on the host. With pods it reaches the sidecar in
        # the gateway's pod through UNIX sockets.
        service_hosts = {name: self.mesh.gateway_outbound(name)
                         for name in self.mesh.upstreams("gateway")}
        return write_gateway_config(
            self.topology,
            service_hosts=service_hosts,
            path=self.layout.envoy / "gateway.yaml",
            descriptor_set=self.layout.root / "gen" / "aiswa.pb",
            tls=tls,
            access_log=self.layout.logs / "gateway-access.log",
            # A socket only its owner may use: the admin interface can stop Envoy or dump
            # its configuration, and on a TCP port any local user could.
            admin=self.gateway_admin,
        )

    @property
    def gateway_admin(self) -> Path:
        """The UNIX socket (mode 0600) of the edge Envoy's admin interface, in its home."""
        return workload_home(self.layout, "edge") / "admin.sock"

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
        fallback = self.network.start()
        self._configure()
        if fallback:
            print(f"launcher: no pods: {fallback}")
        else:
            pods = self.network.pods
            print(f"launcher: one pod per workload on bridge {pods.bridge} ({pods.network}); "
                  f"shared servers listen on {pods.host_address}")
        for warning in self.network.warnings:
            print(f"launcher: WARNING: {warning}")
        self.postgres.prepare()
        self.rabbitmq.prepare()
        # Static passwords of earlier versions; OpenBao issues every login now.
        for stale in [*layout.secrets.glob("postgres-*"), *layout.secrets.glob("rabbitmq-*")]:
            stale.unlink()
        self.render()
        self._give_to_workloads()
        self.supervisor.start_daemon()

        self._start("postgres", self.postgres.wait_ready)
        groups = []
        for name in PYTHON_SERVICES:
            workload = self.topology["workloads"][name]
            self.postgres.ensure_service_database(workload["database"], owner_role(name),
                                                  app_role(name))
            groups += [owner_role(name), app_role(name)]
        self.postgres.ensure_openbao_login(POSTGRES_ADMIN_ROLE, groups)
        self._start("epmd")
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
            self._start(name, lambda name=name: self._wait_app(name))
            if name == "users":
                self._bootstrap_admin()
        for name in NODE_SERVICES:
            self._start_pod_sidecars(name)
            self._start(name, lambda name=name: self._wait_app(name))
        self._start_pod_sidecars("gateway")
        self._start("gateway", self._wait_gateway)
        print(f"AI-SWA is up.\n  API (REST/JSON and gRPC): {self.gateway_url}"
              f"\n  dashboard:                {self.dashboard_url}"
              f"\n  gateway CA certificate:   {layout.pki / 'gateway-ca.pem'}"
              f"\n  admin API key:            {layout.admin_key}"
              f"\n  logs:                     {layout.logs}/<program>.log  (`make logs`)"
              f"\n  stop with:                make down")

    def _give_to_workloads(self) -> None:
        users = self.mesh.users
        # Before the workload homes, the key was in the secrets folder.
        earlier = self.layout.secrets / "users-signing-key.pem"
        users.home("users").mkdir(parents=True, exist_ok=True)
        if earlier.exists() and not self.signing_key.exists():
            earlier.rename(self.signing_key)
        self.mesh.give_to_workloads({"projects": [self.layout.archives]})
        # The edge reads its TLS key in the otherwise private pki folder, and
        # writes its access log.
        os.chmod(self.layout.pki, 0o711)
        access_log = self.layout.logs / "gateway-access.log"
        access_log.touch(mode=0o640)
        users.ensure({"edge": [self.layout.pki / "gateway-key.pem", access_log]})
        self.mesh.share_edge_sockets()
        # The shared servers that run as users of their own; PostgreSQL runs as postgres.
        users.ensure({"openbao": [self.mesh.openbao.folder], "rabbitmq": [self.layout.rabbitmq],
                      "collector": [self.layout.traces]}, homes=False)
        if users.enabled:
            print(f"launcher: each workload and shared server runs as its own user "
                  f"({users.user_pattern}, {users.user_pattern}-proxy for its sidecar; "
                  "PostgreSQL as postgres), without capabilities")
        else:
            print(f"launcher: WARNING: every workload and shared server runs as this "
                  f"launcher's user, because {users.reason}")

    def _start_mesh_infrastructure(self, rabbitmq_admin: tuple[str, str]) -> None:
        mesh = self.mesh
        self._start("openbao")

        def postgres_password() -> str:
            # Handed to OpenBao, which rotates it at once (rotate-root).
            password = secrets.token_urlsafe(32)
            self.postgres.set_password(POSTGRES_ADMIN_ROLE, password)
            return password

        mesh.bootstrap(postgres_password=postgres_password, rabbitmq_admin=rabbitmq_admin)
        self._start("openbao-unseal")
        for name in ("gateway", *SERVICES):
            self._start(f"identity-{name}", lambda name=name: mesh.wait_identity(name))

    def _start_pod_sidecars(self, name: str) -> None:
        mesh = self.mesh
        if name != "gateway":
            self._start(f"opa-{name}",
                        lambda: self._probe(name, "http", f"{mesh.opa_url(name)}/health"))
        self._start(f"sidecar-{name}", lambda: _wait_admin_ready(mesh, name))

    def _wait_app(self, name: str) -> None:
        self._probe(name, "grpc-health", f"127.0.0.1:{self.topology['workloads'][name]['port']}")

    def _probe(self, pod: str, kind: str, target: str, timeout: float = 60.0) -> None:
        """Wait for a server inside ``pod`` with aiswa_mesh.probe, run in that pod."""
        result = self.network.probe(pod, kind, target, timeout=timeout)
        if result.returncode != 0:
            raise SystemExit(f"{pod}: {(result.stderr or result.stdout).strip()}")

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
        for name, spec in self.topology["queues"].items():
            if "max_length" in spec:
                self.rabbitmq.bound_queue(name, int(spec["max_length"]))

    def _one_shot(self, name: str, approle: str, database_role: str,
                  args: list[str], *, as_workload: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``python -m aiswa_<name> ARGS`` in the pod of ``name``, with its own single-use
        login as ``approle``, which may log in only from that pod.

        It runs as the workload's user unless ``as_workload`` is false.
        """
        command = [str(self.layout.venv_python), "-m", f"aiswa_{name}", *args]
        if as_workload:
            command = self.mesh.users.command(name, command)
        env = {**os.environ, **self.service_environment(name),
               "AISWA_DATABASE_CREDS": f"{DATABASE_MOUNT}/creds/{database_role}"}
        read_end = pipe_with(self.mesh.openbao.bootstrap_payload(approle))
        env[BOOTSTRAP_FD_VARIABLE] = str(read_end)
        try:
            return subprocess.run(
                self.network.command(name, command),
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
        # As root: it writes the key file into the secrets folder.
        result = self._one_shot("users", "users", database_roles("users")[0],
                                ["bootstrap-admin", "--key-file", str(self.layout.admin_key)],
                                as_workload=False)
        if result.returncode != 0:
            raise SystemExit(f"creating the admin user failed:\n{result.stderr[-3000:]}")
        if result.stdout.strip():
            print(result.stdout.strip())

    def _wait_gateway(self, timeout: float = 30.0) -> None:
        transport = httpx.HTTPTransport(uds=str(self.gateway_admin))
        with httpx.Client(transport=transport, base_url="http://admin", timeout=2) as client:
            _wait_envoy_ready(client, "the gateway", str(self.gateway_admin), timeout,
                              f"see {self.layout.logs / 'gateway.log'}")

    def _start(self, name: str, wait_ready=None) -> None:  # type: ignore[no-untyped-def]
        """Start program ``name`` and wait until ``wait_ready()`` returns.

        Without ``wait_ready``, wait until supervisord counts the program as
        running (alive for two seconds) instead.
        """
        started = time.monotonic()
        self.supervisor.start(name, wait=wait_ready is None)
        try:
            if wait_ready is not None:
                wait_ready()
        except SystemExit:
            _print_tail(self.layout.logs / f"{name}.log")
            raise
        print(f"  {name:<10} ready ({time.monotonic() - started:.1f} s)")

    def down(self) -> None:
        if self.supervisor.running():
            self.supervisor.shutdown()
            print("AI-SWA stopped.")
        else:
            print("launcher: the platform is not running")
        if self.network.enabled:
            # After the programs: a namespace with processes in it lives on.
            self.network.stop()
            print(f"launcher: removed the pods and bridge {self.network.pods.bridge}")


def _wait_admin_ready(mesh: Mesh, workload: str, timeout: float = 60.0) -> None:
    """Wait until ``workload``'s sidecar reports ready on its admin interface."""
    address = mesh.admin_address(workload)
    where = str(address) if isinstance(address, Path) else f"{address[0]}:{address[1]}"
    with mesh.admin_client(workload) as admin:
        _wait_envoy_ready(admin, f"the sidecar of {workload}", where, timeout)


def _wait_envoy_ready(admin: httpx.Client, what: str, where: str, timeout: float,
                      advice: str = "") -> None:
    """Poll Envoy's admin ``/ready`` until it returns 200, or raise SystemExit after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = "no reply"
    while time.monotonic() < deadline:
        try:
            reply = admin.get("/ready")
            if reply.status_code == 200:
                return
            last = f"status {reply.status_code}: {reply.text.strip()}"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.3)
    raise SystemExit(f"{what} was not ready at {where} within {timeout:g} s (last: {last})"
                     + (f"; {advice}" if advice else ""))


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
    parser.add_argument("command", choices=["up", "down", "status", "logs", "url"])
    parser.add_argument("name", nargs="?", choices=["gateway", "dashboard"],
                        help="with url: the address to print")
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
    elif args.command == "url":
        print(platform.dashboard_url if args.name == "dashboard" else platform.gateway_url)
    else:
        for path in sorted(platform.layout.logs.glob("*.log")):
            _print_tail(path, 10)


if __name__ == "__main__":
    main()
