"""Certificates rotate under traffic with zero failed calls.

`make test` starts the platform with AISWA_CERT_TTL=2m (scripts/test.sh), so
each identity agent replaces its workload's certificate about once a minute.
This test keeps calls flowing through the gateway (gateway sidecar to the
users and projects sidecars) and runs analyses and reads their reports
(projects to the reflector over the queue, the reflector to projects' sidecar
for the archive and the access check) until every watched sidecar has loaded
at least two new certificates, and requires that no call failed.
"""

from __future__ import annotations

import datetime
import time

import httpx
import pytest
from cryptography import x509

from aiswa_cli._api import ApiError
from aiswa_mesh._mesh import Mesh
from conftest import STDLIB, pack_python, wait_run

WATCHED = ("gateway", "users", "projects", "reflector")
ROTATIONS = 2


def _leaf_serials(mesh: Mesh, workload: str) -> set[int]:
    """Serials of the leaf certificates that a sidecar's Envoy has loaded now."""
    with mesh.admin_client(workload) as client:
        reply = client.get("/certs")
    reply.raise_for_status()
    return {int(entry["cert_chain"][0]["serial_number"], 16)
            for entry in reply.json()["certificates"] if entry.get("cert_chain")}


def _lifetime(mesh: Mesh, workload: str) -> datetime.timedelta:
    leaf = x509.load_pem_x509_certificates((mesh.certs_dir(workload) / "cert.pem").read_bytes())[0]
    return leaf.not_valid_after_utc - leaf.not_valid_before_utc


def test_traffic_crosses_two_rotations_without_failures(layout, topology, admin, project):
    mesh = Mesh(layout, topology)
    lifetime = _lifetime(mesh, "projects")
    if lifetime > datetime.timedelta(minutes=10):
        pytest.skip(f"certificates live {lifetime}; start the platform with AISWA_CERT_TTL=2m "
                    "(as `make test` does) to watch them rotate")
    archive = admin.upload(project["project_id"], "json.tar.gz", pack_python([STDLIB / "json"]))

    seen = {workload: _leaf_serials(mesh, workload) for workload in WATCHED}
    calls, failures, runs = 0, [], 0
    deadline = time.monotonic() + lifetime.total_seconds() * (ROTATIONS + 1)
    next_run = time.monotonic()
    while min(len(serials) for serials in seen.values()) < ROTATIONS + 1:
        assert time.monotonic() < deadline, (
            f"not every sidecar rotated {ROTATIONS} times within "
            f"{lifetime.total_seconds() * (ROTATIONS + 1):.0f} s; serials seen: "
            f"{ {name: len(serials) for name, serials in seen.items()} }")
        try:
            admin.request("GET", "/v1/users/me")
            admin.request("GET", "/v1/projects")
            calls += 2
            if time.monotonic() >= next_run:
                run = admin.start_run(project["project_id"], archive["archive_id"])
                finished = wait_run(admin, run["run_id"], timeout=60)
                assert finished["state"] == "RUN_STATE_COMPLETED", finished
                admin.report(run["run_id"])
                calls, runs = calls + 3, runs + 1
                next_run = time.monotonic() + 10
        except (ApiError, httpx.HTTPError) as exc:
            failures.append(repr(exc))
        for workload in WATCHED:
            seen[workload] |= _leaf_serials(mesh, workload)
        time.sleep(0.1)

    assert failures == [], f"{len(failures)} of {calls} calls failed across rotations: {failures[:3]}"
    assert runs >= 2, f"only {runs} analyses ran across the rotations"
    assert calls > 100, f"only {calls} calls ran across the rotations"
