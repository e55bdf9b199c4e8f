"""`aiswa check`: verify that the running local mesh is healthy and safe.

Each check prints one line starting with PASS, WARN or FAIL; the exit status
is 1 when any check failed. Run it after `make up`. With --json it prints one
JSON object instead: {"success": bool, "failures": int, "checks": [{"status",
"message"}]}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pwd
import socket
import sys
from pathlib import Path

import yaml
from cryptography import x509

from aiswa_runtime import load_topology

from ._mesh import Mesh
from ._network import LOOPBACK
from ._state import ROOT, default_layout
from ._supervisor import Supervisor
from ._users import process_identity, user_programs, workload_user
from .envoy_sidecar import identity_dns, identity_uri
from .probe import connect
from .render import verify


# Default threshold: the share of a certificate's lifetime that must be left.
MIN_LIFETIME_LEFT = 0.25


class Report:
    """The results of the checks, printed as lines at once or kept for one JSON object."""

    def __init__(self, as_json: bool = False) -> None:
        self.as_json = as_json
        self.checks: list[dict[str, str]] = []

    @property
    def failures(self) -> int:
        """The number of checks that failed."""
        return sum(check["status"] == "FAIL" for check in self.checks)

    def line(self, status: str, message: str) -> None:
        self.checks.append({"status": status, "message": message})
        if not self.as_json:
            print(f"{status:<4}  {message}")

    def finish(self) -> int:
        """Print the summary, or the JSON object, and return the exit status."""
        if self.as_json:
            print(json.dumps({"success": self.failures == 0, "failures": self.failures,
                              "checks": self.checks}, indent=2))
        else:
            warnings = sum(check["status"] == "WARN" for check in self.checks)
            if self.failures:
                print(f"\n{self.failures} check(s) failed")
            elif warnings:
                print(f"\nno check failed, {warnings} warning(s)")
            else:
                print("\nall checks passed")
        return 1 if self.failures else 0


def _certificate_problems(certs_dir: Path, workload: str, namespace: str,
                          min_hours: float | None) -> list[str]:
    chain = x509.load_pem_x509_certificates((certs_dir / "cert.pem").read_bytes())
    roots = x509.load_pem_x509_certificates((certs_dir / "ca.pem").read_bytes())
    leaf = chain[0]
    problems = []
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    names = sans.get_values_for_type(x509.DNSName)
    if uris != [identity_uri(workload, namespace)] or names != [identity_dns(workload, namespace)]:
        problems.append(f"identity is {uris + names}, expected {workload}.{namespace}")
    # Walk the chain up to a certificate signed by the mesh root.
    store = x509.verification.Store(roots)
    builder = x509.verification.PolicyBuilder().store(store)
    try:
        builder.build_client_verifier().verify(leaf, chain[1:])
    except x509.verification.VerificationError as exc:
        problems.append(f"does not chain to the mesh root: {exc}")
    left = leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    if min_hours is None:
        # The agent renews at half the lifetime, so less than a quarter left
        # means that renewal has been failing for a while.
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        if left < lifetime * MIN_LIFETIME_LEFT:
            problems.append(f"expires in {left}, less than {MIN_LIFETIME_LEFT:.0%} of its "
                            f"lifetime of {lifetime}: is its identity agent renewing it?")
    elif left.total_seconds() < min_hours * 3600:
        problems.append(f"expires in {left}, less than {min_hours} h")
    return problems


def _check_credentials(layout, topology: dict, mesh: Mesh, report: Report) -> None:  # type: ignore[no-untyped-def]
    """Report each service's live leases and any PostgreSQL login that never expires."""
    from ._openbao_pki import OpenBaoError
    from ._openbao_secrets import POSTGRES_ADMIN_ROLE, credential_paths
    from ._postgres import Postgres

    bao = mesh.openbao
    for workload in mesh.workloads:
        for path in credential_paths(topology, workload):
            try:
                ttls = bao.lease_ttls(path)
            except (OpenBaoError, OSError) as exc:
                report.line("FAIL", f"leases of {path}: cannot list them ({exc})")
                continue
            report.line("PASS" if ttls else "FAIL",
                        f"{workload} holds {len(ttls)} live lease(s) of {path}"
                        + (f", the longest for {max(ttls)} s more" if ttls else
                           ": is the service running and renewing?"))
    postgres = Postgres(layout, topology["infrastructure"]["postgres"]["port"])
    rows = postgres.sql("SELECT rolname FROM pg_authid WHERE rolcanlogin AND rolpassword IS NOT "
                        f"NULL AND rolname <> '{POSTGRES_ADMIN_ROLE}' AND (rolvaliduntil IS NULL "
                        "OR rolname NOT LIKE 'v-%')").split()
    report.line("FAIL" if rows else "PASS",
                "PostgreSQL has no static password login" + (f": {rows}" if rows else
                                                              " (every login expires)"))


