"""aiswa_mesh._supervisor against a real supervisord of the test's own."""

from __future__ import annotations

import stat
import sys
import time
from collections.abc import Iterator

import pytest

from aiswa_mesh._state import StateLayout
from aiswa_mesh._supervisor import Program, Supervisor, render_config


@pytest.fixture
def supervisor(tmp_path) -> Iterator[Supervisor]:
    # A short root: the UNIX socket's path must fit in 108 bytes.
    layout = StateLayout(tmp_path / "s")
    layout.create()
    sleeper = [sys.executable, "-c", "'import time; time.sleep(60)'"]
    programs = [
        Program("sleeper", sleeper, 10),
        Program("waited", sleeper, 20),
        Program("broken", ["/nonexistent/aiswa-program"], 30),
        Program("umask", [sys.executable, "-c",
                          "'import os, time; print(oct(os.umask(0)), flush=True); time.sleep(60)'"],
                40),
    ]
    layout.supervisord_conf.write_text(render_config(layout, programs))
    control = Supervisor(layout)
    control.start_daemon()
    yield control
    control.shutdown(timeout=30)


def test_start_without_wait_returns_at_spawn(supervisor):
    started = time.monotonic()
    supervisor.start("sleeper", wait=False)
    elapsed = time.monotonic() - started
    # supervisord counts a program as running after startsecs (2 s) only.
    assert supervisor.state("sleeper") == "STARTING"
    assert elapsed < 2
    # A second start of a starting program is not an error.
    supervisor.start("sleeper", wait=False)


def test_start_with_wait_returns_when_running(supervisor):
    supervisor.start("waited")
    assert supervisor.state("waited") == "RUNNING"
    # Starting a running program does nothing.
    supervisor.start("waited")
    assert supervisor.state("waited") == "RUNNING"


def test_start_failure_names_program_and_log(supervisor):
    with pytest.raises(SystemExit) as failure:
        supervisor.start("broken")
    message = str(failure.value)
    assert message.startswith("supervisord could not start broken: ")
    assert message.endswith("broken.log")


def test_logs_closed_to_other_users(supervisor):
    supervisor.start("umask")
    log = supervisor.layout.logs / "umask.log"
    deadline = time.monotonic() + 10
    while not log.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.1)
    # The program's own umask is the usual one, but the log it writes to is not world-readable.
    assert log.read_text().strip() == "0o22"
    assert stat.S_IMODE(log.stat().st_mode) == 0o640
    assert stat.S_IMODE((supervisor.layout.logs / "supervisord.log").stat().st_mode) == 0o640
    assert stat.S_IMODE(supervisor.layout.logs.stat().st_mode) == 0o711


def test_create_closes_older_logs(tmp_path):
    layout = StateLayout(tmp_path / "s")
    layout.create()
    older = layout.logs / "projects.log"
    older.write_text("written before the umask\n")
    older.chmod(0o644)
    private = layout.logs / "sidecar-projects-access.log"
    private.write_text("")
    private.chmod(0o600)
    layout.create()
    assert stat.S_IMODE(older.stat().st_mode) == 0o640
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
