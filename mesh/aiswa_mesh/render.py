"""`aiswa mesh render` and `aiswa mesh verify`: the artifacts derived from mesh/topology.yaml.

render writes, without starting anything: every sidecar's Envoy bootstrap, the
gateway's Envoy bootstrap, OpenBao's server configuration, the supervisord
configuration and the policy's copy of the topology
(policies/rego/aiswa/topology/data.json). `make up` renders the same files.

verify reads those files back and reports every place where one disagrees
with the topology: a listener on the wrong port, an RBAC rule that admits an
identity the topology does not list for that workload (or misses one), an
outbound cluster that would accept the wrong upstream identity, a gateway
route that bypasses the gateway's sidecar, a missing program, a stale policy
copy. `aiswa check` runs it on the live state folder.
"""

from __future__ import annotations

import argparse
import configparser
import sys
from pathlib import Path
from typing import Any

import yaml

from aiswa_runtime import load_topology

from ._state import ROOT, StateLayout, default_layout
from ._users import user_programs
from .envoy_sidecar import APP_CLUSTER, identity_dns, identity_uri

TOPOLOGY_FILE = ROOT / "mesh" / "topology.yaml"
POLICY_TOPOLOGY_DATA = ROOT / "policies" / "rego" / "aiswa" / "topology" / "data.json"


def render(layout: StateLayout | None = None) -> list[Path]:
    """Write every artifact of the topology under ``layout``; return their paths."""
    from aiswa_cli.policy import topology_data_text

    from .launcher import Platform

    platform = Platform(layout or default_layout())
    written = platform.render()
    text = topology_data_text(TOPOLOGY_FILE)
    if POLICY_TOPOLOGY_DATA.read_text() != text:
        POLICY_TOPOLOGY_DATA.write_text(text)
    return [*written, POLICY_TOPOLOGY_DATA]


def _address(entry: dict) -> tuple[str, int] | Path:
    """Return an Envoy address as (host, port), or as a Path for a UNIX socket."""
    if "pipe" in entry:
        return Path(entry["pipe"]["path"])
    socket = entry["socket_address"]
    return socket["address"], int(socket["port_value"])


def _endpoint_of(cluster: dict) -> tuple[str, int] | Path:
    lb = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    return _address(lb["endpoint"]["address"])