def _check_isolation(mesh: Mesh, report: Report) -> None:
    """Report whether each app port accepts connections inside its pod and nowhere else."""
    network = mesh.network
    if not network.enabled:
        report.line("WARN", "no pods: app ports listen on the host's loopback interface, so "
                            "local processes can reach them without mTLS (the launcher runs "
                            "without pods when it is not root, or with AISWA_PODS=off)")
        return
    for workload in mesh.workloads:
        port = mesh.ports(workload).app
        inside = network.probe(workload, "connect", f"127.0.0.1:{port}", timeout=0)
        if inside.returncode != 0:
            report.line("FAIL", f"app port {port} of {workload} does not answer inside its pod "
                                f"({inside.stdout.strip() or inside.stderr.strip()})")
            continue
        pod_address = network.address(workload)
        reached = [f"the host at {host}:{port}" for host in (LOOPBACK, pod_address)
                   if connect(host, port) == "open"]
        # Another pod tries the pod's address: gateway, or users for the gateway's targets.
        other = "gateway" if workload != "gateway" else "users"
        if network.probe(other, "connect", f"{pod_address}:{port}", timeout=0).returncode == 0:
            reached.append(f"the {other} pod at {pod_address}:{port}")
        report.line("FAIL" if reached else "PASS",
                    f"app port {port} of {workload} answers only inside its pod"
                    + (f", but is reachable from {', '.join(reached)}" if reached else
                       f" (refused from the host and from the {other} pod)"))
    # A host service on the bridge's address, other than the shared servers:
    # a port that this check opens for a moment.
    with socket.create_server((network.host_address, 0)) as listener:
        port = listener.getsockname()[1]
        from_pod = network.probe("gateway", "connect", f"{network.host_address}:{port}",
                                 timeout=0).stdout.strip()
    report.line("FAIL" if from_pod == "open" else "PASS",
                f"pods reach the host only on the shared servers' ports {network.shared_ports}"
                + (f", but the gateway pod opened {network.host_address}:{port}"
                   if from_pod == "open" else
                   f" ({network.host_address}:{port}, open on the host, was refused)"))


def _check_users(mesh: Mesh, supervisor: Supervisor, report: Report) -> None:
    """Report whether each workload's and shared server's processes run as its own user,
    without capabilities."""
    users = mesh.users
    if not users.enabled:
        report.line("WARN", f"every workload and shared server runs as the launcher's user, "
                            f"because {users.reason}")
        return
    for workload, programs in user_programs(mesh.workloads).items():
        user = workload_user(workload)
        try:
            uid = pwd.getpwnam(user).pw_uid
        except KeyError:
            report.line("FAIL", f"user {user} does not exist; run `make up` again")
            continue
        problems = []
        for program in programs:
            pid = supervisor.ctl("pid", program).stdout.strip()
            try:
                uids, capabilities, no_new_privs = process_identity(int(pid))
            except (ValueError, OSError):
                problems.append(f"{program} is not running")
                continue
            if uids != {uid}:
                problems.append(f"{program} runs as user id {sorted(uids)}")
            if capabilities or not no_new_privs:
                problems.append(f"{program} has capabilities {capabilities:#x} or may gain "
                                "privileges (no_new_privs not set)")
        report.line("FAIL" if problems else "PASS",
                    f"{workload} runs as {user}" + (f", but {'; '.join(problems)}" if problems
                                                    else f" without capabilities "
                                                         f"({', '.join(programs)})"))


