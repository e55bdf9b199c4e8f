"""Tests of OpenBao's Kubernetes auth method for the cluster layout (aiswa_mesh.kubernetes_auth).

The module starts its own OpenBao on free loopback ports in a temporary
folder, as test_openbao_pki.py does, and a fake Kubernetes API server (see
FakeKubernetesApi) that reviews service account tokens for OpenBao. None of
it needs the running platform.
"""

from __future__ import annotations

import copy
import datetime
import json
import ssl
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from aiswa_mesh._openbao_files import ensure_listener_tls
from aiswa_mesh._openbao_pki import WORKLOAD_TOKEN_PERIOD, ApiClient
from aiswa_mesh._openbao_secrets import workload_secret_paths, write_migrate_approle
from aiswa_mesh.kubernetes_auth import (
    DEFAULT_AUDIENCE,
    MIGRATE_TOKEN_MAX_TTL,
    MIGRATE_TOKEN_TTL,
    MissingPolicyError,
    configure_kubernetes_auth,
    identity_workloads,
    main,
    render_roles,
)
from conftest import private_openbao
from aiswa_mesh.openbao import OpenBao, identity_dns, identity_uri
from aiswa_runtime import load_topology

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = load_topology(str(ROOT / "mesh" / "topology.yaml"))
NAMESPACE = TOPOLOGY["namespace"]
ROLE_TTL = "1h"
# OpenBao's own service account, whose token it sends to the TokenReview API.
REVIEWER = (NAMESPACE, "openbao")


def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return int(duration[:-1]) * units[duration[-1]]


# --- the fake Kubernetes API ----------------------------------------------------


@dataclass(frozen=True)
class IssuedToken:
    namespace: str
    service_account: str
    uid: str
    audiences: tuple[str, ...]
    expires: datetime.datetime


