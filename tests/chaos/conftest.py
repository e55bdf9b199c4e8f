"""Fixtures for the chaos experiments (`make chaos`) against the running platform.

The experiments reuse the fixtures of tests/integration/conftest.py (a
logged-in admin, the supervisor, the topology). This file adds the faults and
the figures that each experiment records.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from aiswa_cli._api import ApiError

_INTEGRATION = Path(__file__).resolve().parents[1] / "integration" / "conftest.py"
_spec = importlib.util.spec_from_file_location("aiswa_integration_fixtures", _INTEGRATION)
assert _spec is not None and _spec.loader is not None
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)
# pytest finds fixtures among a conftest's names, so the integration ones are
# copied in. The test module imports the helpers from here.
globals().update({name: value for name, value in vars(_fixtures).items()
                  if not name.startswith("_") and name not in globals()})

supervisorctl = _fixtures.supervisorctl
_FIGURES: dict[str, dict[str, float | str]] = {}


def program_pid(layout, program: str) -> int:
    """Return the pid of a running supervisord program, failing the test when it is not running."""
    text = supervisorctl(layout, "pid", program).strip()
    if not text.isdigit() or text == "0":
        pytest.fail(f"{program} is not running (supervisorctl pid said {text!r})")
    return int(text)


def program_state(layout, program: str) -> str:
    """Return the supervisord state of ``program`` (RUNNING, STOPPED, ...)."""
    fields = supervisorctl(layout, "status", program).split()
    return fields[1] if len(fields) > 1 else "UNKNOWN"


@contextmanager
def stopped(layout, program: str) -> Iterator[None]:
    """Stop ``program`` for the block, then start it again, even when the block fails."""
    supervisorctl(layout, "stop", program)
    assert program_state(layout, program) == "STOPPED", f"could not stop {program}"
    try:
        yield
    finally:
        supervisorctl(layout, "start", program)
        assert program_state(layout, program) == "RUNNING", (
            f"{program} did not start again; see .state/logs/{program}.log")


def until(condition: Callable[[], object], timeout: float, description: str) -> float:
    """Poll ``condition`` until it returns a true value; return the seconds it took."""
    started = time.monotonic()
    last: object = None
    while time.monotonic() - started < timeout:
        try:
            last = condition()
        except Exception as error:  # noqa: BLE001 - kept for the failure message
            last = error
        else:
            if last:
                return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {description}; "
                         f"last result: {last!r}")


def api_error(call: Callable[[], object]) -> str:
    """Return the error message of ``call``, or "" when it succeeded."""
    try:
        call()
    except ApiError as error:
        return str(error)
    return ""


class Bystander:
    """A thread that calls one route that the fault should not touch, at a steady rate.

    It makes the blast radius of a fault a number: the calls that failed on a
    route that does not depend on the stopped part. When the block it guards
    ends without an error, it records its figures under ``experiment`` and
    checks that it made calls and that none of them failed.
    """

    def __init__(self, client, path: str, experiment: str,
                 figures: Callable[[str, str, float | str], None], *,
                 auth: bool, rate: float) -> None:
        self.path = path
        self.experiment = experiment
        self._figures = figures
        self.calls = 0
        self.failures: list[str] = []
        self.seconds: list[float] = []
        self._client = client
        self._auth = auth
        self._interval = 1 / rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"bystander {path}", daemon=True)

    def __enter__(self) -> Bystander:
        self._thread.start()
        return self

    def __exit__(self, error_type: type[BaseException] | None, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=150)
        if error_type is None:
            self.record()
            self.assert_untouched()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._client.request("GET", self.path, auth=self._auth)
            except ApiError as error:
                self.failures.append(str(error))
            elapsed = time.monotonic() - started
            self.calls += 1
            self.seconds.append(elapsed)
            self._stop.wait(max(self._interval - elapsed, 0.0))

    def record(self) -> None:
        """Record the calls, failures and latency percentiles under the experiment's name."""
        percentiles = statistics.quantiles(self.seconds, n=100)
        self._figures(self.experiment, f"bystander GET {self.path}",
                f"{self.calls} calls, {len(self.failures)} failed, "
                f"p50 {percentiles[49] * 1000:.1f} ms, p99 {percentiles[98] * 1000:.1f} ms")


    def assert_untouched(self) -> None:
        """Check that the bystander made calls and that none of them failed."""
        assert self.calls >= 20, f"the bystander made only {self.calls} calls"
        assert self.failures == [], (
            f"{len(self.failures)} of {self.calls} calls to {self.path} failed; "
            f"first: {self.failures[0]}")


@pytest.fixture
def bystander(layout, gateway_url, ca_cert, tmp_path, figures) -> Callable[..., Bystander]:
    """Return a factory of Bystanders, each with a client and a login of its own."""

    def start(path: str, experiment: str, *, auth: bool = True, rate: float = 10.0) -> Bystander:
        client = _fixtures.Client(gateway_url, ca_cert, tmp_path / f"token-{time.time_ns()}.json")
        client.login(layout.admin_key.read_text().strip())
        return Bystander(client, path, experiment, figures, auth=auth, rate=rate)

    return start


@pytest.fixture(scope="session")
def figures() -> Callable[[str, str, float | str], None]:
    """Record one measured figure of an experiment, for the summary and chaos.json."""

    def record(experiment: str, measure: str, value: float | str) -> None:
        _FIGURES.setdefault(experiment, {})[measure] = (
            round(value, 3) if isinstance(value, float) else value)

    return record


@pytest.fixture(scope="session")
def service_pids(layout) -> dict[str, int]:
    """The pid of every app and server when the experiments start."""
    programs = ["postgres", "rabbitmq", "openbao", "users", "projects", "reflector", "vision",
                "dashboard", "gateway"]
    return {program: program_pid(layout, program) for program in programs}


def pytest_terminal_summary(terminalreporter) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("chaos figures")
    for experiment, measures in _FIGURES.items():
        terminalreporter.write_line(experiment)
        for measure, value in measures.items():
            terminalreporter.write_line(f"  {measure}: {value}")
    output = Path(__file__).resolve().parents[2] / ".state" / "chaos" / "chaos.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                  "experiments": _FIGURES}, indent=2) + "\n")
    terminalreporter.write_line(f"figures written to {output}")
