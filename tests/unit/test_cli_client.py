"""The command-line client: a bad CA certificate option, its help, a closed pipe and its output."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aiswa_cli._api import ApiError, Client
from aiswa_cli.main import _print_roadmap, _wait, main, parser
from aiswa_mesh.localca import CertificateAuthority


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


@contextlib.contextmanager
def _listener(tls: ssl.SSLContext | None) -> Iterator[int]:
    """Accept connections on a loopback port: a TLS handshake with ``tls``, or none, then close."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with contextlib.suppress(OSError), connection:
                if tls is not None:
                    tls.wrap_socket(connection, server_side=True).close()
                else:
                    connection.recv(4096)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        # close() alone does not wake a thread blocked in accept() on Linux.
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(timeout=5)
        assert not thread.is_alive(), "the listener thread did not stop"


def test_http_url_gets_https_advice(tmp_path, capsys):
    # As when a user writes http:// for the gateway's TLS port, which closes the connection.
    with _listener(None) as port:
        code = main(["--api-url", f"http://127.0.0.1:{port}", "--token-file",
                     str(_saved_token(tmp_path)), "status", "r-1"])
    error = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in error
    assert "RemoteProtocolError" in error
    assert "the gateway speaks HTTPS only" in error


def test_untrusted_gateway_certificate_names_ca(tmp_path, capsys):
    trusted = CertificateAuthority("other CA")
    code, error = _status_over_tls(tmp_path, capsys, CertificateAuthority("gateway CA"), trusted)
    assert code == 1
    assert f"not signed by a CA in {tmp_path / 'trusted-ca.pem'}" in error
    assert ".state/pki/gateway-ca.pem" in error
    assert "is the platform up" not in error


def test_certificate_for_other_host_names_address(tmp_path, capsys):
    # A certificate from the trusted CA, for a name that is not the URL's host.
    gateway_ca = CertificateAuthority("gateway CA")
    code, error = _status_over_tls(tmp_path, capsys, gateway_ca, gateway_ca)
    assert code == 1
    assert "the gateway's certificate does not name the host of" in error
    assert "--api-url https://127.0.0.1:8443" in error


def _status_over_tls(tmp_path, capsys, server_ca: CertificateAuthority,
                     trusted_ca: CertificateAuthority) -> tuple[int, str]:
    """Run `aiswa status` against a TLS server whose mesh certificate (no IP SAN) is from server_ca."""
    credentials = server_ca.issue("gateway", "aiswa")
    (tmp_path / "cert.pem").write_bytes(credentials.cert_pem)
    (tmp_path / "key.pem").write_bytes(credentials.key_pem)
    (tmp_path / "trusted-ca.pem").write_bytes(trusted_ca.cert_pem)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    with _listener(tls) as port:
        code = main(["--api-url", f"https://127.0.0.1:{port}", "--ca-cert",
                     str(tmp_path / "trusted-ca.pem"), "--token-file",
                     str(_saved_token(tmp_path)), "status", "r-1"])
    return code, capsys.readouterr().err


def _saved_token(tmp_path) -> Path:
    token = tmp_path / "token.json"
    token.write_text(json.dumps({"access_token": "t", "expires_at": time.time() + 600}))
    return token


def test_help_lists_platform_commands():
    text = parser().format_help()
    for command in ("login", "analyze", "check", "mesh", "policy"):
        assert f"    {command} " in text, command


def test_platform_command_after_options(capsys):
    # Global options first, as for the gateway commands: the command still runs.
    with pytest.raises(SystemExit) as done:
        main(["--api-url", "https://127.0.0.1:1", "policy", "--help"])
    assert done.value.code == 0
    assert "explain" in capsys.readouterr().out


