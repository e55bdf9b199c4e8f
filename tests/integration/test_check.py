"""`aiswa check` against the running mesh."""

from __future__ import annotations

import re
import subprocess
import sys
import time

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
