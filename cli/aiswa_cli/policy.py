"""aiswa policy: tools for the authors of the call-level authorization policy.

  aiswa policy explain --caller reflector --destination projects --method ReadArchive
      Evaluate policies/rego for one call with the local opa binary and print the
      decision, its reason and the rules of aiswa.authz that produced it.
  aiswa policy render [--check]
      Write policies/rego/aiswa/topology/data.json, the part of mesh/topology.yaml
      that the policy reads, or with --check only report whether it is current.

Neither command talks to the gateway: both read the files of this repository.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
POLICY_DIR = ROOT / "policies" / "rego"
TOPOLOGY_FILE = ROOT / "mesh" / "topology.yaml"
# Path of data.aiswa.topology under the policy folder. OPA loads a data file at
# the path of its folder under the loaded root, whatever the file's name.
TOPOLOGY_DATA = Path("aiswa") / "topology" / "data.json"
MATRIX_FILE = POLICY_DIR / "expected_matrix.yaml"
DECISION = "data.aiswa.authz.result"
ROLES = ("viewer", "maintainer", "admin")
# The Envoy edge gateway has no entry under `workloads`, so its service account
# name is fixed here. Every workload lists it by this name in its `clients`.
GATEWAY_SERVICE_ACCOUNT = "gateway"
_IDENTITY_DOMAIN = "serviceaccount.identity.linkerd.cluster.local"


class PolicyError(Exception):
    """Failure of a policy tool, with a message that names the next step."""


def render_topology_data(topology: dict[str, Any]) -> dict[str, Any]:
    """Build the policy's view of mesh/topology.yaml, with every list present."""
    workloads = {}
    for name, workload in sorted(topology["workloads"].items()):
        workloads[name] = {
            "grpc_service": workload["grpc_service"],
            "clients": list(workload.get("clients", [])),
            "public_methods": list(workload.get("public_methods", [])),
            "internal_methods": list(workload.get("internal_methods", [])),
            "upstreams": list(workload.get("upstreams", [])),
        }
    return {
        "generated_by": "aiswa policy render, from mesh/topology.yaml; do not edit",
        "namespace": topology["namespace"],
        "gateway_service_account": GATEWAY_SERVICE_ACCOUNT,
        "workloads": workloads,
    }


def topology_data_text(topology_file: Path = TOPOLOGY_FILE) -> str:
    """Render ``topology_file`` as the JSON text of the topology data file."""
    topology = yaml.safe_load(topology_file.read_text())
    return json.dumps(render_topology_data(topology), indent=2) + "\n"


def identity_dns(caller: str, namespace: str = "aiswa") -> str:
    """Expand ``reflector`` or ``reflector.aiswa`` to the caller's DNS identity.

    A value that already contains ``.serviceaccount.`` is returned unchanged, so
    any identity, including one from another namespace, can be given in full.
    """
    if ".serviceaccount." in caller:
        return caller
    if "." not in caller:
        caller = f"{caller}.{namespace}"
    return f"{caller}.{_IDENTITY_DOMAIN}"


def full_method(method: str, destination: str, topology: dict[str, Any]) -> str:
    """Expand a bare method name to ``/package.Service/Method`` of ``destination``."""
    if method.startswith("/"):
        return method
    workload = topology["workloads"].get(destination)
    if workload is None:
        raise PolicyError(
            f"method {method!r} is not a full name like /aiswa.users.v1.UsersService/"
            f"GetUser, and destination {destination!r} is not in {TOPOLOGY_FILE.name} "
            f"to expand it from; its workloads are {', '.join(sorted(topology['workloads']))}"
        )
    return f"/{workload['grpc_service']}/{method}"


def unknown_call_notes(destination: str, method: str,
                       matrix_file: Path = MATRIX_FILE) -> list[str]:
    """Return notes on a destination or method that no workload serves, with the nearest names.

    The expectation matrix lists every method that each workload serves (aiswa
    check fails when it misses one). The policy still decides such a call, for
    instance to test how it treats an unknown method, so these are notes only.
    """
    served = yaml.safe_load(matrix_file.read_text())["expected_matrix"]["destinations"]
    if destination not in served:
        return [f"destination {destination!r} is not a workload; the workloads are "
                f"{', '.join(sorted(served))}"]
    methods = list(served[destination])
    if method in methods:
        return []
    note = f"{destination} does not serve {method}"
    nearest = difflib.get_close_matches(method, methods, n=1, cutoff=0.8)
    return [note + (f"; did you mean {nearest[0]}?" if nearest else
                    f"; it serves {', '.join(methods)}")]


