from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._openbao_secrets import CredentialTtl, workload_secret_paths
from ._state import ROOT, StateLayout
from ._supervisor import Program
from .envoy_sidecar import sidecar_command, write_sidecar_config
from .openbao import OpenBao, wait_for_identity


def opa_command(opa_binary: str, address: tuple[str, int]) -> list[str]:
    """Return the command line of a workload's OPA, serving policies/rego/ at ``address``.

    OPA reloads a policy or data file when it changes (--watch) and logs every
    decision as a JSON line to its standard output.
    """
    host, port = address
    return [opa_binary, "run", "--server", "--addr", f"{host}:{port}",
            "--skip-version-check", "--watch", "--log-format", "json",
            "--set", "decision_logs.console=true",
            str(ROOT / "policies" / "rego")]


@dataclass(frozen=True)
class MeshPorts:
    """Loopback ports of one workload's pod: app, sidecar inbound and admin, OPA."""

    app: int
    inbound: int
    admin: int
    opa: int


class Mesh:
    """The local mesh: OpenBao identities, an Envoy sidecar and an OPA per workload.

    NOTE: every pod shares the loopback interface, so a local process can still
    reach an app's plaintext port directly. Per-pod network namespaces would
    close that gap, and they are not wired into the launcher yet.
    """

    def __init__(self, layout: StateLayout, topology: dict) -> None:
        self.layout = layout
        self.topology = topology
        settings = topology["mesh"]
        self.settings = settings
        self.openbao = OpenBao(layout, int(settings["openbao_port"]))
        self.workloads = list(topology["workloads"])
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

    def certs_dir(self, workload: str) -> Path:
        return self.layout.root / "identity" / workload

    def opa_url(self, workload: str) -> str:
        return f"http://127.0.0.1:{self.ports(workload).opa}"

    def render(self) -> list[Path]:
        """Write every sidecar's Envoy configuration from the topology; return the paths."""
        written = []
        for workload in ["gateway", *self.workloads]:
            ports = self.ports(workload)
            is_gateway = workload == "gateway"
            written.append(write_sidecar_config(
                self.topology, workload,
                path=self.layout.envoy / f"sidecar-{workload}.yaml",
                inbound=None if is_gateway else ("127.0.0.1", ports.inbound),
                app=None if is_gateway else ("127.0.0.1", ports.app),
                upstreams={
                    upstream: ("127.0.0.1", self.ports(upstream).inbound,
                               self.outbound_port(workload, upstream))
                    for upstream in self.upstreams(workload)
                },
                certs_dir=self.certs_dir(workload),
                admin=("127.0.0.1", ports.admin),
                access_log=self.layout.logs / f"sidecar-{workload}-access.log",
            ))
        return written

    def infrastructure_programs(self, python: str) -> list[Program]:
        root = str(self.layout.root)
        port = str(self.settings["openbao_port"])
        programs = [
            Program("openbao", self.openbao.command(), 21),
            Program("openbao-unseal", [python, "-m", "aiswa_mesh.openbao", "unseal", "--port",
                                       port, "--watch", "5", "--state", root], 22,
                    directory=ROOT),
        ]
        for workload in ["gateway", *self.workloads]:
            programs.append(Program(
                f"identity-{workload}",
                self.delivered(python, workload,
                               [python, "-m", "aiswa_mesh.openbao", "agent", "--state", root,
                                "--port", port, "--workload", workload,
                                "--out", str(self.certs_dir(workload)),
                                "--ttl", self.certificate_ttl]),
                23, directory=ROOT,
            ))
        return programs

    def delivered(self, python: str, approle: str, command: list[str]) -> list[str]:
        """Wrap ``command`` so that it starts with a single-use login as ``approle``."""
        return [python, "-m", "aiswa_mesh.deliver", "--state", str(self.layout.root),
                "--port", str(self.settings["openbao_port"]), "--approle", approle,
                "--", *command]

    def openbao_environment(self) -> dict[str, str]:
        return {"AISWA_OPENBAO_ADDR": self.openbao.address,
                "AISWA_OPENBAO_CACERT": str(self.openbao.ca_cert)}

    def workload_programs(self, workload: str, opa_binary: str) -> list[Program]:
        """Return the programs of the sidecar and OPA that start before ``workload``'s app."""
        ports = self.ports(workload)
        programs = [Program(
            f"sidecar-{workload}",
            sidecar_command(self.layout.envoy / f"sidecar-{workload}.yaml",
                            log_path=self.layout.logs / f"sidecar-{workload}.envoy.log"),
            28,
        )]
        if workload != "gateway":
            programs.insert(0, Program(
                f"opa-{workload}", opa_command(opa_binary, ("127.0.0.1", ports.opa)), 27,
            ))
        return programs

    def bootstrap(self, *, postgres_password: Callable[[], str],
                  rabbitmq_admin: tuple[str, str]) -> None:
        """Initialise and unseal OpenBao, configure the PKI and the secrets engines; idempotent."""
        self.openbao.initialize()
        extra = {name: workload_secret_paths(self.topology, name) for name in self.workloads}
        self.openbao.configure_pki(["gateway", *self.workloads], self.topology["namespace"],
                                   self.certificate_ttl, extra_paths=extra)
        self.openbao.configure_secrets(self.topology, self.credential_ttl,
                                       postgres_password=postgres_password,
                                       rabbitmq_admin=rabbitmq_admin)

    def wait_identity(self, workload: str) -> None:
        wait_for_identity(self.certs_dir(workload), timeout=60)
