"""OpenBao's HTTP API and the mesh PKI configuration that the root token applies.

The mesh PKI is a root CA in ``pki``, an intermediate in ``pki_int`` and, per
workload, a PKI role, an ACL policy and an AppRole that together allow
issuing that workload's identity and nothing else.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from pathlib import Path
from typing import Any

import httpx

from .envoy_sidecar import identity_dns, identity_uri

log = logging.getLogger("aiswa.openbao")

ROOT_MOUNT = "pki"
INTERMEDIATE_MOUNT = "pki_int"
ROOT_COMMON_NAME = "aiswa mesh root"
INTERMEDIATE_COMMON_NAME = "aiswa mesh intermediate"
ROOT_TTL = "87600h"  # 10 years
INTERMEDIATE_TTL = "43800h"  # 5 years
# An AppRole login returns a periodic service token: it lives while its
# holder renews it within this period, and the leases it obtained live with it.
WORKLOAD_TOKEN_PERIOD = "10m"
# A secret id is delivered response-wrapped to one process, which logs in
# with it once and soon (see OpenBao.bootstrap_payload).
SECRET_ID_TTL = "5m"
REQUEST_TIMEOUT_SECONDS = 10.0


class OpenBaoError(RuntimeError):
    """An OpenBao API request that failed, with its HTTP status and OpenBao's error messages."""

    def __init__(self, method: str, path: str, status: int, errors: list[str]) -> None:
        detail = "; ".join(errors) or "no error message"
        super().__init__(f"OpenBao {method} /v1/{path} failed with HTTP {status}: {detail}")
        self.status = status
        self.errors = errors


class ApiClient:
    """A small client for OpenBao's HTTP API that verifies the listener with the local CA."""

    def __init__(self, address: str, ca_cert: Path, token: str | None, *,
                 timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        context = ssl.create_default_context(cafile=str(ca_cert))
        headers = {"X-Vault-Token": token} if token else {}
        # trust_env=False: proxy variables must never route loopback traffic elsewhere.
        self._http = httpx.Client(base_url=f"{address}/v1/", verify=context, headers=headers,
                                  timeout=timeout, trust_env=False)

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.close()

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                wrap_ttl: str | None = None) -> dict[str, Any] | None:
        """Send a request and return the decoded JSON reply.

        Returns None for 204 and for a 404 without error messages, which is
        what OpenBao returns for a read of a path that contains nothing.
        ``wrap_ttl`` asks OpenBao to wrap the reply in a single-use token.
        """
        headers = {"X-Vault-Wrap-TTL": wrap_ttl} if wrap_ttl else None
        reply = self._http.request(method, path, json=body, headers=headers)
        if reply.status_code == 204:
            return None
        payload = reply.json() if reply.content else {}
        if reply.status_code == 404 and not payload.get("errors"):
            return None
        if reply.status_code >= 400:
            raise OpenBaoError(method, path, reply.status_code, payload.get("errors", []))
        return payload

    def get_text(self, path: str) -> str:
        reply = self._http.get(path)
        if reply.status_code >= 400:
            raise OpenBaoError("GET", path, reply.status_code, [reply.text[:200]])
        return reply.text