def _read_yaml(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        problems.append(f"{path}: cannot read it ({exc}); run `aiswa mesh render`")
        return None


def _verify_sidecar(layout: StateLayout, topology: dict, mesh: Any, workload: str,
                    problems: list[str]) -> None:
    path = layout.envoy / f"sidecar-{workload}.yaml"
    config = _read_yaml(path, problems)
    if config is None:
        return
    namespace = topology["namespace"]
    where = f"{path.name}"
    listeners = {listener["name"]: listener for listener in config["static_resources"]["listeners"]}
    clusters = {cluster["name"]: cluster for cluster in config["static_resources"]["clusters"]}
    ports = mesh.ports(workload)
    admin = _address(config["admin"]["address"])
    if admin != mesh.admin_address(workload):
        problems.append(f"{where}: admin listens on {admin}, expected "
                        f"{mesh.admin_address(workload)}")

    if workload != "gateway":
        spec = topology["workloads"][workload]
        inbound = listeners.get("inbound")
        if inbound is None:
            problems.append(f"{where}: no inbound listener")
        else:
            if _address(inbound["address"]) != mesh.inbound_address(workload):
                problems.append(f"{where}: inbound listens on {_address(inbound['address'])}, "
                                f"expected {mesh.inbound_address(workload)} (the pod's address "
                                f"and port {ports.inbound})")
            chain = inbound["filter_chains"][0]
            tls = chain["transport_socket"]["typed_config"]
            if tls.get("require_client_certificate") is not True:
                problems.append(f"{where}: inbound does not require a client certificate")
            rbac = [f for f in chain["filters"] if f["name"] == "envoy.filters.network.rbac"]
            if not rbac:
                problems.append(f"{where}: inbound has no RBAC filter")
            else:
                rules = rbac[0]["typed_config"]["rules"]
                admitted = {principal["authenticated"]["principal_name"]["exact"]
                            for policy in rules["policies"].values()
                            for principal in policy["principals"]}
                expected = {identity_uri(client, namespace) for client in spec.get("clients", [])}
                if rules["action"] != "ALLOW" or admitted != expected:
                    problems.append(
                        f"{where}: inbound RBAC admits {sorted(admitted)} with action "
                        f"{rules['action']}; the topology lists {sorted(expected)}")
        app = clusters.get(APP_CLUSTER)
        if app is None or _endpoint_of(app) != ("127.0.0.1", spec["port"]):
            found = _endpoint_of(app) if app else None
            problems.append(f"{where}: the app cluster points to {found}, "
                            f"the topology gives port {spec['port']}")

    upstreams = mesh.upstreams(workload)
    outbound = {name.removeprefix("outbound_"): listener for name, listener in listeners.items()
                if name.startswith("outbound_")}
    if sorted(outbound) != sorted(upstreams):
        problems.append(f"{where}: outbound listeners for {sorted(outbound)}, "
                        f"the topology gives upstreams {sorted(upstreams)}")
    for upstream in set(outbound) & set(upstreams):
        local = _address(outbound[upstream]["address"])
        expected_local = (mesh.gateway_outbound(upstream) if workload == "gateway"
                          else ("127.0.0.1", mesh.outbound_port(workload, upstream)))
        if local != expected_local:
            problems.append(f"{where}: outbound to {upstream} listens on {local}, expected "
                            f"{expected_local}")
        cluster = clusters.get(f"outbound_{upstream}")
        if cluster is None:
            problems.append(f"{where}: no cluster for upstream {upstream}")
            continue
        if _endpoint_of(cluster) != mesh.inbound_address(upstream):
            problems.append(f"{where}: calls to {upstream} go to {_endpoint_of(cluster)}, "
                            f"not its sidecar's inbound {mesh.inbound_address(upstream)}")
        context = cluster["transport_socket"]["typed_config"]
        sans = [matcher["matcher"]["exact"] for matcher in context["common_tls_context"]
                ["combined_validation_context"]["default_validation_context"]
                ["match_typed_subject_alt_names"]]
        if sans != [identity_uri(upstream, namespace)] or \
                context.get("sni") != identity_dns(upstream, namespace):
            problems.append(f"{where}: the cluster for {upstream} accepts {sans} (SNI "
                            f"{context.get('sni')}), not only {identity_uri(upstream, namespace)}")


def _verify_gateway(layout: StateLayout, mesh: Any, problems: list[str]) -> None:
    path = layout.envoy / "gateway.yaml"
    config = _read_yaml(path, problems)
    if config is None:
        return
    clusters = {cluster["name"]: cluster for cluster in config["static_resources"]["clusters"]}
    for upstream in mesh.upstreams("gateway"):
        cluster = clusters.get(upstream)
        expected = mesh.gateway_outbound(upstream)
        if cluster is None or _endpoint_of(cluster) != expected:
            found = _endpoint_of(cluster) if cluster else None
            problems.append(f"{path.name}: the gateway reaches {upstream} at {found}, not "
                            f"through its sidecar at {expected}")


def _verify_programs(layout: StateLayout, topology: dict, mesh: Any,
                     problems: list[str]) -> None:
    conf = configparser.RawConfigParser()
    try:
        with layout.supervisord_conf.open() as handle:
            conf.read_file(handle)
    except OSError as exc:
        problems.append(f"{layout.supervisord_conf}: cannot read it ({exc}); "
                        "run `aiswa mesh render`")
        return
    programs = {section.removeprefix("program:") for section in conf.sections()
                if section.startswith("program:")}
    expected = {"gateway", "sidecar-gateway", "identity-gateway", "openbao"}
    for workload in topology["workloads"]:
        expected |= {workload, f"sidecar-{workload}", f"opa-{workload}", f"identity-{workload}"}
    missing = sorted(expected - programs)
    if missing:
        problems.append(f"{layout.supervisord_conf.name}: no program for {missing}")
    if mesh.users.enabled:
        for name, names in user_programs(list(topology["workloads"])).items():
            as_user = " ".join(mesh.users.command(name, []))
            for program in names:
                section = f"program:{program}"
                if conf.has_section(section) and as_user not in conf.get(section, "command"):
                    problems.append(f"{layout.supervisord_conf.name}: {program} does not run as "
                                    f"the user of {name} (`{as_user}`)")
    if not mesh.network.enabled:
        return
    # With pods, each workload's app, sidecar and OPA run in the workload's pod.
    for workload in topology["workloads"]:
        prefix = " ".join(mesh.network.pods.exec_prefix(workload))
        for program in (workload, f"sidecar-{workload}", f"opa-{workload}"):
            section = f"program:{program}"
            if conf.has_section(section) and prefix not in conf.get(section, "command"):
                problems.append(f"{layout.supervisord_conf.name}: {program} does not run in "
                                f"the pod of {workload} (`{prefix}`)")


def verify(layout: StateLayout | None = None, topology: dict | None = None) -> list[str]:
    """Return one line per rendered artifact that disagrees with the topology."""
    from aiswa_cli.policy import topology_data_text

    from ._mesh import Mesh

    layout = layout or default_layout()
    topology = topology or load_topology(str(TOPOLOGY_FILE))
    mesh = Mesh(layout, topology)
    problems: list[str] = []
    for workload in ["gateway", *mesh.workloads]:
        _verify_sidecar(layout, topology, mesh, workload, problems)
    _verify_gateway(layout, mesh, problems)
    _verify_programs(layout, topology, mesh, problems)
    if POLICY_TOPOLOGY_DATA.read_text() != topology_data_text(TOPOLOGY_FILE):
        problems.append(f"{POLICY_TOPOLOGY_DATA.relative_to(ROOT)} is stale; "
                        "run `aiswa mesh render`")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aiswa mesh", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("render", help="write every artifact of mesh/topology.yaml")
    commands.add_parser("verify", help="report rendered artifacts that disagree with it")
    args = parser.parse_args(argv)
    if args.command == "render":
        for path in render():
            print(f"wrote {path}")
        return 0
    problems = verify()
    for problem in problems:
        print(f"FAIL  {problem}")
    if not problems:
        print("PASS  every rendered artifact agrees with mesh/topology.yaml")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