def test_closed_pipe_exits_quietly():
    # A reader such as `head` that closes the pipe early makes print() fail.
    script = ("import sys, aiswa_cli.main as cli\n"
              "def fail(argv):\n"
              "    raise BrokenPipeError(32, 'Broken pipe')\n"
              "cli._main = fail\n"
              "sys.exit(cli.main(['status', 'x']))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr == ""


def test_empty_folder_rejected_before_upload(tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / ".git").mkdir(parents=True)
    (empty / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    ca = tmp_path / "ca.pem"
    ca.write_bytes(CertificateAuthority("aiswa test gateway CA").cert_pem)
    # The gateway address is closed: the error must come before any request.
    code = main(["--api-url", "https://127.0.0.1:1", "--ca-cert", str(ca), "analyze", str(empty)])
    error = capsys.readouterr().err
    assert code == 1
    assert f"{empty} contains no regular files to analyse" in error


def _roadmap_item(rank: int) -> dict:
    return {"rank": rank, "wsjf": 2.5, "path": "a.py", "line": 3, "qualified_name": "f",
            "problem": "complex"}


@pytest.mark.parametrize("count, heading", [(1, "1 item,"), (2, "2 items,")])
def test_roadmap_heading_counts_items(capsys, count, heading):
    _print_roadmap({"run_id": "r-1", "items": [_roadmap_item(n) for n in range(count)]}, top=0)
    assert capsys.readouterr().out.splitlines()[0] == f"Roadmap of run r-1: {heading} best WSJF first"


class _Runs:
    """A client whose run moves from counting files to completed, one state per request."""

    def __init__(self) -> None:
        self.states = [("RUN_STATE_RUNNING", 0, 0), ("RUN_STATE_RUNNING", 1, 3),
                       ("RUN_STATE_RUNNING", 1, 3), ("RUN_STATE_COMPLETED", 3, 3)]

    def run(self, run_id: str) -> dict:
        state, done, total = self.states.pop(0)
        return {"run_id": run_id, "state": state, "files_done": done, "files_total": total}


def test_progress_on_terminal_rewrites_line(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    run = _wait(_Runs(), "r-1", timeout=30, quiet=False)
    err = capsys.readouterr().err
    progress = [line.strip() for line in err.split("\r") if line.strip()]
    assert run["state"] == "RUN_STATE_COMPLETED"
    assert progress == ["running    counting files", "running    1/3 files",
                        "running    1/3 files", "completed  3/3 files"]
    assert err.count("\n") == 1


def test_progress_in_log_one_line_per_change(capsys):
    run = _wait(_Runs(), "r-1", timeout=30, quiet=False)
    err = capsys.readouterr().err
    assert run["state"] == "RUN_STATE_COMPLETED"
    assert "\r" not in err
    assert err.splitlines() == ["  running    counting files", "  running    1/3 files",
                                "  completed  3/3 files"]


@pytest.mark.parametrize("content, expected", [
    ("", "cannot read the saved token in"),
    ("not json", "cannot read the saved token in"),
    ("{}", "is not a token that `aiswa login` saved"),
    ('{"token": "x"}', "is not a token that `aiswa login` saved"),
    ('["a"]', "is not a token that `aiswa login` saved"),
])
def test_bad_token_file_is_named(tmp_path, capsys, content, expected):
    token_file = tmp_path / "token.json"
    token_file.write_text(content)
    code = main(["--token-file", str(token_file), "status", "r-1"])
    error = capsys.readouterr().err
    assert code == 1
    assert expected in error
    assert str(token_file) in error
    assert error.rstrip().endswith("run `aiswa login` to replace it")


def test_token_file_folder_is_named(tmp_path, capsys):
    code = main(["--token-file", str(tmp_path), "status", "r-1"])
    error = capsys.readouterr().err
    assert code == 1
    assert f"cannot read the saved token in {tmp_path} ([Errno 21] Is a directory" in error


def test_missing_api_key_file_is_named(tmp_path, capsys):
    missing = tmp_path / "no-key"
    code = main(["--token-file", str(tmp_path / "t.json"), "login", "--api-key-file", str(missing)])
    error = capsys.readouterr().err
    assert code == 1
    assert f"cannot read the API key from {missing}" in error
    assert ".state/secrets/admin-api-key" in error


def test_global_options_after_command():
    args = parser().parse_args(["status", "r-1", "--token-file", "/tmp/t.json",
                                "--api-url", "https://127.0.0.1:9"])
    assert str(args.token_file) == "/tmp/t.json"
    assert args.api_url == "https://127.0.0.1:9"
    # Before the command they still work, and the defaults stay when neither is given.
    before = parser().parse_args(["--token-file", "/tmp/u.json", "status", "r-1"])
    assert str(before.token_file) == "/tmp/u.json"
    assert parser().parse_args(["status", "r-1"]).api_url.startswith("https://")


def test_unwritable_token_file_is_named(tmp_path):
    # A stand-in for the gateway's token endpoint: the login succeeds, and saving the token fails.
    def token_endpoint(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/auth/token"
        return httpx.Response(200, json={"access_token": "t", "expires_in": 900})

    client = Client("https://127.0.0.1:9", None, tmp_path)  # a folder, not a file
    client._http = httpx.Client(base_url=client.base_url,
                                transport=httpx.MockTransport(token_endpoint))
    with pytest.raises(ApiError) as failure:
        client.login("aiswa_k_key")
    assert str(failure.value).startswith(f"cannot save the token to {tmp_path} (")
    assert str(failure.value).endswith("pass --token-file with a file that you may write")
