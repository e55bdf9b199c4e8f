"""Bad input through the gateway: tokens, API keys, unknown resources and roles."""

from __future__ import annotations

import base64
import io
import json
import ssl
import tarfile
import time
import uuid

import httpx
import pytest

from aiswa_cli._api import ApiError, Client
from aiswa_mesh._users import workload_home
from aiswa_users._tokens import SigningKey
from conftest import STDLIB, pack_python, wait_run


@pytest.fixture(scope="module")
def http(gateway_url, ca_cert):
    with httpx.Client(base_url=gateway_url, verify=ssl.create_default_context(cafile=ca_cert), timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def real_key(layout) -> SigningKey:
    return SigningKey.load_or_create(workload_home(layout, "users") / "signing-key.pem")


def _me(http, token: str) -> httpx.Response:
    return http.get("/v1/users/me", headers={"authorization": f"Bearer {token}"})


def test_valid_token_accepted(http, real_key, admin):
    me = admin.request("GET", "/v1/users/me")
    token = real_key.issue(subject=me["user_id"], email=me["email"], role="admin", ttl_seconds=60)
    reply = _me(http, token)
    assert reply.status_code == 200
    assert reply.json()["user_id"] == me["user_id"]


def test_missing_token_rejected(http):
    reply = http.get("/v1/users/me")
    assert reply.status_code == 401
    assert reply.headers["content-type"] == "application/json"
    assert reply.json()["code"] == 16
    assert reply.json()["message"].startswith("Jwt is missing. ")


def test_cli_names_token_failure(tmp_path, gateway_url, ca_cert):
    # A token that the CLI believes valid, but that the gateway rejects.
    token_file = tmp_path / "token.json"
    token_file.write_text(json.dumps({"access_token": "not.a.token", "expires_at": time.time() + 600}))
    client = Client(gateway_url, ca_cert, token_file)
    with pytest.raises(ApiError) as failure:
        client.request("GET", "/v1/users/me")
    assert "GET /v1/users/me was rejected as unauthenticated (Jwt" in str(failure.value)
    assert str(failure.value).endswith("; run `aiswa login`")
    # The CLI shows the message, not the JSON around it.
    assert '"code"' not in str(failure.value)


def test_cli_login_names_rejected_key(tmp_path, gateway_url, ca_cert):
    client = Client(gateway_url, ca_cert, tmp_path / "token.json")
    with pytest.raises(ApiError) as failure:
        client.login("not-a-key")
    assert str(failure.value).startswith("the API key was rejected (")
    assert "malformed" in str(failure.value)
    assert "run `aiswa login`" not in str(failure.value)
    assert not (tmp_path / "token.json").exists()


def test_tampered_token_rejected(http, real_key, admin):
    me = admin.request("GET", "/v1/users/me")
    token = real_key.issue(subject=me["user_id"], email="", role="viewer", ttl_seconds=60)
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["role"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    reply = _me(http, f"{header}.{forged}.{signature}")
    assert reply.status_code == 401
    assert "signature" in reply.text.lower() or "verification" in reply.text.lower()


def test_expired_token_rejected(http, real_key, admin):
    me = admin.request("GET", "/v1/users/me")
    token = real_key.issue(subject=me["user_id"], email="", role="admin", ttl_seconds=-600)
    reply = _me(http, token)
    assert reply.status_code == 401
    assert "expired" in reply.text.lower()


def test_token_signed_by_other_key_rejected(http, tmp_path, real_key, admin):
    me = admin.request("GET", "/v1/users/me")
    other = SigningKey.load_or_create(tmp_path / "other.pem")
    # Same key id as the real key, so only the signature check can catch it.
    impostor = SigningKey(other.private_key, real_key.key_id)
    reply = _me(http, impostor.issue(subject=me["user_id"], email="", role="admin", ttl_seconds=60))
    assert reply.status_code == 401


def test_client_cannot_forge_claims_header(http):
    claims = base64.urlsafe_b64encode(
        json.dumps({"sub": str(uuid.uuid4()), "role": "admin"}).encode()).decode()
    reply = http.get("/v1/users", headers={"x-jwt-payload": claims})
    assert reply.status_code == 401


def test_wrong_api_key_rejected(http, layout):
    real = layout.admin_key.read_text().strip()
    wrong = real[:-4] + ("aaaa" if not real.endswith("aaaa") else "bbbb")
    reply = http.post("/v1/auth/token", json={"api_key": wrong})
    assert reply.status_code == 401
    assert "invalid or revoked" in reply.json()["message"]


def test_malformed_api_key_rejected(http):
    reply = http.post("/v1/auth/token", json={"api_key": "not-a-key"})
    assert reply.status_code == 401
    assert "malformed" in reply.json()["message"]


def test_missing_api_key_named(http):
    reply = http.post("/v1/auth/token", json={})
    assert reply.status_code == 400
    assert reply.json()["code"] == 3
    assert reply.json()["message"].startswith("api_key is missing; send ")


def test_revoked_api_key_rejected(admin, http):
    me = admin.request("GET", "/v1/users/me")
    key = admin.request("POST", f"/v1/users/{me['user_id']}/api-keys", body={"name": "revoke"})
    assert http.post("/v1/auth/token", json={"api_key": key["api_key"]}).status_code == 200
    admin.request("DELETE", f"/v1/users/{me['user_id']}/api-keys/{key['key_id']}")
    reply = http.post("/v1/auth/token", json={"api_key": key["api_key"]})
    assert reply.status_code == 401


def test_unknown_project_not_found(admin):
    missing = str(uuid.uuid4())
    with pytest.raises(ApiError) as failure:
        admin.request("GET", f"/v1/projects/{missing}")
    assert "HTTP 404" in str(failure.value)
    assert missing in str(failure.value)


def test_invalid_project_id_is_invalid_argument(admin):
    with pytest.raises(ApiError) as failure:
        admin.request("GET", "/v1/projects/not-a-uuid")
    assert "HTTP 400" in str(failure.value)
    assert "'not-a-uuid' is not a UUID" in str(failure.value)


def test_unknown_run_report_not_found(admin):
    with pytest.raises(ApiError) as failure:
        admin.report(str(uuid.uuid4()))
    assert "HTTP 404" in str(failure.value)


def test_viewer_cannot_create_project(make_user):
    viewer, _ = make_user("viewer")
    with pytest.raises(ApiError) as failure:
        viewer.request("POST", "/v1/projects", body={"name": "nope"})
    assert "HTTP 403" in str(failure.value)
    # The call-level policy (or, without the mesh, the service) names the role.
    assert "viewer" in str(failure.value)
    assert "maintainer" in str(failure.value)


def test_non_member_cannot_see_project(make_user, project):
    maintainer, _ = make_user("maintainer")
    with pytest.raises(ApiError) as failure:
        maintainer.request("GET", f"/v1/projects/{project['project_id']}")
    assert "HTTP 404" in str(failure.value)


def test_viewer_member_reads_but_cannot_upload(admin, make_user, project):
    viewer, user = make_user("viewer")
    admin.request("POST", f"/v1/projects/{project['project_id']}/members",
                  body={"user_id": user["user_id"], "role": "MEMBER_ROLE_VIEWER"})
    assert viewer.request("GET", f"/v1/projects/{project['project_id']}")["name"] == project["name"]
    with pytest.raises(ApiError) as failure:
        viewer.upload(project["project_id"], "x.tar.gz", b"\x1f\x8b")
    assert "HTTP 403" in str(failure.value)


def _tar(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _symlink_tar(name: str, target: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("ok.py")
        info.size = 2
        archive.addfile(info, io.BytesIO(b"x\n"))
        link = tarfile.TarInfo(name)
        link.type = tarfile.SYMTYPE
        link.linkname = target
        archive.addfile(link)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (_tar({"/etc/passwd.py": b"x = 1\n"}), "absolute_path"),
        (_tar({"../escape.py": b"x = 1\n"}), "path_traversal"),
        (_symlink_tar("link.py", "../../etc/passwd"), "link_escape"),
        (b"this is not an archive", "unknown_format"),
        (_tar({"a.py": b"x = 1\n"})[:40], "corrupt"),
    ],
    ids=["absolute", "dotdot", "symlink", "not-an-archive", "truncated"],
)
def test_hostile_archive_rejected_with_code(admin, project, content, code):
    with pytest.raises(ApiError) as failure:
        admin.upload(project["project_id"], "hostile.tar.gz", content)
    message = str(failure.value)
    assert "HTTP 400" in message
    assert f"({code})" in message
    archives = admin.request("GET", f"/v1/projects/{project['project_id']}/runs")
    assert archives.get("runs", []) == []


def test_archive_from_other_project_cannot_start_run(admin, project):
    other = admin.request("POST", "/v1/projects", body={"name": f"other-{uuid.uuid4().hex[:6]}"})
    archive = admin.upload(other["project_id"], "a.tar.gz", _tar({"a.py": b"x = 1\n"}))
    with pytest.raises(ApiError) as failure:
        admin.start_run(project["project_id"], archive["archive_id"])
    assert "HTTP 404" in str(failure.value)
    assert archive["archive_id"] in str(failure.value)


def test_internal_method_not_routed(http, admin):
    token = json.loads(admin.token_file.read_text())["access_token"]
    reply = http.post("/aiswa.projects.v1.ProjectsService/ReadArchive",
                      headers={"authorization": f"Bearer {token}",
                               "content-type": "application/grpc"}, content=b"")
    # Envoy answers a gRPC request with a gRPC status: UNIMPLEMENTED (12).
    assert reply.headers["grpc-status"] == "12"
    assert "no such API method" in reply.headers["grpc-message"]
    rest = http.get("/v1/archives/x:read", headers={"authorization": f"Bearer {token}"})
    assert rest.status_code == 404


def test_roadmap_of_another_projects_run(admin):
    first = admin.request("POST", "/v1/projects", body={"name": f"test-{uuid.uuid4().hex[:8]}"})
    second = admin.request("POST", "/v1/projects", body={"name": f"test-{uuid.uuid4().hex[:8]}"})
    archive = admin.upload(first["project_id"], "json.tar.gz", pack_python([STDLIB / "json"]))
    run = admin.start_run(first["project_id"], archive["archive_id"])
    assert wait_run(admin, run["run_id"], timeout=120)["state"] == "RUN_STATE_COMPLETED"
    with pytest.raises(ApiError) as error:
        admin.roadmap(second["project_id"], run["run_id"])
    message = str(error.value)
    assert "HTTP 404" in message
    assert (f"no roadmap for run {run['run_id']} in project {second['project_id']}: the run "
            "belongs to another project, or it has not completed yet") in message