class FakeKubernetesApi:
    """A stand-in for the Kubernetes API server's TokenReview API, on 127.0.0.1 with TLS.

    The real API server cannot run on this machine, so this fake issues
    service account tokens and serves ``POST
    /apis/authentication.k8s.io/v1/tokenreviews`` the way the API server does
    for them. It authenticates only tokens that it issued and has not
    revoked (kept in a dict), and only for an audience that the token carries.
    The request's bearer must be such a token for the API server's own
    audience, and its service account must be in ``reviewers``, which stands
    for a binding to the ``system:auth-delegator`` ClusterRole. It models no
    other API or RBAC rule.
    """

    ISSUER = "https://kubernetes.default.svc.cluster.local"
    API_AUDIENCE = ISSUER

    def __init__(self, folder: Path) -> None:
        # The same kind of CA and 127.0.0.1 server certificate as OpenBao's listener.
        self.tls = ensure_listener_tls(folder)
        self._signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._tokens: dict[str, IssuedToken] = {}
        self._uids: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self.reviewers: set[tuple[str, str]] = set()
        self.reviews: list[dict] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.tls.cert, self.tls.key)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def uid(self, namespace: str, service_account: str) -> str:
        with self._lock:
            return self._uids.setdefault((namespace, service_account), str(uuid.uuid4()))

    def issue(self, namespace: str, service_account: str, *,
              audiences: tuple[str, ...] = (DEFAULT_AUDIENCE,),
              lifetime: datetime.timedelta = datetime.timedelta(minutes=10)) -> str:
        """Return a signed projected service account token and remember it."""
        now = datetime.datetime.now(datetime.timezone.utc)
        uid = self.uid(namespace, service_account)
        token = self.sign(namespace, service_account, uid, audiences, now, now + lifetime,
                          self._signing_key)
        with self._lock:
            self._tokens[token] = IssuedToken(namespace, service_account, uid, audiences,
                                              now + lifetime)
        return token

    def sign(self, namespace: str, service_account: str, uid: str, audiences: tuple[str, ...],
             issued: datetime.datetime, expires: datetime.datetime,
             key: rsa.RSAPrivateKey) -> str:
        """Return a token with a projected service account token's claims, signed by ``key``."""
        claims = {
            "iss": self.ISSUER,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "aud": list(audiences),
            "iat": issued,
            "nbf": issued,
            "exp": expires,
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": service_account, "uid": uid},
            },
        }
        return jwt.encode(claims, key, algorithm="RS256")

    def revoke(self, token: str) -> None:
        """Forget ``token``, as the API server does when its service account is deleted."""
        with self._lock:
            del self._tokens[token]

    def review(self, bearer: str | None, body: dict) -> tuple[int, dict]:
        """Return the HTTP status and body of a TokenReview request."""
        caller = self._valid(bearer, (self.API_AUDIENCE,))
        if caller is None:
            return 401, _status(401, "Unauthorized", "Unauthorized")
        if (caller.namespace, caller.service_account) not in self.reviewers:
            user = f"system:serviceaccount:{caller.namespace}:{caller.service_account}"
            return 403, _status(403, "Forbidden",
                                f'tokenreviews.authentication.k8s.io is forbidden: User "{user}" '
                                'cannot create resource "tokenreviews"')
        spec = body.get("spec") or {}
        requested = tuple(spec.get("audiences") or (self.API_AUDIENCE,))
        token = self._valid(spec.get("token"), requested)
        with self._lock:
            self.reviews.append({"audiences": list(requested), "authenticated": token is not None,
                                 "service_account": token and token.service_account})
        status: dict = {"authenticated": False, "user": {},
                        "error": "[invalid bearer token, token lookup failed]"}
        if token is not None:
            status = {
                "authenticated": True,
                "user": {
                    "username": f"system:serviceaccount:{token.namespace}:"
                                f"{token.service_account}",
                    "uid": token.uid,
                    "groups": ["system:serviceaccounts",
                               f"system:serviceaccounts:{token.namespace}",
                               "system:authenticated"],
                },
                "audiences": [audience for audience in requested
                              if audience in token.audiences],
            }
        return 201, {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                     "metadata": {"creationTimestamp": None}, "spec": spec, "status": status}

    def _valid(self, token: str | None, audiences: tuple[str, ...]) -> IssuedToken | None:
        with self._lock:
            issued = self._tokens.get(token or "")
        if issued is None or issued.expires <= datetime.datetime.now(datetime.timezone.utc):
            return None
        if not set(audiences) & set(issued.audiences):
            return None
        return issued

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
                if self.path != "/apis/authentication.k8s.io/v1/tokenreviews":
                    self._reply(404, _status(404, "NotFound", "the server could not find "
                                                              "the requested resource"))
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                authorization = self.headers.get("Authorization") or ""
                bearer = authorization.removeprefix("Bearer ") if authorization else None
                self._reply(*api.review(bearer, body))

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        return Handler


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


# --- OpenBao ----------------------------------------------------------------------


def _configure_policies(bao: OpenBao, topology: dict) -> None:
    """Write the mesh-W and W-migrate policies and AppRoles as Mesh.bootstrap does.

    configure_secrets also needs PostgreSQL and RabbitMQ, so the migrate
    AppRoles are written on their own, without the database roles.
    """
    extra = {name: workload_secret_paths(topology, name) for name in topology["workloads"]}
    bao.configure_pki(identity_workloads(topology), topology["namespace"], ROLE_TTL,
                      extra_paths=extra)
    with _api(bao) as client:
        for name, spec in topology["workloads"].items():
            if "database" in spec:
                write_migrate_approle(client, name, ["127.0.0.0/8"])


