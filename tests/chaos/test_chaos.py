"""Chaos experiments: one part of the running platform fails, the rest keeps serving.

Each experiment stops one program of `make up` (a service, its sidecar, a
shared server) or cuts a pod off the network. It checks what the callers see
while that part is gone, brings it back and measures how long the platform
takes to serve again, with nothing else restarted. `make chaos` runs them.
They are not part of `make test`, because they stop servers that other tests
use.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from aiswa_mesh.launcher import Platform
from conftest import (
    STDLIB,
    api_error,
    pack_python,
    program_pid,
    stopped,
    until,
    wait_run,
)

RUN_ID = re.compile(r"run ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


@pytest.fixture(scope="session")
def platform(layout) -> Platform:
    return Platform(layout)


@pytest.fixture(scope="session")
def analysed(admin, service_pids) -> dict:
    """A project with an uploaded archive and one completed run, its report and roadmap."""
    project = admin.request("POST", "/v1/projects", body={"name": f"chaos-{time.time_ns()}"})
    archive = admin.upload(project["project_id"], "json.tar.gz", pack_python([STDLIB / "json"]))
    run = wait_run(admin, admin.start_run(project["project_id"], archive["archive_id"])["run_id"])
    assert run["state"] == "RUN_STATE_COMPLETED", run
    until(lambda: admin.roadmap(project["project_id"], run["run_id"]), 30, "the roadmap")
    return {"project_id": project["project_id"], "archive_id": archive["archive_id"],
            "run_id": run["run_id"], "report": admin.report(run["run_id"])}


def breaker_state(platform: Platform, service: str, upstream: str) -> float:
    """Read ``service``'s circuit breaker gauge for ``upstream`` from its metrics endpoint."""
    port = platform.topology["workloads"][service]["port"] + 1000
    url = f"http://{platform.network.address(service)}:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    match = re.search(rf'^aiswa_breaker_state\{{upstream="{upstream}"\}} (\S+)$', text, re.M)
    assert match, f"{url} has no aiswa_breaker_state for {upstream}"
    return float(match.group(1))


def run_completes(admin, analysed: dict, timeout: float = 120) -> float:
    """Start a run on the experiment's archive; return the seconds until it completed."""
    started = time.monotonic()
    run = admin.start_run(analysed["project_id"], analysed["archive_id"])
    finished = wait_run(admin, run["run_id"], timeout)
    assert finished["state"] == "RUN_STATE_COMPLETED", finished
    assert admin.report(run["run_id"])["files"] == analysed["report"]["files"]
    return time.monotonic() - started


def projects_recover(admin, analysed: dict, restarted: float, figures, experiment: str) -> None:
    """Wait until projects serves again, then run the archive once; record both times."""
    project_id = analysed["project_id"]
    until(lambda: admin.request("GET", f"/v1/projects/{project_id}"), 60, "projects to serve")
    figures(experiment, "projects served again after its start (s)",
            time.monotonic() - restarted)
    figures(experiment, "run after recovery (s)", run_completes(admin, analysed))


def open_vision_breaker(admin, analysed: dict, platform: Platform, figures,
                        experiment: str, statuses: tuple[str, ...]) -> None:
    """Call the roadmap (vision calls projects) until vision's breaker opens; record the calls."""
    project_id, run_id = analysed["project_id"], analysed["run_id"]
    seconds: list[float] = []
    for _ in range(12):
        started = time.monotonic()
        error = api_error(lambda: admin.roadmap(project_id, run_id))
        seconds.append(time.monotonic() - started)
        assert any(status in error for status in statuses), (
            error or "the roadmap was served during the fault")
        if "circuit breaker is open" in error:
            break
    else:
        pytest.fail(f"vision's breaker did not open in 12 calls: {error}")
    assert "upstream projects" in error
    assert breaker_state(platform, "vision", "projects") == 2
    figures(experiment, "calls until the breaker opened", len(seconds))
    figures(experiment, "first failed call (s)", seconds[0])
    figures(experiment, "first call refused by the open breaker (s)", seconds[-1])
    started = time.monotonic()
    error = api_error(lambda: admin.roadmap(project_id, run_id))
    assert "circuit breaker is open" in error, error or "the call succeeded"
    figures(experiment, "next call, breaker open (s)", time.monotonic() - started)


def roadmap_recovers(admin, analysed: dict, figures, experiment: str, since: float) -> None:
    """Wait until the roadmap is served again; record the seconds since ``since``."""
    run_id = analysed["run_id"]
    until(lambda: admin.roadmap(analysed["project_id"], run_id)["run_id"] == run_id, 60,
          f"the roadmap ({experiment})")
    figures(experiment, "roadmap served again (s)", time.monotonic() - since)


