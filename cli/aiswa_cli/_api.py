from __future__ import annotations

import base64
import io
import json
import os
import ssl
import stat
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "https://127.0.0.1:8443"
_SKIPPED_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".tox", ".venv", "node_modules"}


class ApiError(Exception):
    """A gateway call failed; the message says what to do."""


def _state_dir() -> Path:
    return Path(os.environ.get("AISWA_STATE_DIR", Path(__file__).resolve().parents[2] / ".state"))


def default_ca_cert() -> str | None:
    value = os.environ.get("AISWA_CA_CERT")
    if value:
        return value
    candidate = _state_dir() / "pki" / "gateway-ca.pem"
    return str(candidate) if candidate.exists() else None


def default_token_file() -> Path:
    value = os.environ.get("AISWA_TOKEN_FILE")
    if value:
        return Path(value)
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "aiswa" / "token.json"


class Client:
    """A small client of the gateway's REST/JSON API."""

    def __init__(self, base_url: str, ca_cert: str | None, token_file: Path) -> None:
        self.base_url = base_url.rstrip("/")
        self.ca_cert = ca_cert
        self.token_file = token_file
        verify: Any = True
        if ca_cert:
            try:
                verify = ssl.create_default_context(cafile=ca_cert)
            except (OSError, ssl.SSLError) as exc:
                raise ApiError(f"cannot use {ca_cert} as the gateway's CA certificate ({exc}); "
                               "pass --ca-cert with the file that `make up` printed") from None
        self._http = httpx.Client(base_url=self.base_url, verify=verify, timeout=120)

    def _token(self) -> str:
        try:
            data = json.loads(self.token_file.read_text())
        except FileNotFoundError:
            raise ApiError(f"not logged in (no token in {self.token_file}); run `aiswa login`") from None
        except (OSError, ValueError) as exc:
            # ValueError: not JSON, or not UTF-8.
            raise ApiError(f"cannot read the saved token in {self.token_file} ({exc}); run "
                           "`aiswa login` to replace it") from None
        if (not isinstance(data, dict) or not isinstance(data.get("access_token"), str)
                or not isinstance(data.get("expires_at"), int | float)):
            raise ApiError(f"{self.token_file} is not a token that `aiswa login` saved (it needs "
                           "access_token and expires_at); run `aiswa login` to replace it")
        if data["expires_at"] < time.time() + 5:
            raise ApiError("the saved token has expired; run `aiswa login` again")
        return data["access_token"]

    def request(self, method: str, path: str, *, body: Any = None, auth: bool = True,
                params: dict[str, Any] | None = None) -> Any:
        headers = {"authorization": f"Bearer {self._token()}"} if auth else {}
        try:
            reply = self._http.request(method, path, json=body, headers=headers, params=params)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        if reply.status_code < 400:
            return reply.json() if reply.content else {}
        try:
            message = reply.json().get("message", reply.text)
        except (ValueError, AttributeError):  # not JSON, or JSON that is not an object
            message = reply.text
        if reply.status_code == 401 and not auth:
            # Only the login sends no token, so its API key was rejected.
            raise ApiError(f"the API key was rejected ({message.strip() or 401}); check it, "
                           "or ask an admin for a new one")
        if reply.status_code == 401:
            raise ApiError(f"{method} {path} was rejected as unauthenticated "
                           f"({message.strip() or 401}); run `aiswa login`")
        raise ApiError(f"{method} {path} failed with HTTP {reply.status_code}: {message}")

    def _transport_error(self, exc: httpx.TransportError) -> ApiError:
        """Return the error for a request that got no HTTP reply, with what to check."""
        reason = f"{type(exc).__name__}: {exc}"
        # OpenSSL's message contains "Hostname mismatch, ..." or "IP address mismatch, ...".
        if "mismatch, certificate is not valid for" in str(exc):
            return ApiError(f"the gateway's certificate does not name the host of "
                            f"{self.base_url} ({reason}); use the address that `make up` "
                            f"printed, e.g. --api-url {DEFAULT_URL}")
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            trusted = self.ca_cert or "the system's CA certificates"
            return ApiError(f"the gateway at {self.base_url} presented a certificate that is "
                            f"not signed by a CA in {trusted} ({reason}); pass --ca-cert with "
                            "the platform's .state/pki/gateway-ca.pem")
        if self.base_url.startswith("http://"):
            return ApiError(f"the request to {self.base_url} failed ({reason}); the gateway "
                            f"speaks HTTPS only, so use --api-url {DEFAULT_URL} or the https "
                            "address that `make up` printed")
        if isinstance(exc, httpx.ConnectError):
            return ApiError(f"cannot reach the gateway at {self.base_url} ({reason}); is the "
                            "platform up? `make up` starts it")
        return ApiError(f"the request to {self.base_url} failed ({reason}); `aiswa check` "
                        "shows whether the gateway is healthy")

    def login(self, api_key: str) -> dict[str, Any]:
        reply = self.request("POST", "/v1/auth/token", body={"api_key": api_key}, auth=False)
        token = {"access_token": reply["access_token"],
                 "expires_at": time.time() + int(reply["expires_in"])}
        try:
            self.token_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as stream:
                json.dump(token, stream)
        except OSError as exc:
            raise ApiError(f"cannot save the token to {self.token_file} ({exc}); pass "
                           "--token-file with a file that you may write") from None
        return reply

    def find_or_create_project(self, name: str) -> dict[str, Any]:
        for project in self.request("GET", "/v1/projects").get("projects", []):
            if project["name"] == name:
                return project
        return self.request("POST", "/v1/projects", body={"name": name})

    def upload(self, project_id: str, filename: str, content: bytes) -> dict[str, Any]:
        return self.request("POST", f"/v1/projects/{project_id}/archives", body={
            "filename": filename, "content": base64.b64encode(content).decode(),
        })

    def start_run(self, project_id: str, archive_id: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/projects/{project_id}/runs",
                            body={"archive_id": archive_id})

    def run(self, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/runs/{run_id}")

    def report(self, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/runs/{run_id}/report")

    def roadmap(self, project_id: str, run_id: str = "", limit: int = 0) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if run_id:
            params["run_id"] = run_id
        if limit:
            params["limit"] = limit
        return self.request("GET", f"/v1/projects/{project_id}/roadmap", params=params)


def archive_folder(folder: Path) -> tuple[bytes, int]:
    """Pack the regular files under ``folder`` into a tar.gz; return it and the file count.

    Symbolic links and version-control or cache folders are left out.
    """
    if not folder.is_dir():
        raise ApiError(f"{folder} is not a folder; give the path of a source tree")
    buffer = io.BytesIO()
    count = 0
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as archive:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
            for name in sorted(filenames):
                path = Path(dirpath) / name
                mode = path.lstat().st_mode
                if not stat.S_ISREG(mode):
                    continue
                archive.add(path, arcname=str(path.relative_to(folder)), recursive=False)
                count += 1
    if count == 0:
        # Checked here, before `analyze` creates a project that would stay empty.
        raise ApiError(f"{folder} contains no regular files to analyse (version-control and "
                       "cache folders are left out); give the path of a source tree")
    return buffer.getvalue(), count