def opa_binary(explicit: str | None = None) -> str:
    """Find opa: ``explicit``, then $AISWA_OPA, .state/tools/go/bin/opa, then PATH."""
    candidates = [explicit, os.environ.get("AISWA_OPA"),
                  str(ROOT / ".state" / "tools" / "go" / "bin" / "opa"), shutil.which("opa")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise PolicyError("opa not found; install it with `bash scripts/install-opa.sh` or pass --opa")


def build_input(caller: str, destination: str, method: str,
                role: str | None = None) -> dict[str, Any]:
    """Build the policy input that the service runtime sends for one call."""
    document: dict[str, Any] = {"caller": caller, "destination": destination, "method": method}
    if role is not None:
        document["claims"] = {"sub": "aiswa-policy-explain", "role": role}
    return document


def evaluate(document: dict[str, Any], *, opa: str, policy_dir: Path = POLICY_DIR,
             explain: str | None = None) -> dict[str, Any]:
    """Run ``opa eval`` on the decision and return its JSON output."""
    command = [opa, "eval", "--format", "json", "--stdin-input", "--data", str(policy_dir)]
    if explain:
        command += ["--explain", explain]
    command.append(DECISION)
    completed = subprocess.run(command, input=json.dumps(document), capture_output=True,
                               text=True, timeout=60, check=False)
    if completed.returncode != 0:
        raise PolicyError(f"`{' '.join(command)}` failed with exit status "
                          f"{completed.returncode}: {completed.stderr.strip()}")
    return json.loads(completed.stdout)


def decision_of(output: dict[str, Any]) -> dict[str, Any]:
    """Return the ``{"allow", "reason"}`` decision from ``opa eval`` JSON output."""
    try:
        return output["result"][0]["expressions"][0]["value"]
    except (KeyError, IndexError, TypeError):
        raise PolicyError(f"{DECISION} is undefined for this input; is {POLICY_DIR} "
                          "loaded with its data?") from None


def rule_trace(output: dict[str, Any]) -> list[str]:
    """List the rules of the policy that took a value, in evaluation order.

    The lines come from the Exit events of ``opa eval --explain full``. Each gives
    the file and line of the rule body, or ``else`` branch, that held, the rule's
    name and its value. Rules that stayed undefined do not appear.
    """
    lines: list[str] = []
    for event in output.get("explanation", []):
        node = event.get("Node")
        if event.get("Op") != "Exit" or not isinstance(node, dict) or "head" not in node:
            continue
        location = event.get("Location") or {}
        if not location.get("file"):
            continue
        locals_ = {item["name"]: item for item in event.get("Locals") or []}
        head = node["head"]
        value = _plain(head.get("value"), locals_) if head.get("value") else True
        text = json.dumps(value)
        if len(text) > 100:
            text = text[:97] + "..."
        name = head.get("name", "?")
        if head.get("key"):
            name += f"[{json.dumps(_plain(head['key'], locals_))}]"
        where = _relative(location["file"])
        line = f"{where}:{location.get('row', '?')}  {name} = {text}"
        if line not in lines:
            lines.append(line)
    return lines


def _relative(file: str) -> str:
    path = Path(file)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else file


def _plain(term: dict[str, Any], locals_: dict[str, dict[str, Any]]) -> Any:
    """Convert a term of OPA's JSON AST to a plain value, resolving local variables."""
    kind, value = term.get("type"), term.get("value")
    if kind == "var":
        bound = locals_.get(value)
        return _plain(bound, locals_) if bound else value
    if kind in ("array", "set"):
        return [_plain(item, locals_) for item in value]
    if kind == "object":
        return {str(_plain(key, locals_)): _plain(item, locals_) for key, item in value}
    if kind == "ref":
        return ".".join(str(_plain(part, locals_)) for part in value)
    return value


def cmd_explain(args: argparse.Namespace) -> int:
    opa = opa_binary(args.opa)
    topology = yaml.safe_load(TOPOLOGY_FILE.read_text())
    if args.role is not None and args.role not in ROLES:
        raise PolicyError(f"--role {args.role!r} is invalid; use one of {', '.join(ROLES)}")
    method = full_method(args.method, args.destination, topology)
    document = build_input(identity_dns(args.caller, topology["namespace"]), args.destination,
                           method, args.role)
    for note in unknown_call_notes(args.destination, method):
        print(f"note: {note}", file=sys.stderr)
    output = evaluate(document, opa=opa, policy_dir=args.policy_dir, explain="full")
    decision = decision_of(output)
    print(f"{'allow' if decision['allow'] is True else 'deny'}: {decision['reason']}")
    print(f"input: {json.dumps(document)}")
    print("rules that produced a value (opa eval --explain full):")
    for line in rule_trace(output):
        print(f"  {line}")
    return 0 if decision["allow"] is True else 2


def cmd_render(args: argparse.Namespace) -> int:
    target = args.policy_dir / TOPOLOGY_DATA
    text = topology_data_text()
    current = target.read_text() if target.exists() else None
    if args.check:
        if current != text:
            print(f"{target} is stale; run `aiswa policy render`", file=sys.stderr)
            return 1
        print(f"{target} is current")
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    print(f"wrote {target}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="aiswa policy", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--policy-dir", type=Path, default=POLICY_DIR,
                     help="folder of the Rego policies and their data (default %(default)s)")
    sub = top.add_subparsers(dest="command", required=True)

    explain = sub.add_parser("explain", help="print the decision on one call and why")
    explain.add_argument("--caller", required=True,
                         help="caller identity: a service account (reflector), <sa>.<namespace>"
                              " or the full l5d-client-id DNS identity")
    explain.add_argument("--destination", required=True,
                         help="destination workload name in mesh/topology.yaml, e.g. projects")
    explain.add_argument("--method", required=True,
                         help="gRPC method: /package.Service/Method, or a bare method name "
                              "of the destination's service")
    explain.add_argument("--role", help=f"end-user role in the claims ({', '.join(ROLES)}); "
                                        "without it the call carries no claims")
    explain.add_argument("--opa", help="opa binary (default: $AISWA_OPA, "
                                       ".state/tools/go/bin/opa, then PATH)")

    render = sub.add_parser("render", help="write the topology data that the policy reads")
    render.add_argument("--check", action="store_true",
                        help="only check that the file is current; exit status 1 when stale")
    return top


def main(argv: list[str] | None = None) -> int:
    """Run ``aiswa policy`` with ``argv``, the arguments after ``policy``.

    Returns the exit status: 0 on success, 1 on an error, and for ``explain`` 2
    when the policy denies the call.
    """
    args = parser().parse_args(argv)
    handlers = {"explain": cmd_explain, "render": cmd_render}
    try:
        return handlers[args.command](args)
    except PolicyError as exc:
        print(f"aiswa policy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
