"""OpenBao's Kubernetes auth method for the cluster layout, rendered from mesh/topology.yaml.

Locally each workload logs in with its own AppRole. On Kubernetes it logs in
with its service account token instead (``POST auth/kubernetes/login`` with
``role`` and ``jwt``), and OpenBao checks the token with the Kubernetes API
server's TokenReview API. Each role grants the same policy and the same
kind of token as the workload's AppRole:

- role ``W`` for every workload W with a mesh identity (the gateway and each
  entry of ``workloads``): service account ``W`` in the topology's namespace,
  policy ``mesh-W``, a periodic service token with the AppRole's period;
- role ``W-migrate`` for every workload with a ``database``: service account
  ``W-migrate``, policy ``W-migrate``, the TTLs of the migrate AppRole.

The policies themselves are written by ``OpenBao.configure_pki`` and
``OpenBao.configure_secrets``, as in the local layout; this module only binds
service accounts to them, and refuses to write roles whose policy is missing.

Command line::

    python -m aiswa_mesh.kubernetes_auth --address https://openbao.aiswa.svc:8200 \\
        --ca-cert openbao-ca.pem --token-file root-token \\
        --kubernetes-host https://kubernetes.default.svc --kubernetes-ca kubernetes-ca.pem \\
        [--token-reviewer-jwt-file FILE] [--audience openbao] [--topology mesh/topology.yaml]
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
from cryptography import x509

from ._openbao_pki import WORKLOAD_TOKEN_PERIOD, ApiClient, OpenBaoError, reply_data
from ._openbao_secrets import MIGRATE_TOKEN_MAX_TTL, MIGRATE_TOKEN_TTL, migrate_approle

log = logging.getLogger("aiswa.openbao")

KUBERNETES_MOUNT = "kubernetes"
# The audience that the workloads' projected service account tokens carry
# (serviceAccountToken.audience in the pod spec). A token for the Kubernetes
# API's own audience is not accepted by these roles.
DEFAULT_AUDIENCE = "openbao"
# Kubernetes service account names and namespaces used here are DNS labels.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def identity_workloads(topology: Mapping[str, Any]) -> list[str]:
    """Return the workloads with a mesh identity: the gateway, then the topology's workloads.

    This is the list that ``Mesh.bootstrap`` passes to ``configure_pki``.
    """
    names = ["gateway"] if "gateway" in topology else []
    names += [name for name in topology["workloads"] if name not in names]
    return names


def workload_policy(workload: str) -> str:
    """Return the name of the ACL policy that ``configure_pki`` writes for ``workload``."""
    return f"mesh-{workload}"


def _check_label(value: str, kind: str) -> str:
    if not isinstance(value, str) or not _DNS_LABEL.match(value):
        raise ValueError(f"invalid {kind} {value!r} in the topology: expected a DNS label "
                         "(lowercase letters, digits and '-', at most 63 characters)")
    return value


def _role_body(service_account: str, namespace: str, policy: str, audience: str,
               token: dict[str, Any]) -> dict[str, Any]:
    # OpenBao keeps the stored value of a field that an update leaves out, so
    # every field is written, and a rerun resets a role changed by hand.
    return {
        "bound_service_account_names": [service_account],
        "bound_service_account_namespaces": [namespace],
        "bound_service_account_namespace_selector": "",
        "audience": audience,
        "alias_name_source": "serviceaccount_uid",
        "token_policies": [policy],
        "token_no_default_policy": True,
        "token_type": "service",
        # Pod addresses change, so tokens are not bound to CIDRs as the
        # local AppRoles' tokens are (127.0.0.0/8).
        "token_bound_cidrs": [],
        "token_num_uses": 0,
        "token_explicit_max_ttl": 0,
        **token,
    }


def render_roles(topology: Mapping[str, Any], *,
                 audience: str = DEFAULT_AUDIENCE) -> dict[str, dict[str, Any]]:
    """Render the Kubernetes auth roles of ``topology`` as a dict from role name to body.

    Each body is the request body of ``POST auth/kubernetes/role/<name>``. Raises
    ValueError for a namespace or workload name that is not a valid
    Kubernetes name.
    """
    if not audience:
        raise ValueError("the audience must not be empty, because a role without one accepts "
                         "tokens for any audience, including the Kubernetes API's own")
    namespace = _check_label(topology["namespace"], "namespace")
    workload_token = {"token_period": WORKLOAD_TOKEN_PERIOD, "token_ttl": 0, "token_max_ttl": 0}
    migrate_token = {"token_period": 0, "token_ttl": MIGRATE_TOKEN_TTL,
                     "token_max_ttl": MIGRATE_TOKEN_MAX_TTL}
    roles: dict[str, dict[str, Any]] = {}
    for workload in identity_workloads(topology):
        _check_label(workload, "service account name")
        roles[workload] = _role_body(workload, namespace, workload_policy(workload), audience,
                                     workload_token)
    for workload, spec in topology["workloads"].items():
        if "database" not in (spec or {}):
            continue
        # The migrate AppRole's name is also its policy's name.
        name = _check_label(migrate_approle(workload), "service account name")
        roles[name] = _role_body(name, namespace, name, audience, migrate_token)
    return roles


def render_config(kubernetes_host: str, kubernetes_ca_pem: str,
                  token_reviewer_jwt: str | None = None) -> dict[str, Any]:
    """Return the body of ``POST auth/kubernetes/config``.

    Without ``token_reviewer_jwt``, OpenBao running in a pod sends its own
    service account token (reread every minute) as the bearer of each
    TokenReview, so that service account needs the ``system:auth-delegator``
    ClusterRole. With it, OpenBao sends that token and reads nothing from its
    pod. The API server's CA is always the given one.
    """
    url = urlparse(kubernetes_host)
    if url.scheme != "https" or not url.hostname:
        raise ValueError(f"invalid Kubernetes API URL {kubernetes_host!r}: expected an https:// "
                         "URL of the API server, such as https://kubernetes.default.svc")
    try:
        x509.load_pem_x509_certificates(kubernetes_ca_pem.encode())
    except ValueError as exc:
        raise ValueError(f"the Kubernetes CA is not a PEM certificate: {exc}") from None
    config: dict[str, Any] = {
        "kubernetes_host": kubernetes_host.rstrip("/"),
        # OpenBao requires a newline after every PEM line.
        "kubernetes_ca_cert": kubernetes_ca_pem.strip() + "\n",
        "disable_local_ca_jwt": token_reviewer_jwt is not None,
    }
    if token_reviewer_jwt is not None:
        config["token_reviewer_jwt"] = token_reviewer_jwt
    # NOTE: the in-pod path (no reviewer token) is not exercised by the tests,
    # which run OpenBao outside Kubernetes.
    return config


# --- applying it, with a token that may configure auth methods -------------


class MissingPolicyError(RuntimeError):
    """Error raised for roles whose ACL policy does not exist in OpenBao yet."""


def missing_policies(client: ApiClient, roles: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Return the policies that ``roles`` grant and OpenBao does not have, sorted."""
    granted = {policy for body in roles.values() for policy in body["token_policies"]}
    return sorted(policy for policy in granted
                  if client.request("GET", f"sys/policies/acl/{policy}") is None)