def run(min_hours: float | None, as_json: bool = False) -> int:
    layout = default_layout()
    topology = load_topology(str(ROOT / "mesh" / "topology.yaml"))
    report = Report(as_json)
    supervisor = Supervisor(layout)
    if not supervisor.running():
        report.line("FAIL", "the platform is not running; start it with `make up`")
        return report.finish()
    status = supervisor.status_text().splitlines()
    for row in status:
        name, state = row.split()[:2]
        report.line("PASS" if state == "RUNNING" else "FAIL", f"program {name} is {state}")
    if not any(row.startswith("opa-") for row in status):
        report.line("FAIL", "no OPA program is configured; render again with `make up`")
        return report.finish()
    problems = verify(layout, topology)
    for problem in problems:
        report.line("FAIL", f"rendered configuration: {problem}")
    if not problems:
        report.line("PASS", "every rendered configuration agrees with mesh/topology.yaml")
    mesh = Mesh(layout, topology)
    namespace = topology["namespace"]
    for workload in ["gateway", *mesh.workloads]:
        try:
            problems = _certificate_problems(mesh.certs_dir(workload), workload, namespace,
                                             min_hours)
        except (OSError, ValueError, x509.ExtensionNotFound) as exc:
            problems = [f"cannot read it: {exc}"]
        report.line("FAIL" if problems else "PASS",
                    f"certificate of {workload}: " + ("; ".join(problems) or
                                                      f"{workload}.{namespace}, valid, from the mesh root"))
    for workload in mesh.workloads:
        url = f"{mesh.opa_url(workload)}/health"
        # OPA listens inside the pod, so the probe runs there.
        result = mesh.network.probe(workload, "http", url, timeout=0)
        where = f"{url} in its pod" if mesh.network.enabled else url
        report.line("PASS" if result.returncode == 0 else "FAIL",
                    f"OPA of {workload} answers at {where}"
                    + ("" if result.returncode == 0 else f" ({result.stderr.strip()})"))
    _check_credentials(layout, topology, mesh, report)
    matrix = yaml.safe_load((ROOT / "policies" / "rego" / "expected_matrix.yaml").read_text())
    covered = {method for methods in matrix["expected_matrix"]["destinations"].values()
               for method in methods}
    from google.protobuf import descriptor_pb2

    descriptors = descriptor_pb2.FileDescriptorSet()
    descriptors.ParseFromString((layout.root / "gen" / "aiswa.pb").read_bytes())
    methods = {f"/{file.package}.{service.name}/{method.name}"
               for file in descriptors.file if file.package.startswith("aiswa.")
               for service in file.service for method in service.method}
    missing = sorted(methods - covered)
    report.line("FAIL" if missing else "PASS",
                f"policy expectation covers every RPC method ({len(methods)})"
                + (f"; missing: {missing}" if missing else ""))
    _check_isolation(mesh, report)
    _check_users(mesh, supervisor, report)
    return report.finish()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aiswa check", description=__doc__)
    parser.add_argument("--min-hours", type=float, default=None,
                        help="fail a certificate with less lifetime left, in hours (default: "
                             f"less than {MIN_LIFETIME_LEFT:.0%}% of its lifetime left)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object with every check instead of lines")
    args = parser.parse_args(argv)
    return run(args.min_hours, args.json)


if __name__ == "__main__":
    sys.exit(main())
