"""The local platform's addresses: one pod per workload, or loopback.

As root, the launcher gives every workload (gateway, users, projects,
reflector, vision, dashboard) a network namespace on a private bridge
(aiswa_mesh.pods). The workload's app, sidecar and OPA run inside it:

- the app's gRPC port and OPA listen on 127.0.0.1 inside the pod, so that
  only the pod's own sidecar and interceptor reach them;
- the sidecar's inbound mTLS listener and the app's metrics listen on the pod
  address, for the other pods and the host;
- PostgreSQL, RabbitMQ, OpenBao and the trace collector listen on the
  bridge's address (``host_address``) as well as on the host's loopback;
- an nftables table lets the pods open connections to the host only on those
  servers' ports, so that a host service that listens on every interface is
  not reachable from the pods.

Otherwise, or with ``AISWA_PODS=off``, every address is 127.0.0.1 and local
processes can reach the app ports directly, and the launcher prints that.

Whether pods are on is read from the pod network's state file, which exists
from ``start()`` until ``stop()``, so that ``down``, ``aiswa check``, the
renderer and the tests see the same layout as the launcher that started it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from ._state import ROOT, StateLayout
from .pods import LOOPBACK_FALLBACK, PodNetwork, PodRangeInUse, PodsError, PodsUnavailable

LOOPBACK = "127.0.0.1"
# AISWA_PODS=off keeps every workload on the host's loopback interface.
PODS_VARIABLE = "AISWA_PODS"
# AISWA_POD_CIDR replaces the topology's pod range.
CIDR_VARIABLE = "AISWA_POD_CIDR"


class Network:
    """The pods of the local platform, or loopback without them, and the addresses of each."""

    def __init__(self, layout: StateLayout, topology: dict) -> None:
        settings = topology["mesh"]["pods"]
        self.layout = layout
        infra = topology["infrastructure"]
        # The host ports that pods may connect to: the shared servers.
        self.shared_ports = sorted({
            int(infra["postgres"]["port"]), int(infra["rabbitmq"]["amqp_port"]),
            int(infra["collector"]["port"]), int(topology["mesh"]["openbao_port"])})
        # Problems that leave the pods running but less isolated. The launcher prints them.
        self.warnings: list[str] = []
        self.pods = PodNetwork(
            layout.run, ["gateway", *topology["workloads"]], bridge=settings["bridge"],
            cidr=os.environ.get(CIDR_VARIABLE) or str(settings["cidr"]),
            prefix=settings["prefix"],
        )

    @property
    def enabled(self) -> bool:
        """True while the pods that ``start()`` created exist."""
        return self.pods.state_file.exists()

    @property
    def host_address(self) -> str:
        """The address at which pods reach the shared servers (the bridge's, or loopback)."""
        return self.pods.host_address if self.enabled else LOOPBACK

    @property
    def host_addresses(self) -> list[str]:
        """Every address on which a shared server listens: loopback, and the bridge's."""
        return [LOOPBACK, self.pods.host_address] if self.enabled else [LOOPBACK]

    def address(self, workload: str) -> str:
        """Return the address of ``workload``'s pod, where its sidecar's inbound listener is."""
        return self.pods.address(workload) if self.enabled else LOOPBACK

    def command(self, workload: str, argv: list[str]) -> list[str]:
        """Return ``argv`` run inside ``workload``'s pod (unchanged without pods)."""
        return [*self.pods.exec_prefix(workload), *argv] if self.enabled else argv

    def probe(self, pod: str, kind: str, target: str, *,
              timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``python -m aiswa_mesh.probe KIND TARGET`` inside ``pod`` (see aiswa_mesh.probe)."""
        command = self.command(pod, [sys.executable, "-m", "aiswa_mesh.probe", kind, target,
                                     "--timeout", str(timeout)])
        return subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)

    def start(self) -> str | None:
        """Create the bridge and the pods, and return None or the reason for using loopback.

        Raises SystemExit when the pods cannot be created for a reason that
        the operator must fix, such as a range that the host already uses.
        """
        if os.environ.get(PODS_VARIABLE, "on") == "off":
            self.stop()
            return f"{PODS_VARIABLE}=off: {LOOPBACK_FALLBACK}"
        try:
            self.pods.create()
            self._filter_host_ports()
        except PodsUnavailable as exc:
            self.stop()
            return str(exc)
        except PodRangeInUse as exc:
            self.stop()
            raise SystemExit(f"launcher: cannot create the pods: {exc}. Set {CIDR_VARIABLE} "
                             f"to another private range, or {PODS_VARIABLE}=off to run "
                             "without pods") from exc
        except PodsError as exc:
            self.stop()
            raise SystemExit(f"launcher: cannot create the pods: {exc}. Fix that and run "
                             f"`make up` again, or set {PODS_VARIABLE}=off to run without "
                             "pods") from exc
        return None

    def stop(self) -> None:
        """Remove every namespace, link, address and nftables table that ``start()`` created."""
        if self.enabled:
            nft = shutil.which("nft")
            if nft:
                # Fails only when the table is gone already.
                subprocess.run([nft, "delete", "table", "inet", self.filter_table],
                               capture_output=True, check=False)
            self.pods.down()

    @property
    def filter_table(self) -> str:
        """The nftables table (family inet) that limits what pods reach on the host."""
        return f"aiswa_{self.pods.bridge}".replace("-", "_")

    def _filter_host_ports(self) -> None:
        """Let pods connect to the host only on ``shared_ports``, and reject the rest.

        Traffic between pods is bridged and never enters the host's input
        hook, and the replies to the host's own connections are established.
        """
        nft = shutil.which("nft")
        if nft is None:
            self.warnings.append(
                "nft (Debian package nftables) was not found, so the pods can reach every "
                "host service that listens on all interfaces; run `make setup`")
            return
        bridge, table = self.pods.bridge, self.filter_table
        ports = ", ".join(map(str, self.shared_ports))
        # Declaring and deleting the table first replaces it in one transaction.
        rules = (f"table inet {table}\n"
                 f"delete table inet {table}\n"
                 f"table inet {table} {{\n"
                 "  chain input {\n"
                 "    type filter hook input priority filter; policy accept;\n"
                 f'    iifname "{bridge}" ct state established,related accept\n'
                 f'    iifname "{bridge}" ip daddr {self.pods.host_address} '
                 f"tcp dport {{ {ports} }} accept\n"
                 f'    iifname "{bridge}" reject\n'
                 "  }\n"
                 "}\n")
        result = subprocess.run([nft, "-f", "-"], input=rules, capture_output=True, text=True,
                                check=False)
        if result.returncode != 0:
            raise PodsError(f"nft failed to load the table {table}: "
                            f"{(result.stderr or result.stdout).strip()}")
