"""Invalid settings of the credential delivery are rejected with a message that names them."""

from __future__ import annotations

import pytest

from aiswa_mesh._openbao_secrets import _seconds
from aiswa_mesh._state import StateLayout
from aiswa_mesh.deliver import main as deliver
from aiswa_mesh.launcher import Platform
from aiswa_mesh.openbao import BOOTSTRAP_FD_VARIABLE, read_bootstrap_fd


def test_bootstrap_fd_not_a_number(monkeypatch):
    monkeypatch.setenv(BOOTSTRAP_FD_VARIABLE, "three")
    with pytest.raises(SystemExit) as failure:
        read_bootstrap_fd()
    assert "AISWA_OPENBAO_BOOTSTRAP_FD='three' is not a file descriptor" in str(failure.value)


def test_bootstrap_fd_unset_returns_none(monkeypatch):
    monkeypatch.delenv(BOOTSTRAP_FD_VARIABLE, raising=False)
    assert read_bootstrap_fd() is None


@pytest.mark.parametrize("value", ["15x", "m", "", "1.5h"])
def test_invalid_credential_ttl(value):
    with pytest.raises(ValueError) as failure:
        _seconds(value)
    assert repr(value) in str(failure.value)


def test_credential_ttl_units():
    assert [_seconds(value) for value in ("90", "45s", "15m", "2h")] == [90, 45, 900, 7200]


def test_mesh_off_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("AISWA_MESH", "0")
    with pytest.raises(SystemExit) as failure:
        Platform(StateLayout(tmp_path))
    assert "AISWA_MESH=0 is no longer supported" in str(failure.value)


def test_deliver_without_command(capsys):
    with pytest.raises(SystemExit):
        deliver(["--port", "58200", "--approle", "users", "--"])
    assert "no command given after --" in capsys.readouterr().err