def test_worker_down_queues_runs_while_the_rest_serves(
        admin, analysed, layout, figures, bystander):
    with bystander(f"/v1/projects/{analysed['project_id']}", "reflector stopped"):
        project_id = analysed["project_id"]
        with stopped(layout, "reflector"):
            run = admin.start_run(project_id, analysed["archive_id"])
            time.sleep(3)
            assert admin.run(run["run_id"])["state"] == "RUN_STATE_QUEUED"
            # Projects, vision and users still serve calls. Only the reflector's own route fails.
            assert admin.request("GET", f"/v1/projects/{project_id}")["project_id"] == project_id
            roadmap = admin.roadmap(project_id, analysed["run_id"])
            assert roadmap["run_id"] == analysed["run_id"]
            assert roadmap["items"]
            assert admin.login(layout.admin_key.read_text().strip())["access_token"]
            error = api_error(lambda: admin.report(analysed["run_id"]))
            assert "HTTP 503" in error, error or "the call succeeded"
            assert "reflector is not answering; retry later" in error
            restarted = time.monotonic()
        finished = wait_run(admin, run["run_id"], 120)
        assert finished["state"] == "RUN_STATE_COMPLETED", finished
        assert admin.report(run["run_id"])["files"] == analysed["report"]["files"]
        figures("reflector stopped", "queued run completed after its start (s)",
                time.monotonic() - restarted)


def test_upstream_down_opens_the_breaker_then_closes(
        admin, analysed, layout, platform, figures, bystander):
    """Vision's breaker to projects opens while projects is down, and closes when it is back."""
    assert breaker_state(platform, "vision", "projects") == 0
    with bystander("/v1/users/me", "projects stopped"):
        with stopped(layout, "projects"):
            open_vision_breaker(admin, analysed, platform, figures, "projects stopped",
                                ("HTTP 503",))
            restarted = time.monotonic()
        roadmap_recovers(admin, analysed, figures, "projects stopped", restarted)
        assert breaker_state(platform, "vision", "projects") == 0


def test_sidecar_down_fails_its_routes_only(admin, analysed, layout, figures, bystander):
    with bystander("/v1/users/me", "projects' sidecar stopped"):
        project_id = analysed["project_id"]
        with stopped(layout, "sidecar-projects"):
            error = api_error(lambda: admin.request("GET", f"/v1/projects/{project_id}"))
            assert "HTTP 503" in error, error or "the call succeeded"
            assert "(reported by the gateway sidecar, calling projects; retry later)" in error
            assert admin.login(layout.admin_key.read_text().strip())["access_token"]
            restarted = time.monotonic()
        projects_recover(admin, analysed, restarted, figures, "projects' sidecar stopped")


def test_database_down_then_pools_reconnect(admin, analysed, layout, figures, bystander):
    with bystander("/.well-known/jwks.json", "postgres stopped", auth=False):
        project_id = analysed["project_id"]
        with stopped(layout, "postgres"):
            started = time.monotonic()
            error = api_error(lambda: admin.request("GET", f"/v1/projects/{project_id}"))
            figures("postgres stopped", "failed call (s)", time.monotonic() - started)
            assert "HTTP 503" in error, error or "the call succeeded"
            assert "projects cannot reach its database now; retry later" in error
            # Forty seconds down in all: long enough for the pool's retries to
            # back off to 16 s and more, which RECONNECT_TIMEOUT bounds.
            time.sleep(max(40 - (time.monotonic() - started), 0))
            restarted = time.monotonic()
        projects_recover(admin, analysed, restarted, figures, "postgres stopped")


def test_broker_down_keeps_runs_pending_then_publishes(
        admin, analysed, layout, figures, bystander):
    with bystander(f"/v1/projects/{analysed['project_id']}", "rabbitmq stopped"):
        project_id = analysed["project_id"]
        with stopped(layout, "rabbitmq"):
            started = time.monotonic()
            error = api_error(lambda: admin.start_run(project_id, analysed["archive_id"]))
            refused_after = time.monotonic() - started
            figures("rabbitmq stopped", "refused StartRun (s)", refused_after)
            # StartRun waits START_RUN_RECONNECT_WAIT (5 s), not the 30 s of a login switch.
            assert refused_after < 20, f"StartRun took {refused_after:.1f} s to refuse"
            assert "HTTP 503" in error, error or "StartRun succeeded with RabbitMQ stopped"
            assert "PENDING" in error, error
            match = RUN_ID.search(error)
            assert match, f"the error does not name the stored run: {error}"
            run_id = match.group(1)
            assert admin.run(run_id)["state"] == "RUN_STATE_PENDING"
            assert admin.request("GET", f"/v1/projects/{project_id}")["project_id"] == project_id
            restarted = time.monotonic()
        finished = wait_run(admin, run_id, 180)
        assert finished["state"] == "RUN_STATE_COMPLETED", finished
        assert admin.report(run_id)["files"] == analysed["report"]["files"]
        figures("rabbitmq stopped", "pending run completed after its start (s)",
                time.monotonic() - restarted)