@pytest.fixture(scope="module")
def kubernetes(tmp_path_factory) -> Iterator[FakeKubernetesApi]:
    api = FakeKubernetesApi(tmp_path_factory.mktemp("kubernetes-tls"))
    api.reviewers.add(REVIEWER)
    api.start()
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture(scope="module")
def bao(tmp_path_factory, kubernetes) -> Iterator[OpenBao]:
    """A private OpenBao with the mesh policies and the Kubernetes auth method from the CLI."""
    with private_openbao(tmp_path_factory) as server:
        bao = server.bao
        _configure_policies(bao, TOPOLOGY)
        reviewer_file = bao.root / "token-reviewer-jwt"
        reviewer_file.write_text(kubernetes.issue(*REVIEWER, audiences=(kubernetes.API_AUDIENCE,),
                                                  lifetime=datetime.timedelta(hours=1)))
        applied = subprocess.run(
            [sys.executable, "-m", "aiswa_mesh.kubernetes_auth", "--address", bao.address,
             "--ca-cert", str(bao.ca_cert), "--token-file", str(bao.root_token_path),
             "--kubernetes-host", kubernetes.url, "--kubernetes-ca", str(kubernetes.tls.ca_cert),
             "--token-reviewer-jwt-file", str(reviewer_file),
             "--topology", str(ROOT / "mesh" / "topology.yaml")],
            capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
        )
        assert applied.returncode == 0, applied.stderr
        yield bao


def _api(bao: OpenBao) -> ApiClient:
    return ApiClient(bao.address, bao.ca_cert, bao.root_token_path.read_text().strip())


def _client(bao: OpenBao, token: str | None = None) -> httpx.Client:
    headers = {"X-Vault-Token": token} if token else {}
    return httpx.Client(base_url=f"{bao.address}/v1/", headers=headers, trust_env=False,
                        verify=ssl.create_default_context(cafile=str(bao.ca_cert)), timeout=10)


def _login(bao: OpenBao, role: str, token: str) -> httpx.Response:
    with _client(bao) as client:
        return client.post("auth/kubernetes/login", json={"role": role, "jwt": token})


def _users_token(bao: OpenBao, kubernetes: FakeKubernetesApi) -> str:
    reply = _login(bao, "users", kubernetes.issue(NAMESPACE, "users"))
    assert reply.status_code == 200, reply.text
    return reply.json()["auth"]["client_token"]


def _lookup(bao: OpenBao, token: str) -> dict:
    with _api(bao) as client:
        return client.request("POST", "auth/token/lookup", {"token": token})["data"]


# --- the rendered roles -------------------------------------------------------------


def test_roles_cover_every_workload():
    roles = render_roles(TOPOLOGY)

    databases = [name for name, spec in TOPOLOGY["workloads"].items() if "database" in spec]
    expected = ["gateway", *TOPOLOGY["workloads"], *(f"{name}-migrate" for name in databases)]
    assert sorted(roles) == sorted(expected)
    assert "dashboard-migrate" not in roles
    for workload in ["gateway", *TOPOLOGY["workloads"]]:
        role = roles[workload]
        assert role["bound_service_account_names"] == [workload]
        assert role["bound_service_account_namespaces"] == [NAMESPACE]
        assert role["token_policies"] == [f"mesh-{workload}"]
        assert role["token_no_default_policy"] is True
        assert role["token_type"] == "service"
        assert role["token_period"] == WORKLOAD_TOKEN_PERIOD
        assert role["audience"] == DEFAULT_AUDIENCE
    for workload in databases:
        role = roles[f"{workload}-migrate"]
        assert role["bound_service_account_names"] == [f"{workload}-migrate"]
        assert role["bound_service_account_namespaces"] == [NAMESPACE]
        assert role["token_policies"] == [f"{workload}-migrate"]
        assert role["token_ttl"] == MIGRATE_TOKEN_TTL
        assert role["token_max_ttl"] == MIGRATE_TOKEN_MAX_TTL
        assert role["token_period"] == 0


