"""`aiswa check` against the running mesh."""

from __future__ import annotations

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
