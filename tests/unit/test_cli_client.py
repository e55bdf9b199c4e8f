"""The command-line client's handling of a bad CA certificate option."""

from __future__ import annotations

from aiswa_cli.main import main


def test_missing_ca_certificate_is_named(tmp_path, capsys):
    missing = tmp_path / "no-such-ca.pem"
    code = main(["--ca-cert", str(missing), "status", "00000000-0000-0000-0000-000000000000"])
    error = capsys.readouterr().err
    assert code == 1
    assert f"cannot use {missing} as the gateway's CA certificate" in error
    assert "--ca-cert" in error


def test_garbage_ca_file_is_named(tmp_path, capsys):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    code = main(["--ca-cert", str(garbage), "status", "00000000-0000-0000-0000-000000000000"])
    assert code == 1
    assert f"cannot use {garbage}" in capsys.readouterr().err