def test_roles_follow_changed_topology():
    topology = copy.deepcopy(TOPOLOGY)
    topology["namespace"] = "staging"
    topology["workloads"]["billing"] = {"language": "python", "port": 50099,
                                        "database": "aiswa_billing"}
    topology["workloads"]["notifier"] = {"language": "python", "port": 50098}

    roles = render_roles(topology, audience="openbao-staging")

    assert roles["billing"]["bound_service_account_names"] == ["billing"]
    assert roles["billing"]["token_policies"] == ["mesh-billing"]
    assert roles["billing-migrate"]["token_policies"] == ["billing-migrate"]
    assert roles["notifier"]["token_policies"] == ["mesh-notifier"]
    assert "notifier-migrate" not in roles
    for name, role in roles.items():
        assert role["bound_service_account_namespaces"] == ["staging"], name
        assert role["audience"] == "openbao-staging", name


@pytest.mark.parametrize(("field", "value"), [
    ("namespace", "AISWA"),
    ("workload", "bad_name"),
    ("workload", "x" * 60),  # x...x-migrate is longer than 63 characters
])
def test_roles_reject_invalid_names(field, value):
    topology = copy.deepcopy(TOPOLOGY)
    if field == "namespace":
        topology["namespace"] = value
    else:
        topology["workloads"][value] = {"database": "aiswa_x"}

    with pytest.raises(ValueError, match="DNS label"):
        render_roles(topology)


def test_roles_reject_empty_audience():
    with pytest.raises(ValueError, match="audience"):
        render_roles(TOPOLOGY, audience="")


# --- logins -----------------------------------------------------------------------


def test_users_login_gets_only_mesh_users(bao, kubernetes):
    reply = _login(bao, "users", kubernetes.issue(NAMESPACE, "users"))

    assert reply.status_code == 200, reply.text
    auth = reply.json()["auth"]
    assert auth["policies"] == ["mesh-users"]
    assert auth["token_policies"] == ["mesh-users"]
    assert auth["lease_duration"] == _seconds(WORKLOAD_TOKEN_PERIOD)
    assert auth["renewable"] is True
    assert auth["metadata"]["service_account_name"] == "users"
    assert auth["metadata"]["service_account_namespace"] == NAMESPACE
    assert auth["metadata"]["service_account_uid"] == kubernetes.uid(NAMESPACE, "users")
    assert kubernetes.reviews[-1] == {"audiences": [DEFAULT_AUDIENCE], "authenticated": True,
                                      "service_account": "users"}


@pytest.mark.parametrize("workload", identity_workloads(TOPOLOGY))
def test_login_token_matches_approle_token(bao, kubernetes, workload):
    reply = _login(bao, workload, kubernetes.issue(NAMESPACE, workload))
    assert reply.status_code == 200, reply.text

    from_kubernetes = _lookup(bao, reply.json()["auth"]["client_token"])
    from_approle = _lookup(bao, bao.login(workload))

    for field in ("policies", "period", "type", "renewable", "num_uses", "explicit_max_ttl"):
        assert from_kubernetes.get(field) == from_approle.get(field), field
    assert from_kubernetes["policies"] == [f"mesh-{workload}"]


def test_users_token_issues_own_certificate(bao, kubernetes):
    token = _users_token(bao, kubernetes)

    with _client(bao, token) as client:
        reply = client.post("pki_int/issue/users", json={
            "common_name": identity_dns("users", NAMESPACE),
            "uri_sans": identity_uri("users", NAMESPACE),
        })

    assert reply.status_code == 200, reply.text
    leaf = x509.load_pem_x509_certificate(reply.json()["data"]["certificate"].encode())
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [identity_dns("users", NAMESPACE)]
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [
        identity_uri("users", NAMESPACE)]
    assert len(list(names)) == 2


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "pki_int/issue/projects", {
        "common_name": identity_dns("projects", NAMESPACE),
        "uri_sans": identity_uri("projects", NAMESPACE)}),
    ("GET", "database/creds/projects", None),
    ("GET", "database/creds/users-migrate", None),
    ("GET", "rabbitmq/creds/projects", None),
    ("GET", "sys/policies/acl/mesh-users", None),
    ("GET", "auth/kubernetes/role/users", None),
    ("POST", "auth/kubernetes/role/users", {"token_policies": ["root"]}),
])
def test_users_token_rejected_elsewhere(bao, kubernetes, method, path, body):
    token = _users_token(bao, kubernetes)

    with _client(bao, token) as client:
        reply = client.request(method, path, json=body)

    assert reply.status_code == 403, reply.text