def ensure_kubernetes_auth(client: ApiClient) -> None:
    methods = reply_data(client.request("GET", "sys/auth"))
    if f"{KUBERNETES_MOUNT}/" not in methods:
        client.request("POST", f"sys/auth/{KUBERNETES_MOUNT}", {
            "type": "kubernetes",
            "description": "service account logins of the mesh workloads",
        })
        log.info("enabled the Kubernetes auth method at auth/%s/", KUBERNETES_MOUNT)


def configure_kubernetes_auth(client: ApiClient, topology: Mapping[str, Any], *,
                              kubernetes_host: str, kubernetes_ca_pem: str,
                              token_reviewer_jwt: str | None = None,
                              audience: str = DEFAULT_AUDIENCE) -> list[str]:
    """Enable and configure the Kubernetes auth method and write every role.

    Returns the role names. Raises MissingPolicyError before writing anything
    when a role's policy does not exist, because a login to such a role would
    return a token without rights. Roles of workloads that left the topology
    stay in OpenBao until someone deletes them, as the AppRoles do.
    """
    roles = render_roles(topology, audience=audience)
    config = render_config(kubernetes_host, kubernetes_ca_pem, token_reviewer_jwt)
    missing = missing_policies(client, roles)
    if missing:
        raise MissingPolicyError(
            f"OpenBao has no ACL policy {', '.join(missing)}. Configure the mesh PKI and the "
            "secrets engines for this topology first (OpenBao.configure_pki and "
            "OpenBao.configure_secrets), then run this again")
    ensure_kubernetes_auth(client)
    client.request("POST", f"auth/{KUBERNETES_MOUNT}/config", config)
    for name, body in roles.items():
        client.request("POST", f"auth/{KUBERNETES_MOUNT}/role/{name}", body)
    log.info("configured Kubernetes auth roles %s for namespace %s at %s",
             ", ".join(roles), topology["namespace"], config["kubernetes_host"])
    return list(roles)


