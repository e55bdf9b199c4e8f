"""Call-level policy: the real opa binary against policies/rego/expected_matrix.yaml.

Every cell of the matrix (identity x method) is evaluated with `opa eval` on the
real policy and its data, in one batch, and compared with the table. The table
must also list every method of the descriptor set that `make setup` builds.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import descriptor_pb2

from aiswa_cli import policy
from aiswa_cli.policy import topology_data_text

ROOT = Path(__file__).resolve().parents[2]
POLICY_DIR = ROOT / "policies" / "rego"
OPA = ROOT / ".state" / "tools" / "go" / "bin" / "opa"
DESCRIPTORS = ROOT / ".state" / "gen" / "aiswa.pb"
MATRIX_FILE = POLICY_DIR / "expected_matrix.yaml"
MATRIX = yaml.safe_load(MATRIX_FILE.read_text())["expected_matrix"]
TOPOLOGY = yaml.safe_load((ROOT / "mesh" / "topology.yaml").read_text())

# Methods that every service serves besides its own contract.
_RUNTIME_METHODS = {
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
}


def _cells() -> list[tuple[str, str, str, str]]:
    """Every (destination, method, identity, expected decision) of the matrix."""
    cells = []
    for destination, methods in MATRIX["destinations"].items():
        for method, row in methods.items():
            for identity, expected in zip(MATRIX["columns"], row, strict=False):
                cells.append((destination, method, identity, expected))
    return cells


CELLS = _cells()


def _opa() -> str:
    if not OPA.exists():
        pytest.fail(f"{OPA} is missing; install it with `bash scripts/install-opa.sh`")
    return str(OPA)


def _input(destination: str, method: str, identity: str) -> dict[str, Any]:
    caller = MATRIX["identities"][identity]
    document = {"caller": caller["caller"], "destination": destination, "method": method}
    if "claims" in caller:
        document["claims"] = caller["claims"]
    return document


@pytest.fixture(scope="module")
def decisions() -> dict[tuple[str, str, str], dict[str, Any]]:
    """Evaluate every cell with one `opa eval` run and return the decisions by cell."""
    cases = [_input(destination, method, identity) for destination, method, identity, _ in CELLS]
    query = (
        "decisions := {i: d | some i, case in input.cases; "
        "d := data.aiswa.authz.result with input as case}"
    )
    completed = subprocess.run(
        [_opa(), "eval", "--format", "json", "--stdin-input", "--data", str(POLICY_DIR), query],
        input=json.dumps({"cases": cases}), capture_output=True, text=True, timeout=120,
        check=False,
    )
    assert completed.returncode == 0, f"opa eval failed: {completed.stderr}"
    bindings = json.loads(completed.stdout)["result"][0]["bindings"]["decisions"]
    return {cell[:3]: bindings[str(index)] for index, cell in enumerate(CELLS)}


def _descriptor_methods() -> dict[str, set[str]]:
    """Full method names of each aiswa service in the descriptor set, by service name."""
    if not DESCRIPTORS.exists():
        pytest.fail(f"{DESCRIPTORS} is missing; build it with `bash scripts/setup.sh`")
    descriptors = descriptor_pb2.FileDescriptorSet()
    descriptors.ParseFromString(DESCRIPTORS.read_bytes())
    return {
        f"{file.package}.{service.name}": {
            f"/{file.package}.{service.name}/{method.name}" for method in service.method
        }
        for file in descriptors.file if file.package.startswith("aiswa.")
        for service in file.service
    }


def test_matrix_rows_complete():
    assert set(MATRIX["columns"]) == set(MATRIX["identities"])
    for destination, methods in MATRIX["destinations"].items():
        for method, row in methods.items():
            assert len(row) == len(MATRIX["columns"]), f"{destination} {method}: {row}"
            assert set(row) <= {"allow", "deny"}, f"{destination} {method}: {row}"


def test_matrix_lists_every_workload():
    assert set(MATRIX["destinations"]) == set(TOPOLOGY["workloads"])


@pytest.mark.parametrize("destination", sorted(TOPOLOGY["workloads"]))
def test_matrix_lists_every_method(destination):
    service = TOPOLOGY["workloads"][destination]["grpc_service"]
    served = _descriptor_methods()[service] | _RUNTIME_METHODS
    listed = set(MATRIX["destinations"].get(destination, {}))
    assert not served - listed, f"missing from expected_matrix.yaml: {sorted(served - listed)}"
    assert not listed - served, f"not served by {destination}: {sorted(listed - served)}"


@pytest.mark.parametrize(("destination", "method", "identity", "expected"), CELLS,
                         ids=["-".join(cell[:3]) for cell in CELLS])
def test_policy_matches_matrix(decisions, destination, method, identity, expected):
    decision = decisions[(destination, method, identity)]
    actual = "allow" if decision["allow"] is True else "deny"
    assert actual == expected, f"{identity} -> {destination} {method}: {decision['reason']}"


def test_denial_reasons_name_the_call(decisions):
    for (destination, method, identity), decision in decisions.items():
        if decision["allow"] is True:
            continue
        assert method in decision["reason"], decision["reason"]
        assert f" on {destination}: " in decision["reason"], decision["reason"]


def test_topology_data_current():
    rendered = (POLICY_DIR / "aiswa" / "topology" / "data.json").read_text()
    assert rendered == topology_data_text(ROOT / "mesh" / "topology.yaml"), (
        "policies/rego/aiswa/topology/data.json is stale: run "
        "`.state/venv/bin/python -m aiswa_cli.policy render` and commit it"
    )


def test_rego_formatted():
    completed = subprocess.run([_opa(), "fmt", "--list", str(POLICY_DIR)],
                               capture_output=True, text=True, timeout=60, check=False)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "", f"run `opa fmt --write policies/rego`: {completed.stdout}"


def test_rego_strict_check_clean():
    completed = subprocess.run([_opa(), "check", "--strict", str(POLICY_DIR)],
                               capture_output=True, text=True, timeout=60, check=False)
    assert completed.returncode == 0, completed.stderr


def test_rego_tests_cover_every_line():
    completed = subprocess.run([_opa(), "test", "--coverage", str(POLICY_DIR)],
                               capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report = json.loads(completed.stdout)
    uncovered = {name: file.get("not_covered") for name, file in report["files"].items()
                 if file.get("not_covered")}
    assert not uncovered, f"lines not covered by opa test: {uncovered}"
    assert report["coverage"] == 100


def test_explain_prints_allowed_call(capsys):
    status = policy.main(["explain", "--caller", "reflector", "--destination", "projects",
                          "--method", "ReadArchive"])
    lines = capsys.readouterr().out.splitlines()
    assert status == 0
    assert lines[0] == (
        "allow: reflector.aiswa may call /aiswa.projects.v1.ProjectsService/ReadArchive on "
        "projects: reflector is granted ReadArchive on projects"
    )
    assert any("policies/rego/aiswa/authz.rego:" in line and "_permission = " in line
               for line in lines)


def test_explain_prints_denied_role(capsys):
    status = policy.main(["explain", "--caller", "gateway.aiswa", "--role", "viewer",
                          "--destination", "users", "--method",
                          "/aiswa.users.v1.UsersService/ListUsers"])
    lines = capsys.readouterr().out.splitlines()
    assert status == 2
    assert lines[0].startswith("deny: gateway.aiswa may not call ")
    assert lines[0].endswith("it needs the role admin or higher; the end user has viewer")
    assert any('_required_role = "admin"' in line for line in lines)


def test_explain_rejects_unknown_role(capsys):
    status = policy.main(["explain", "--caller", "gateway", "--role", "owner",
                          "--destination", "users", "--method", "GetUser"])
    assert status == 1
    assert "--role 'owner' is invalid" in capsys.readouterr().err


def test_explain_notes_misspelled_method(capsys):
    status = policy.main(["explain", "--caller", "gateway", "--role", "viewer",
                          "--destination", "projects", "--method", "GetProjet"])
    captured = capsys.readouterr()
    # The policy still decides the call as sent.
    assert status == 2
    assert captured.out.startswith("deny: ")
    assert captured.err == ("note: projects does not serve /aiswa.projects.v1.ProjectsService/"
                            "GetProjet; did you mean /aiswa.projects.v1.ProjectsService/"
                            "GetProject?\n")


def test_explain_notes_unknown_destination(capsys):
    status = policy.main(["explain", "--caller", "reflector", "--destination", "project",
                          "--method", "/aiswa.projects.v1.ProjectsService/GetProject"])
    error = capsys.readouterr().err
    assert status == 2
    assert error.startswith("note: destination 'project' is not a workload; the workloads are ")
    assert "projects, reflector" in error


def test_explain_bare_method_lists_workloads(capsys):
    status = policy.main(["explain", "--caller", "reflector", "--destination", "project",
                          "--method", "GetProject"])
    error = capsys.readouterr().err
    assert status == 1
    assert "destination 'project' is not in topology.yaml" in error
    assert "its workloads are dashboard, projects, reflector, users, vision" in error


def test_explain_known_method_has_no_note(capsys):
    policy.main(["explain", "--caller", "reflector", "--destination", "projects",
                 "--method", "ReadArchive"])
    assert capsys.readouterr().err == ""