@pytest.mark.parametrize(("namespace", "service_account", "role"), [
    (NAMESPACE, "projects", "users"),
    (NAMESPACE, "default", "users"),
    ("other", "users", "users"),
    (NAMESPACE, "users", "users-migrate"),
    (NAMESPACE, "users-migrate", "users"),
    (NAMESPACE, "users-migrate", "projects-migrate"),
])
def test_other_service_account_rejected(bao, kubernetes, namespace, service_account, role):
    reply = _login(bao, role, kubernetes.issue(namespace, service_account))

    assert reply.status_code == 403, reply.text
    assert "not authorized" in reply.text


def test_unknown_tokens_rejected(bao, kubernetes):
    revoked = kubernetes.issue(NAMESPACE, "users")
    kubernetes.revoke(revoked)
    now = datetime.datetime.now(datetime.timezone.utc)
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = kubernetes.sign(NAMESPACE, "users", kubernetes.uid(NAMESPACE, "users"),
                             (DEFAULT_AUDIENCE,), now, now + datetime.timedelta(minutes=5),
                             other_key)

    for token in (revoked, forged):
        reviews_before = len(kubernetes.reviews)

        reply = _login(bao, "users", token)

        assert reply.status_code == 403, reply.text
        # The claims are valid, so the rejection comes from the TokenReview.
        assert kubernetes.reviews[reviews_before:] == [
            {"audiences": [DEFAULT_AUDIENCE], "authenticated": False, "service_account": None}]


def test_expired_token_rejected(bao, kubernetes):
    token = kubernetes.issue(NAMESPACE, "users", lifetime=datetime.timedelta(minutes=-10))

    reply = _login(bao, "users", token)

    assert reply.status_code == 403, reply.text
    assert "token is expired" in reply.text


def test_api_audience_token_rejected(bao, kubernetes):
    # A token for the Kubernetes API itself, as pods get by default, cannot
    # log in, because the role requires the openbao audience.
    token = kubernetes.issue(NAMESPACE, "users", audiences=(kubernetes.API_AUDIENCE,))

    reply = _login(bao, "users", token)

    assert reply.status_code == 403, reply.text
    assert "invalid audience (aud) claim" in reply.text


def test_malformed_jwt_rejected(bao):
    reply = _login(bao, "users", "not-a-jwt")

    assert reply.status_code == 403, reply.text
    assert "auth" not in reply.json()


def test_users_migrate_login_gets_only_migrate_policy(bao, kubernetes):
    reply = _login(bao, "users-migrate", kubernetes.issue(NAMESPACE, "users-migrate"))

    assert reply.status_code == 200, reply.text
    auth = reply.json()["auth"]
    assert auth["policies"] == ["users-migrate"]
    assert auth["token_policies"] == ["users-migrate"]
    assert auth["lease_duration"] == _seconds(MIGRATE_TOKEN_TTL)


@pytest.mark.parametrize("workload", [name for name, spec in TOPOLOGY["workloads"].items()
                                      if "database" in spec])
