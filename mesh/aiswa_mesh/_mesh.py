from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from ._network import LOOPBACK, Network
from ._openbao_secrets import CredentialTtl, workload_secret_paths
from ._state import ROOT, StateLayout
from ._supervisor import Program
from ._users import WorkloadUsers, proxy, workload_user
from .envoy_gateway import Address
from .envoy_sidecar import sidecar_command, write_sidecar_config
from .openbao import DEFAULT_BOUND_CIDRS, OpenBao, wait_for_identity


# Environment of every workload's OPA. Go's default GOMAXPROCS is the number of CPU
# cores. With 1, a decision takes less time on a machine that runs every workload
# (bench_mesh.py measures both, see docs/benchmarks.md).
OPA_ENVIRONMENT = {"GOMAXPROCS": "1"}


def opa_command(opa_binary: str, address: tuple[str, int],
                settings: tuple[str, ...] = ()) -> list[str]:
    """Return the command line of a workload's OPA, serving policies/rego/ at ``address``.

    OPA reloads a policy or data file when it changes (--watch) and logs every
    decision as a JSON line to its standard output. Its HTTP access log is at
    debug level, so hidden: at info it adds two lines to every decision.
    Each of ``settings`` ("key=value") becomes one more ``--set``.
    """
    host, port = address
    return [opa_binary, "run", "--server", "--addr", f"{host}:{port}",
            "--skip-version-check", "--watch", "--log-format", "json",
            "--log-level-request", "debug",
            "--set", "decision_logs.console=true",
            *(argument for setting in settings for argument in ("--set", setting)),
            str(ROOT / "policies" / "rego")]


@dataclass(frozen=True)
class MeshPorts:
    """Ports of one workload's pod: app, sidecar inbound and admin, OPA.

    The app and OPA listen on 127.0.0.1 inside the pod and the inbound
    listener on the pod's address. With pods the admin interface is a UNIX
    socket instead (:meth:`Mesh.admin_address`).
    """

    app: int
    inbound: int
    admin: int
    opa: int


