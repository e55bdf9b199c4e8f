"""aiswa_mesh._supervisor against a real supervisord of the test's own."""

from __future__ import annotations

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