# --- command line ----------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aiswa_mesh.kubernetes_auth",
        # No prefix matching, so that no option such as --token takes a secret.
        allow_abbrev=False,
        description="Configure OpenBao's Kubernetes auth method so that each workload of the "
                    "topology logs in with its service account token.")
    parser.add_argument("--address", default=os.environ.get("AISWA_OPENBAO_ADDR"),
                        help="OpenBao's https:// URL (default: AISWA_OPENBAO_ADDR)")
    parser.add_argument("--ca-cert", type=Path, default=os.environ.get("AISWA_OPENBAO_CACERT"),
                        help="CA certificate that verifies OpenBao's listener "
                             "(default: AISWA_OPENBAO_CACERT)")
    parser.add_argument("--token-file", type=Path,
                        help="file with an OpenBao token that may enable auth methods, write "
                             "auth/kubernetes/* and read sys/policies/acl/*, such as the root "
                             "token")
    parser.add_argument("--kubernetes-host",
                        help="https:// URL of the Kubernetes API server, as OpenBao reaches it")
    parser.add_argument("--kubernetes-ca", type=Path,
                        help="PEM file with the CA certificate of the Kubernetes API server")
    parser.add_argument("--token-reviewer-jwt-file", type=Path, default=None,
                        help="file with the token that OpenBao sends to the TokenReview API. "
                             "Leave it out when OpenBao runs in a pod and may use its own "
                             "service account token")
    parser.add_argument("--audience", default=DEFAULT_AUDIENCE,
                        help="audience that the workloads' service account tokens must carry "
                             f"(default: {DEFAULT_AUDIENCE})")
    parser.add_argument("--topology", type=Path, default=None,
                        help="topology file (default: AISWA_TOPOLOGY or mesh/topology.yaml)")
    return parser


def _read_text(parser: argparse.ArgumentParser, path: Path, option: str, content: str) -> str:
    try:
        text = path.read_text()
    except OSError as exc:
        parser.error(f"cannot read {option} {path}: {exc.strerror}. Pass a file with {content}")
    if not text.strip():
        parser.error(f"{option} {path} is empty, but it must contain {content}")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    required = [
        ("--address", args.address, "OpenBao's URL, or set AISWA_OPENBAO_ADDR"),
        ("--ca-cert", args.ca_cert, "the CA of OpenBao's listener, or set AISWA_OPENBAO_CACERT"),
        ("--token-file", args.token_file, "a file with an OpenBao token (never the token itself)"),
        ("--kubernetes-host", args.kubernetes_host, "the URL of the Kubernetes API server"),
        ("--kubernetes-ca", args.kubernetes_ca, "the PEM file with the API server's CA"),
    ]
    for option, value, hint in required:
        if not value:
            parser.error(f"missing {option}: pass {hint}")
    if urlparse(args.address).scheme != "https":
        parser.error(f"invalid --address {args.address!r}: OpenBao's URL must start with https://")
    token = _read_text(parser, args.token_file, "--token-file", "an OpenBao token").strip()
    kubernetes_ca = _read_text(parser, args.kubernetes_ca, "--kubernetes-ca",
                               "the API server's CA certificate in PEM")
    reviewer = None
    if args.token_reviewer_jwt_file is not None:
        reviewer = _read_text(parser, args.token_reviewer_jwt_file, "--token-reviewer-jwt-file",
                              "a service account token with the system:auth-delegator role").strip()
    if not Path(args.ca_cert).is_file():
        parser.error(f"--ca-cert {args.ca_cert} not found; pass the CA of OpenBao's listener")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    from aiswa_runtime import load_topology

    topology = load_topology(str(args.topology) if args.topology else None)
    try:
        with ApiClient(args.address.rstrip("/"), Path(args.ca_cert), token) as client:
            roles = configure_kubernetes_auth(
                client, topology, kubernetes_host=args.kubernetes_host,
                kubernetes_ca_pem=kubernetes_ca, token_reviewer_jwt=reviewer,
                audience=args.audience)
    except (ValueError, MissingPolicyError, OpenBaoError) as exc:
        raise SystemExit(f"kubernetes_auth: {exc}") from None
    except httpx.HTTPError as exc:
        raise SystemExit(f"kubernetes_auth: cannot reach OpenBao at {args.address}: {exc}. "
                         "Check --address and --ca-cert") from None
    print(f"configured Kubernetes auth roles: {', '.join(roles)}")


if __name__ == "__main__":
    main()
