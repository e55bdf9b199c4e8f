"""aiswa_mesh._users: the folder that keeps the workload users out, and the commands they run."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from aiswa_mesh._state import StateLayout, is_root
from aiswa_mesh._users import WorkloadUsers, closed_folder


@pytest.fixture
def open_folder():
    """A folder that every user can enter (pytest's own temporary folder is 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="aiswa-users-", dir="/var/tmp"))
    folder.chmod(0o755)
    assert closed_folder(folder) is None, "/var/tmp should be open to every user"
    yield folder
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(folder)


def test_closed_folder_is_outermost_without_search(open_folder):
    outer = open_folder / "outer"
    inner = outer / "inner"
    checkout = inner / "repo"
    checkout.mkdir(parents=True)
    for folder in (outer, inner, checkout):
        folder.chmod(0o755)
    assert closed_folder(checkout) is None
    inner.chmod(0o700)
    outer.chmod(0o750)
    assert closed_folder(checkout) == outer
    outer.chmod(0o755)
    assert closed_folder(checkout) == inner
    # A folder that does not exist yet gets mode 0755 when the launcher creates it.
    assert closed_folder(inner / "missing" / "state") == inner
    inner.chmod(0o711)
    assert closed_folder(inner / "missing" / "state") is None


def test_disabled_users_leave_commands_alone(tmp_path, monkeypatch):
    monkeypatch.setattr("aiswa_mesh._users.is_root", lambda: False)
    users = WorkloadUsers(StateLayout(tmp_path))
    assert users.enabled is False
    assert users.reason == "the launcher does not run as root"
    assert users.command("users", ["python", "-m", "aiswa_users"]) == [
        "python", "-m", "aiswa_users"]


def test_closed_checkout_reason_names_folder(open_folder, monkeypatch):
    closed = open_folder / "closed"
    state = closed / "repo" / ".state"
    state.mkdir(parents=True)
    closed.chmod(0o700)
    monkeypatch.setattr("aiswa_mesh._users.is_root", lambda: True)
    monkeypatch.setattr("aiswa_mesh._users.ROOT", open_folder)
    users = WorkloadUsers(StateLayout(state))
    assert users.enabled is False
    assert f"other users cannot enter {closed} (on the way to {state})" in users.reason
    assert f"chmod o+x {closed}" in users.reason
    closed.chmod(0o711)
    assert WorkloadUsers(StateLayout(state)).reason is None


@pytest.mark.parametrize("exit_code", [0, 1])
def test_unrunnable_interpreter_disables_users(open_folder, monkeypatch, exit_code):
    if not is_root():
        pytest.skip("setpriv needs root")
    state = open_folder / "state"
    python = StateLayout(state).venv_python
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\necho 'ImportError: no grpc here' >&2\nexit {exit_code}\n")
    python.chmod(0o755)
    for folder in (state, state / "venv", python.parent):
        folder.chmod(0o755)
    monkeypatch.setattr("aiswa_mesh._users.ROOT", open_folder)
    reason = WorkloadUsers(StateLayout(state)).reason
    if exit_code == 0:
        assert reason is None
    else:
        assert reason is not None
        assert f"another user cannot start {python} (ImportError: no grpc here)" in reason
        assert "PYTHON=... make setup" in reason