def test_openbao_down_the_platform_keeps_serving(admin, analysed, layout, figures, bystander):
    with bystander(f"/v1/projects/{analysed['project_id']}", "openbao stopped"):
        with stopped(layout, "openbao"):
            figures("openbao stopped", "run while it was down (s)", run_completes(admin, analysed))
            down = _check_result()
            assert down.returncode != 0
            assert "FAIL  program openbao is STOPPED" in down.stdout, down.stdout
            restarted = time.monotonic()
        until(lambda: _check_result().returncode == 0, 90, "`aiswa check` to pass again")
        figures("openbao stopped", "unsealed and checked after its start (s)",
                time.monotonic() - restarted)


def test_partitioned_pod_opens_the_breaker(
        admin, analysed, layout, platform, figures, bystander):
    """Drop packets from vision's pod to projects' pod: calls time out instead of hanging."""
    if not platform.network.enabled:
        pytest.skip("needs pods: run `make up` as root without AISWA_PODS=off")
    project_id = analysed["project_id"]
    in_vision = platform.network.command
    target = platform.network.address("projects")
    rules = (f"table inet aiswa_chaos {{\n  chain out {{\n"
             f"    type filter hook output priority 0;\n    ip daddr {target} drop\n  }}\n}}\n")
    with bystander(f"/v1/projects/{project_id}", "vision cut off from projects"):
        subprocess.run(in_vision("vision", ["nft", "-f", "-"]), input=rules, text=True,
                       check=True)
        try:
            open_vision_breaker(admin, analysed, platform, figures,
                                "vision cut off from projects", ("HTTP 503", "HTTP 504"))
            # The gateway reaches projects directly: only vision's path is cut.
            assert admin.request("GET", f"/v1/projects/{project_id}")["project_id"] == project_id
        finally:
            subprocess.run(in_vision("vision", ["nft", "delete", "table", "inet", "aiswa_chaos"]),
                           check=True)
        roadmap_recovers(admin, analysed, figures, "vision cut off from projects",
                         time.monotonic())


def test_paused_upstream_times_out_then_recovers(
        admin, analysed, layout, platform, figures, bystander):
    """Pause projects' app with SIGSTOP: it accepts connections but never replies.

    A stopped process refuses connections, so its callers fail at once. A
    paused one is the harder case: only deadlines end the calls to it.
    """
    pid = program_pid(layout, "projects")
    with bystander("/v1/users/me", "projects paused"):
        os.kill(pid, signal.SIGSTOP)
        try:
            open_vision_breaker(admin, analysed, platform, figures, "projects paused",
                                ("HTTP 503", "HTTP 504"))
        finally:
            os.kill(pid, signal.SIGCONT)
        roadmap_recovers(admin, analysed, figures, "projects paused", time.monotonic())
    # The process was paused, not restarted: the same pid serves again.
    assert program_pid(layout, "projects") == pid


def test_opa_down_denies_its_workload_only(admin, analysed, layout, figures, bystander):
    """Stop projects' OPA: calls to projects are denied (fail closed), other workloads serve."""
    project_id = analysed["project_id"]
    with bystander("/v1/users/me", "opa-projects stopped"):
        with stopped(layout, "opa-projects"):
            error = api_error(lambda: admin.request("GET", f"/v1/projects/{project_id}"))
            assert "HTTP 403" in error, error or "projects served a call without its OPA"
            assert "authorization service unavailable" in error
            restarted = time.monotonic()
        until(lambda: admin.request("GET", f"/v1/projects/{project_id}"), 30,
              "projects to allow calls again")
        figures("opa-projects stopped", "projects allowed calls again after its start (s)",
                time.monotonic() - restarted)


def test_nothing_else_restarted_and_the_mesh_checks_out(layout, service_pids):
    """Check, last, that every program that no experiment stopped kept its process."""
    stopped_on_purpose = {"projects", "reflector", "postgres", "rabbitmq", "openbao"}
    for program, pid in service_pids.items():
        if program not in stopped_on_purpose:
            assert program_pid(layout, program) == pid, (
                f"{program} restarted during the experiments")
    result = _check_result()
    assert result.returncode == 0, result.stdout + result.stderr


def _check_result() -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aiswa_cli.main", "check"],
                          capture_output=True, text=True, timeout=120, check=False)