class Mesh:
    """The local mesh: OpenBao identities, an Envoy sidecar and an OPA per workload.

    Each workload's app, sidecar and OPA share a pod (aiswa_mesh._network).
    """

    def __init__(self, layout: StateLayout, topology: dict) -> None:
        self.layout = layout
        self.topology = topology
        settings = topology["mesh"]
        self.settings = settings
        self.network = Network(layout, topology)
        self.openbao = OpenBao(layout, int(settings["openbao_port"]),
                               listen_hosts=self.network.host_addresses)
        self.workloads = list(topology["workloads"])
        self.users = WorkloadUsers(layout)
        # AISWA_CERT_TTL (an OpenBao duration such as 2m) overrides the
        # topology's lifetime, so that tests can watch certificates rotate.
        self.certificate_ttl = os.environ.get("AISWA_CERT_TTL") or str(settings["certificate_ttl"])
        # AISWA_CRED_TTL and AISWA_CRED_MAX_TTL do the same for the database
        # and RabbitMQ leases.
        self.credential_ttl = CredentialTtl(
            os.environ.get("AISWA_CRED_TTL") or str(settings["credential_ttl"]),
            os.environ.get("AISWA_CRED_MAX_TTL") or str(settings["credential_max_ttl"]),
        )

    def ports(self, workload: str) -> MeshPorts:
        if workload == "gateway":
            admin = int(self.settings["gateway_sidecar_admin_port"])
            return MeshPorts(app=0, inbound=0, admin=admin, opa=0)
        base = int(self.topology["workloads"][workload]["port"])
        return MeshPorts(
            app=base,
            inbound=base + int(self.settings["sidecar_inbound_offset"]),
            admin=base + int(self.settings["sidecar_admin_offset"]),
            opa=base + int(self.settings["opa_offset"]),
        )

    def outbound_port(self, workload: str, upstream: str) -> int:
        """Return the local port on which ``workload``'s sidecar forwards calls to ``upstream``."""
        callers = ["gateway", *self.workloads]
        return (int(self.settings["outbound_base_port"])
                + 10 * callers.index(workload) + self.workloads.index(upstream))

    def upstreams(self, workload: str) -> list[str]:
        if workload == "gateway":
            return [name for name, spec in self.topology["workloads"].items()
                    if "gateway" in spec.get("clients", [])]
        return list(self.topology["workloads"][workload].get("upstreams", []))

    def inbound_address(self, workload: str) -> tuple[str, int]:
        """Return where ``workload``'s sidecar accepts mTLS calls: its pod's address."""
        return self.network.address(workload), self.ports(workload).inbound

    def admin_address(self, workload: str) -> Address:
        """Return ``workload``'s sidecar admin address: a UNIX socket with pods, else loopback.

        The socket is in the home of the workload's proxy user, which only that user may enter.
        """
        if self.network.enabled:
            return self.users.home(proxy(workload)) / "admin.sock"
        return LOOPBACK, self.ports(workload).admin

    def admin_client(self, workload: str, timeout: float = 2.0) -> httpx.Client:
        """Open a client of ``workload``'s sidecar admin interface (base URL ``http://admin``)."""
        address = self.admin_address(workload)
        if isinstance(address, Path):
            return httpx.Client(transport=httpx.HTTPTransport(uds=str(address)),
                                base_url="http://admin", timeout=timeout)
        return httpx.Client(base_url=f"http://{address[0]}:{address[1]}", timeout=timeout,
                            trust_env=False)

    def gateway_outbound(self, upstream: str) -> Address:
        """Return where the gateway's edge proxy reaches ``upstream`` through the gateway's sidecar.

        With pods the edge proxy runs on the host and the sidecar in the
        gateway's pod, so the outbound listeners are UNIX sockets in
        :attr:`edge_sockets`.
        """
        if self.network.enabled:
            return self.edge_sockets / f"to-{upstream}.sock"
        return LOOPBACK, self.outbound_port("gateway", upstream)

    @property
    def edge_sockets(self) -> Path:
        """Return the folder of the sockets from the edge proxy to the gateway's sidecar.

        The sidecar (user aiswa-gateway-proxy) creates them with mode 0660. The
        folder belongs to the edge's group and is setgid, so the sockets get
        that group too, and no other user may enter it (mode 2750).
        """
        return self.layout.run / "edge"

    def share_edge_sockets(self) -> None:
        """Create :attr:`edge_sockets` for the gateway's sidecar and the edge proxy."""
        folder = self.edge_sockets
        folder.mkdir(mode=0o700, exist_ok=True)
        if not self.users.enabled:
            os.chmod(folder, 0o700)
            return
        shutil.chown(folder, workload_user(proxy("gateway")), workload_user("edge"))
        os.chmod(folder, 0o2750)

    def certs_dir(self, workload: str) -> Path:
        return self.layout.root / "identity" / workload

    def sidecar_logs(self, workload: str) -> tuple[Path, Path]:
        """Return the paths of ``workload``'s sidecar log and access log."""
        return (self.layout.logs / f"sidecar-{workload}.envoy.log",
                self.layout.logs / f"sidecar-{workload}-access.log")

    def give_to_workloads(self, extra: dict[str, list[Path]]) -> None:
        """Create the workload users: the proxy's owns the certificates and sidecar logs, the
        app's ``extra``.

        Envoy opens its logs as the proxy's user, in a folder that user cannot
        write, so they are created here first.
        """
        owned = {}
        for workload in ["gateway", *self.workloads]:
            self.certs_dir(workload).mkdir(mode=0o700, parents=True, exist_ok=True)
            logs = self.sidecar_logs(workload)
            for log in logs:
                log.touch(mode=0o640)
            owned[proxy(workload)] = [self.certs_dir(workload), *logs]
            if workload != "gateway":
                owned[workload] = extra.get(workload, [])
        self.users.ensure(owned)

    def opa_url(self, workload: str) -> str:
        """Return the URL of ``workload``'s OPA, inside its pod."""
        return f"http://{LOOPBACK}:{self.ports(workload).opa}"

    def render(self) -> list[Path]:
        """Write every sidecar's Envoy configuration from the topology; return the paths."""
        written = []
        for workload in ["gateway", *self.workloads]:
            ports = self.ports(workload)
            is_gateway = workload == "gateway"
            written.append(write_sidecar_config(
                self.topology, workload,
                path=self.layout.envoy / f"sidecar-{workload}.yaml",
                inbound=None if is_gateway else self.inbound_address(workload),
                app=None if is_gateway else (LOOPBACK, ports.app),
                upstreams={
                    upstream: (*self.inbound_address(upstream),
                               self._local_outbound(workload, upstream))
                    for upstream in self.upstreams(workload)
                },
                certs_dir=self.certs_dir(workload),
                admin=self.admin_address(workload),
                access_log=self.sidecar_logs(workload)[1],
            ))
        return written

    def _local_outbound(self, workload: str, upstream: str) -> int | Path:
        if workload == "gateway":
            address = self.gateway_outbound(upstream)
            return address if isinstance(address, Path) else address[1]
        return self.outbound_port(workload, upstream)

    def infrastructure_programs(self, python: str) -> list[Program]:
        root = str(self.layout.root)
        port = str(self.settings["openbao_port"])
        programs = [
            Program("openbao", self.users.command("openbao", self.openbao.command()), 21),
            Program("openbao-unseal", [python, "-m", "aiswa_mesh.openbao", "unseal", "--port",
                                       port, "--watch", "5", "--state", root], 22,
                    directory=ROOT),
        ]
        for workload in ["gateway", *self.workloads]:
            programs.append(Program(
                f"identity-{workload}",
                self.delivered(python, workload, self.users.command(proxy(workload), [
                    python, "-m", "aiswa_mesh.openbao", "agent", "--state", root,
                    "--port", port, "--workload", workload,
                    "--namespace", self.topology["namespace"],
                    "--out", str(self.certs_dir(workload)), "--ttl", self.certificate_ttl])),
                23, directory=ROOT,
            ))
        return programs

    def delivered(self, python: str, approle: str, command: list[str]) -> list[str]:
        """Wrap ``command`` so that it starts with a single-use login as ``approle``."""
        return [python, "-m", "aiswa_mesh.deliver", "--state", str(self.layout.root),
                "--port", str(self.settings["openbao_port"]), "--approle", approle,
                "--", *command]

    def openbao_environment(self) -> dict[str, str]:
        """Return OpenBao's address and CA for the workloads: on the bridge when there are pods."""
        address = f"https://{self.network.host_address}:{self.openbao.port}"
        return {"AISWA_OPENBAO_ADDR": address,
                "AISWA_OPENBAO_CACERT": str(self.openbao.ca_cert)}

    def in_pod(self, workload: str, user: str, command: list[str]) -> list[str]:
        """Return ``command`` run in ``workload``'s pod as ``user`` (see aiswa_mesh._users)."""
        return self.network.command(workload, self.users.command(user, command))

    def workload_programs(self, workload: str, opa_binary: str) -> list[Program]:
        """Return the programs of the sidecar and OPA that start before ``workload``'s app."""
        ports = self.ports(workload)
        sidecar = sidecar_command(self.layout.envoy / f"sidecar-{workload}.yaml",
                                  log_path=self.sidecar_logs(workload)[0])
        programs = [Program(f"sidecar-{workload}",
                            self.in_pod(workload, proxy(workload), sidecar), 28)]
        if workload != "gateway":
            opa = opa_command(opa_binary, (LOOPBACK, ports.opa))
            programs.insert(0, Program(
                f"opa-{workload}", self.in_pod(workload, proxy(workload), opa),
                27, environment=OPA_ENVIRONMENT,
            ))
        return programs

    def bootstrap(self, *, postgres_password: Callable[[], str],
                  rabbitmq_admin: tuple[str, str]) -> None:
        """Initialise and unseal OpenBao, configure the PKI and the secrets engines; idempotent."""
        self.openbao.initialize()
        extra = {name: workload_secret_paths(self.topology, name) for name in self.workloads}
        # A workload logs in from its pod, and its identity agent from the host's loopback.
        cidrs = {name: [*DEFAULT_BOUND_CIDRS, *([f"{self.network.address(name)}/32"]
                                                if self.network.enabled else [])]
                 for name in ["gateway", *self.workloads]}
        self.openbao.configure_pki(["gateway", *self.workloads], self.topology["namespace"],
                                   self.certificate_ttl, extra_paths=extra, bound_cidrs=cidrs)
        self.openbao.configure_secrets(self.topology, self.credential_ttl,
                                       postgres_password=postgres_password,
                                       rabbitmq_admin=rabbitmq_admin, bound_cidrs=cidrs)

    def wait_identity(self, workload: str) -> None:
        wait_for_identity(self.certs_dir(workload), timeout=60)