def test_migrate_token_matches_approle_token(bao, kubernetes, workload):
    role = f"{workload}-migrate"
    reply = _login(bao, role, kubernetes.issue(NAMESPACE, role))
    assert reply.status_code == 200, reply.text

    from_kubernetes = _lookup(bao, reply.json()["auth"]["client_token"])
    from_approle = _lookup(bao, bao.login(role))

    for field in ("policies", "period", "type", "renewable", "num_uses", "explicit_max_ttl",
                  "creation_ttl"):
        assert from_kubernetes.get(field) == from_approle.get(field), field
    assert from_kubernetes["policies"] == [role]
    with _api(bao) as client:
        approle = client.request("GET", f"auth/approle/role/{role}")["data"]
        kubernetes_role = client.request("GET", f"auth/kubernetes/role/{role}")["data"]
    assert kubernetes_role["token_max_ttl"] == approle["token_max_ttl"]
    assert kubernetes_role["token_ttl"] == approle["token_ttl"]


def test_migrate_token_rejected_for_workload_paths(bao, kubernetes):
    reply = _login(bao, "users-migrate", kubernetes.issue(NAMESPACE, "users-migrate"))
    token = reply.json()["auth"]["client_token"]

    with _client(bao, token) as client:
        issue = client.post("pki_int/issue/users", json={
            "common_name": identity_dns("users", NAMESPACE),
            "uri_sans": identity_uri("users", NAMESPACE)})
        creds = client.get("database/creds/users")

    assert issue.status_code == 403, issue.text
    assert creds.status_code == 403, creds.text


# --- configuration ------------------------------------------------------------------


def test_stored_roles_match_rendered_roles(bao):
    with _api(bao) as client:
        for name, body in render_roles(TOPOLOGY).items():
            stored = client.request("GET", f"auth/kubernetes/role/{name}")["data"]
            assert stored["bound_service_account_names"] == body["bound_service_account_names"]
            assert stored["bound_service_account_namespaces"] == [NAMESPACE]
            assert stored["token_policies"] == body["token_policies"]
            assert stored["audience"] == DEFAULT_AUDIENCE
            assert stored["token_bound_cidrs"] == []


def test_stored_config_uses_given_api_server(bao, kubernetes):
    with _api(bao) as client:
        config = client.request("GET", "auth/kubernetes/config")["data"]

    assert config["kubernetes_host"] == kubernetes.url
    assert config["kubernetes_ca_cert"] == kubernetes.tls.ca_cert.read_text().strip() + "\n"
    assert config["disable_local_ca_jwt"] is True
    assert config["token_reviewer_jwt_set"] is True


def test_added_workload_logs_in(bao, kubernetes):
    topology = copy.deepcopy(TOPOLOGY)
    topology["workloads"]["billing"] = {"language": "python", "port": 50099,
                                        "database": "aiswa_billing"}
    _configure_policies(bao, topology)
    with _api(bao) as client:
        roles = configure_kubernetes_auth(
            client, topology, kubernetes_host=kubernetes.url,
            kubernetes_ca_pem=kubernetes.tls.ca_cert.read_text(),
            token_reviewer_jwt=kubernetes.issue(*REVIEWER, audiences=(kubernetes.API_AUDIENCE,)))

    assert "billing" in roles
    assert "billing-migrate" in roles
    billing = _login(bao, "billing", kubernetes.issue(NAMESPACE, "billing"))
    assert billing.status_code == 200, billing.text
    assert billing.json()["auth"]["policies"] == ["mesh-billing"]
    migrate = _login(bao, "billing-migrate", kubernetes.issue(NAMESPACE, "billing-migrate"))
    assert migrate.status_code == 200, migrate.text
    assert migrate.json()["auth"]["policies"] == ["billing-migrate"]


def test_missing_policy_writes_nothing(bao, kubernetes):
    topology = copy.deepcopy(TOPOLOGY)
    topology["workloads"]["ledger"] = {"language": "python", "port": 50097,
                                       "database": "aiswa_ledger"}

    with _api(bao) as client:
        with pytest.raises(MissingPolicyError, match="ledger-migrate, mesh-ledger"):
            configure_kubernetes_auth(client, topology, kubernetes_host=kubernetes.url,
                                      kubernetes_ca_pem=kubernetes.tls.ca_cert.read_text())
        assert client.request("GET", "auth/kubernetes/role/ledger") is None
        config = client.request("GET", "auth/kubernetes/config")["data"]
    assert config["token_reviewer_jwt_set"] is True
    assert config["disable_local_ca_jwt"] is True


