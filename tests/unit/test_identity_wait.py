"""wait_for_identity: the launcher's wait for an identity agent's first certificate."""

from __future__ import annotations

import datetime
import threading
import time

import pytest

from aiswa_mesh.localca import CertificateAuthority
from aiswa_mesh.openbao import CERT_FILE, KEY_FILE, wait_for_identity

CA = CertificateAuthority("aiswa test mesh root")


def _write(folder, lifetime: datetime.timedelta) -> None:
    credentials = CA.issue("users", "aiswa", lifetime)
    (folder / CERT_FILE).write_bytes(credentials.cert_pem)
    (folder / KEY_FILE).write_bytes(credentials.key_pem)


def test_valid_certificate_counts(tmp_path):
    _write(tmp_path, datetime.timedelta(hours=1))
    wait_for_identity(tmp_path, timeout=1)


def test_expired_certificate_does_not_count(tmp_path):
    # As left by a run of the day before with two-minute certificates.
    _write(tmp_path, datetime.timedelta(minutes=-1))
    with pytest.raises(TimeoutError, match=f"no valid certificate appeared in {tmp_path}"):
        wait_for_identity(tmp_path, timeout=0.5)


def test_waits_for_agent_to_replace_expired(tmp_path):
    _write(tmp_path, datetime.timedelta(minutes=-1))
    agent = threading.Timer(0.5, _write, (tmp_path, datetime.timedelta(hours=1)))
    started = time.monotonic()
    agent.start()
    wait_for_identity(tmp_path, timeout=10)
    # The new certificate is written 0.5 s after the start, never sooner.
    assert time.monotonic() - started >= 0.5
    agent.join()


def test_half_written_certificate_waits(tmp_path):
    (tmp_path / CERT_FILE).write_text("-----BEGIN CERTIFICATE-----\nMIIB")
    (tmp_path / KEY_FILE).write_text("")
    with pytest.raises(TimeoutError):
        wait_for_identity(tmp_path, timeout=0.5)
