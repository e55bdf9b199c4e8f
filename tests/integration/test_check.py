"""`aiswa check` against the running mesh."""

from __future__ import annotations

import errno
import json
import re
import socket
import subprocess
import sys
import time

import pytest

from aiswa_mesh._mesh import Mesh
from aiswa_runtime import load_topology
from conftest import ROOT, supervisorctl


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aiswa_cli.main", "check", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_check_passes_on_healthy_mesh(layout):
    result = _check()
    assert result.returncode == 0, result.stdout
    for workload in ("gateway", "users", "projects", "reflector", "vision"):
        assert f"PASS  certificate of {workload}: {workload}.aiswa, valid" in result.stdout
    assert "PASS  OPA of projects answers" in result.stdout
    assert "PASS  policy expectation covers every RPC method" in result.stdout
    assert "PASS  PostgreSQL has no static password login" in result.stdout
    assert "FAIL" not in result.stdout
    if Mesh(layout, load_topology(str(ROOT / "mesh" / "topology.yaml"))).network.enabled:
        for workload, port in (("users", 50051), ("vision", 50054), ("dashboard", 50055)):
            assert (f"PASS  app port {port} of {workload} answers only inside its pod (refused "
                    "from the host and from the gateway pod)") in result.stdout
    else:
        assert "WARN  no pods: app ports listen on the host's loopback" in result.stdout


def test_check_json_lists_every_check(layout):
    lines = _check()
    result = _check("--json")
    assert result.returncode == 0, result.stdout
    report = json.loads(result.stdout)
    assert report["success"] is True
    assert report["failures"] == 0
    # The same checks as the text output, in the same order. Numbers such as
    # the seconds a lease has left change between the two runs.
    expected = [re.sub(r"\d+", "N", line) for line in lines.stdout.splitlines()
                if line.startswith(("PASS", "WARN", "FAIL"))]
    assert [re.sub(r"\d+", "N", f"{check['status']:<4}  {check['message']}")
            for check in report["checks"]] == expected
    assert {"status": "PASS", "message": "program gateway is RUNNING"} in report["checks"]


def test_check_json_reports_failures(layout):
    result = _check("--json", "--min-hours", "48")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    workloads = load_topology(str(ROOT / "mesh" / "topology.yaml"))["workloads"]
    failed = [check for check in report["checks"] if check["status"] == "FAIL"]
    assert report["success"] is False
    assert report["failures"] == len(failed) == 1 + len(workloads)
    assert all(check["message"].startswith("certificate of") for check in failed)


def _listen(host: str, port: int, timeout: float = 70.0) -> socket.socket:
    """Listen on host:port, waiting out a TIME_WAIT connection of an earlier run (60 s)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_server((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(1)


def test_check_fails_on_exposed_app_port(layout):
    mesh = Mesh(layout, load_topology(str(ROOT / "mesh" / "topology.yaml")))
    if not mesh.network.enabled:
        pytest.skip("the platform runs without pods, so app ports are on the host's loopback")
    port = mesh.ports("vision").app
    # A process on the host takes vision's app port, as a workload started
    # outside its pod would.
    with _listen("127.0.0.1", port):
        result = _check()
    assert result.returncode == 1
    assert (f"FAIL  app port {port} of vision answers only inside its pod, but is reachable "
            f"from the host at 127.0.0.1:{port}") in result.stdout
    assert "PASS  app port 50054" not in result.stdout
    assert f"PASS  app port {mesh.ports('users').app} of users answers only" in result.stdout


def test_check_fails_on_short_lifetime(layout):
    # Certificates live at most 24 h, so asking for 48 h left must fail each one.
    result = _check("--min-hours", "48")
    assert result.returncode == 1
    workloads = load_topology(str(ROOT / "mesh" / "topology.yaml"))["workloads"]
    assert result.stdout.count("FAIL  certificate of") == 1 + len(workloads)


def test_check_fails_when_opa_stopped(layout):
    supervisorctl(layout, "stop", "opa-vision")
    try:
        result = _check()
    finally:
        supervisorctl(layout, "start", "opa-vision")
    assert result.returncode == 1
    assert "FAIL  OPA of vision" in result.stdout
    assert "FAIL  program opa-vision is STOPPED" in result.stdout
    deadline = time.monotonic() + 30
    while _check().returncode != 0:
        assert time.monotonic() < deadline, "check still failing after OPA restarted"
        time.sleep(1)


def test_check_fails_when_a_service_holds_no_lease(layout):
    # A stopped service revokes its token, and with it every lease it held.
    supervisorctl(layout, "stop", "vision")
    try:
        result = _check()
    finally:
        supervisorctl(layout, "start", "vision")
    assert result.returncode == 1
    assert "FAIL  vision holds 0 live lease(s) of database/creds/vision" in result.stdout
    assert "FAIL  vision holds 0 live lease(s) of rabbitmq/creds/vision" in result.stdout
    assert re.search(r"PASS  projects holds \d live lease\(s\) of database/creds/projects",
                     result.stdout), result.stdout
    deadline = time.monotonic() + 30
    while _check().returncode != 0:
        assert time.monotonic() < deadline, "check still failing after vision restarted"
        time.sleep(1)
