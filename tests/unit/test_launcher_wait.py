"""The launcher's wait for an Envoy admin interface to report ready."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from aiswa_mesh.launcher import _wait_envoy_ready
from aiswa_mesh.localca import free_port


class _Admin(BaseHTTPRequestHandler):
    """An admin stub whose /ready returns 503 "PRE_INITIALIZING" twice, then 200 "LIVE"."""

    replies = 0

    def do_GET(self) -> None:  # noqa: N802 (the name BaseHTTPRequestHandler calls)
        type(self).replies += 1
        status, body = (503, b"PRE_INITIALIZING\n") if self.replies <= 2 else (200, b"LIVE\n")
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def admin() -> Iterator[ThreadingHTTPServer]:
    _Admin.replies = 0
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Admin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_wait_returns_once_live(admin):
    url = f"http://127.0.0.1:{admin.server_address[1]}"
    with httpx.Client(base_url=url, timeout=2, trust_env=False) as client:
        _wait_envoy_ready(client, "the gateway", url, timeout=10)
    assert _Admin.replies == 3


def test_wait_names_last_reply(admin):
    url = f"http://127.0.0.1:{admin.server_address[1]}"
    with httpx.Client(base_url=url, timeout=2, trust_env=False) as client:
        with pytest.raises(SystemExit) as failure:
            _wait_envoy_ready(client, "the gateway", "127.0.0.1:9901", timeout=0.4,
                              advice="see gateway.log")
    assert str(failure.value) == ("the gateway was not ready at 127.0.0.1:9901 within 0.4 s "
                                  "(last: status 503: PRE_INITIALIZING); see gateway.log")


def test_wait_names_refused_connection():
    port = free_port()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=2, trust_env=False) as client:
        with pytest.raises(SystemExit) as failure:
            _wait_envoy_ready(client, "the sidecar of users", "admin.sock", timeout=0.5)
    assert str(failure.value).startswith("the sidecar of users was not ready at admin.sock")
    assert "Connection refused" in str(failure.value)