def test_reviewer_without_auth_delegator_rejects_logins(bao, kubernetes):
    # OpenBao's service account needs system:auth-delegator. Without it the
    # API server rejects every TokenReview, so OpenBao rejects every login.
    outsider = (NAMESPACE, "not-a-reviewer")
    with _api(bao) as client:
        configure_kubernetes_auth(
            client, TOPOLOGY, kubernetes_host=kubernetes.url,
            kubernetes_ca_pem=kubernetes.tls.ca_cert.read_text(),
            token_reviewer_jwt=kubernetes.issue(*outsider, audiences=(kubernetes.API_AUDIENCE,)))
        try:
            reply = _login(bao, "users", kubernetes.issue(NAMESPACE, "users"))
        finally:
            configure_kubernetes_auth(
                client, TOPOLOGY, kubernetes_host=kubernetes.url,
                kubernetes_ca_pem=kubernetes.tls.ca_cert.read_text(),
                token_reviewer_jwt=kubernetes.issue(*REVIEWER,
                                                    audiences=(kubernetes.API_AUDIENCE,)))

    assert reply.status_code == 403, reply.text


# --- command line errors ---------------------------------------------------------------


def _cli_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    return capsys.readouterr().err


def _cli_args(bao: OpenBao, kubernetes: FakeKubernetesApi, **overrides: str | None) -> list[str]:
    values = {"--address": bao.address, "--ca-cert": str(bao.ca_cert),
              "--token-file": str(bao.root_token_path), "--kubernetes-host": kubernetes.url,
              "--kubernetes-ca": str(kubernetes.tls.ca_cert), **overrides}
    return [item for option, value in values.items() if value is not None
            for item in (option, value)]


@pytest.mark.parametrize(("option", "hint"), [
    ("--address", "AISWA_OPENBAO_ADDR"),
    ("--ca-cert", "AISWA_OPENBAO_CACERT"),
    ("--token-file", "never the token itself"),
    ("--kubernetes-host", "Kubernetes API server"),
    ("--kubernetes-ca", "API server's CA"),
])
def test_cli_names_missing_value(bao, kubernetes, capsys, monkeypatch, option, hint):
    monkeypatch.delenv("AISWA_OPENBAO_ADDR", raising=False)
    monkeypatch.delenv("AISWA_OPENBAO_CACERT", raising=False)

    error = _cli_error(capsys, _cli_args(bao, kubernetes, **{option: None}))

    assert f"missing {option}" in error
    assert hint in error


def test_cli_rejects_empty_token_file(bao, kubernetes, capsys, tmp_path):
    empty = tmp_path / "token"
    empty.write_text("\n")

    error = _cli_error(capsys, _cli_args(bao, kubernetes, **{"--token-file": str(empty)}))

    assert f"--token-file {empty} is empty" in error


def test_cli_rejects_missing_token_file(bao, kubernetes, capsys, tmp_path):
    missing = tmp_path / "no-such-token"

    error = _cli_error(capsys, _cli_args(bao, kubernetes, **{"--token-file": str(missing)}))

    assert f"cannot read --token-file {missing}" in error


def test_cli_rejects_plain_http_api_server(bao, kubernetes):
    host = kubernetes.url.replace("https://", "http://")

    with pytest.raises(SystemExit) as raised:
        main(_cli_args(bao, kubernetes, **{"--kubernetes-host": host}))

    assert "expected an https:// URL" in str(raised.value.code)


def test_cli_has_no_token_option(capsys):
    error = _cli_error(capsys, ["--token", "s.secret"])

    assert "unrecognized arguments" in error
