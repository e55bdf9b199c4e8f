"""Files that the OpenBao bootstrap writes keep the owner of their folder."""

from __future__ import annotations

import os
import pwd

import pytest

from aiswa_mesh._openbao_files import write_file_atomically

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")


def test_file_takes_folder_owner(tmp_path):
    """Check the case of `aiswa mesh render` as root, which rewrites OpenBao's config."""
    nobody = pwd.getpwnam("nobody")
    folder = tmp_path / "openbao"
    folder.mkdir(mode=0o700)
    os.chown(folder, nobody.pw_uid, nobody.pw_gid)
    config = folder / "config.json"
    config.write_text("{}")  # an earlier file of root's, replaced below
    write_file_atomically(config, b'{"ui": false}', 0o600)
    status = config.stat()
    assert (status.st_uid, status.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    assert status.st_mode & 0o777 == 0o600
    assert config.read_bytes() == b'{"ui": false}'


def test_file_in_root_folder_stays_root(tmp_path):
    secret = tmp_path / "unseal-key"
    write_file_atomically(secret, b"key\n", 0o600)
    assert (secret.stat().st_uid, secret.stat().st_gid) == (0, 0)
    assert secret.stat().st_mode & 0o777 == 0o600