def wait_for(request, timeout: float, message: str):  # type: ignore[no-untyped-def]
    """Call ``request`` until it returns without error, or raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return request()
        except (httpx.TransportError, OpenBaoError) as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{message} within {timeout:.0f} s (last error: {exc})") from exc
        time.sleep(0.2)


def reply_data(reply: dict[str, Any] | None) -> dict[str, Any]:
    """Return the ``data`` object of an OpenBao reply, or an empty dict when there is none."""
    return (reply or {}).get("data") or {}


# --- PKI and auth configuration, with the root token ---------------------


def ensure_mount(client: ApiClient, path: str, max_lease_ttl: str) -> None:
    mounts = reply_data(client.request("GET", "sys/mounts"))
    if f"{path}/" not in mounts:
        client.request("POST", f"sys/mounts/{path}",
                       {"type": "pki", "config": {"max_lease_ttl": max_lease_ttl}})
        log.info("mounted the PKI secrets engine at %s/", path)
    else:
        client.request("POST", f"sys/mounts/{path}/tune", {"max_lease_ttl": max_lease_ttl})


def has_issuer(client: ApiClient, mount: str) -> bool:
    issuers = client.request("LIST", f"{mount}/issuers")
    return bool(issuers and issuers["data"].get("keys"))


def ensure_root(client: ApiClient) -> None:
    ensure_mount(client, ROOT_MOUNT, ROOT_TTL)
    if has_issuer(client, ROOT_MOUNT):
        return
    client.request("POST", f"{ROOT_MOUNT}/root/generate/internal", {
        "common_name": ROOT_COMMON_NAME,
        "issuer_name": "mesh-root",
        "key_type": "ec",
        "key_bits": 256,
        "ttl": ROOT_TTL,
    })
    log.info("generated the mesh root CA %r in %s/", ROOT_COMMON_NAME, ROOT_MOUNT)


def ensure_intermediate(client: ApiClient) -> None:
    ensure_mount(client, INTERMEDIATE_MOUNT, INTERMEDIATE_TTL)
    if has_issuer(client, INTERMEDIATE_MOUNT):
        return
    reply = client.request("POST", f"{INTERMEDIATE_MOUNT}/intermediate/generate/internal", {
        "common_name": INTERMEDIATE_COMMON_NAME,
        "key_type": "ec",
        "key_bits": 256,
    })
    csr = reply_data(reply)["csr"]
    signed = reply_data(client.request("POST", f"{ROOT_MOUNT}/root/sign-intermediate", {
        "csr": csr,
        "common_name": INTERMEDIATE_COMMON_NAME,
        "ttl": INTERMEDIATE_TTL,
        # The intermediate signs only leaf certificates.
        "max_path_length": 0,
        "format": "pem",
    }))
    # Importing the root with the intermediate lets issue replies carry the
    # whole chain up to the root in ca_chain.
    bundle = signed["certificate"].strip() + "\n" + signed["issuing_ca"].strip() + "\n"
    client.request("POST", f"{INTERMEDIATE_MOUNT}/intermediate/set-signed", {"certificate": bundle})
    client.request("POST", f"{INTERMEDIATE_MOUNT}/config/auto-tidy", {
        "enabled": True,
        "tidy_cert_store": True,
        "tidy_revoked_certs": True,
        "safety_buffer": "1h",
        "interval_duration": "1h",
    })
    log.info("generated the mesh intermediate CA %r in %s/, signed by the root",
             INTERMEDIATE_COMMON_NAME, INTERMEDIATE_MOUNT)


def ensure_approle(client: ApiClient) -> None:
    methods = reply_data(client.request("GET", "sys/auth"))
    if "approle/" not in methods:
        client.request("POST", "sys/auth/approle", {"type": "approle"})
        log.info("enabled the AppRole auth method")


def write_workload_role(client: ApiClient, workload: str, namespace: str, ttl: str) -> None:
    client.request("POST", f"{INTERMEDIATE_MOUNT}/roles/{workload}", {
        "issuer_ref": "default",
        "ttl": ttl,
        "max_ttl": ttl,
        # DNS names and the common name: exactly the workload's DNS SAN.
        "allowed_domains": [identity_dns(workload, namespace)],
        "allow_bare_domains": True,
        "allow_subdomains": False,
        "allow_glob_domains": False,
        "allowed_domains_template": False,
        "allow_wildcard_certificates": False,
        "allow_localhost": False,
        "allow_any_name": False,
        "enforce_hostnames": True,
        "cn_validations": ["hostname"],
        # URI SANs: exactly the workload's SPIFFE id. The value has no "*", so
        # the role's glob match is an exact match.
        "allowed_uri_sans": [identity_uri(workload, namespace)],
        "allowed_uri_sans_template": False,
        "allow_ip_sans": False,
        "allowed_other_sans": [],
        "allowed_serial_numbers": [],
        "allowed_user_ids": [],
        "server_flag": True,
        "client_flag": True,
        "code_signing_flag": False,
        "email_protection_flag": False,
        "key_type": "ec",
        "key_bits": 256,
        "key_usage": ["DigitalSignature"],
        "ext_key_usage": [],
        "require_cn": True,
        # The lifetime comes from ttl alone. A requested not_after, or a
        # not_before further back than the default backdating, is rejected.
        "not_after_bound": "ttl-limited",
        "not_before_bound": "duration",
        "basic_constraints_valid_for_non_ca": False,
        "generate_lease": False,
        "no_store": False,
    })


def write_workload_policy(client: ApiClient, workload: str, namespace: str,
                          extra_paths: dict[str, Any] | None = None) -> None:
    # The role alone would still accept an e-mail SAN under the allowed
    # domain (alt_names=x@<dns name>) or exclude_cn_from_sans, as checked
    # with OpenBao 2.7.2. So the policy also lists the only parameters a
    # request may have, requires both names and fixes their values.
    policy = {"path": {f"{INTERMEDIATE_MOUNT}/issue/{workload}": {
        "capabilities": ["create", "update"],
        "required_parameters": ["common_name", "uri_sans"],
        "allowed_parameters": {
            "common_name": [identity_dns(workload, namespace)],
            "uri_sans": [identity_uri(workload, namespace)],
            "ttl": [],
            "private_key_format": ["pkcs8"],
        },
    },
        # The agent and the app keep their periodic token alive.
        "auth/token/renew-self": {"capabilities": ["update"]},
        "auth/token/revoke-self": {"capabilities": ["update"]},
        **(extra_paths or {})}}
    client.request("PUT", f"sys/policies/acl/mesh-{workload}", {"policy": json.dumps(policy)})


def write_workload_approle(client: ApiClient, workload: str, bound_cidrs: list[str]) -> None:
    client.request("POST", f"auth/approle/role/{workload}", {
        "token_policies": [f"mesh-{workload}"],
        "token_no_default_policy": True,
        "token_type": "service",
        "token_period": WORKLOAD_TOKEN_PERIOD,
        "token_bound_cidrs": bound_cidrs,
        "secret_id_bound_cidrs": bound_cidrs,
        "bind_secret_id": True,
        # Every secret id logs in once: a process that loses its token is
        # restarted and gets a new one. No secret id is stored anywhere.
        "secret_id_ttl": SECRET_ID_TTL,
        "secret_id_num_uses": 1,
    })
