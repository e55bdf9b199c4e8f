"""Render the Envoy bootstrap of a workload's mTLS sidecar from mesh/topology.yaml.

A sidecar has two sides:

- Inbound (every workload except ``gateway``): one TLS listener that requires
  a client certificate issued under the mesh root. The network RBAC filter
  then closes the connection unless the peer's URI SAN is the identity of one
  of the workload's ``clients``, so a denied peer never opens an HTTP/2 stream.
  The HTTP connection manager replaces any ``l5d-client-id`` header with the
  verified peer's DNS SAN and forwards the call as plaintext HTTP/2 to the app.
- Outbound: one plaintext HTTP/2 listener on 127.0.0.1 per upstream. Its
  cluster opens mTLS to the upstream's sidecar with this workload's
  certificate and accepts only a server certificate under the mesh root whose
  URI SAN is exactly the upstream's identity.

Identities follow Linkerd: the URI SAN
``spiffe://root.linkerd.cluster.local/ns/<namespace>/sa/<service>`` and the
DNS SAN ``<service>.<namespace>.serviceaccount.identity.linkerd.cluster.local``.

Certificates come from path-based SDS. Two small SDS files, written next to
the bootstrap, name the files in the certificate folder, which Envoy watches
for moves. See :func:`write_certs_atomically` for how that folder must be
updated so that Envoy reloads a matching certificate and key without a
restart.
"""

from __future__ import annotations

import datetime
import os
import secrets
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .envoy_gateway import (
    _TYPE_PREFIX,
    Address,
    _endpoint,
    _envoy_address,
    _failure_limits,
    _socket_address,
    _status_is,
    envoy_binary,
)

GATEWAY = "gateway"
# The header that the service runtime reads the caller's identity from.
IDENTITY_HEADER = "l5d-client-id"
TRUST_DOMAIN = "root.linkerd.cluster.local"

# The certificate folder, in the layout of a Kubernetes secret volume:
#
#   certs_dir/..data     -> ..gen-<time>-<random>   (symbolic link, switched by one rename)
#   certs_dir/cert.pem   -> ..data/cert.pem         (leaf first, then intermediates)
#   certs_dir/key.pem    -> ..data/key.pem          (mode 0600)
#   certs_dir/ca.pem     -> ..data/ca.pem           (the mesh root)
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
CA_FILE = "ca.pem"
DATA_LINK = "..data"
GENERATION_PREFIX = "..gen-"

IDENTITY_SECRET = "mesh-identity"
TRUST_SECRET = "mesh-trust"
SDS_IDENTITY_FILE = "sds-identity.yaml"
SDS_TRUST_FILE = "sds-trust.yaml"

INBOUND_LISTENER = "inbound"
APP_CLUSTER = "inbound_app"
_SECRET_TYPE = _TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"


class Upstream(NamedTuple):
    """Address of one upstream: its sidecar's inbound host and port, and the local outbound port.

    ``local_port`` is a port on 127.0.0.1, or a UNIX socket's path for a
    caller outside the pod (the gateway's edge proxy).
    """

    host: str
    port: int
    local_port: int | Path


def identity_uri(service: str, namespace: str) -> str:
    """Return the URI SAN of ``<service>.<namespace>``, the way Linkerd writes it."""
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service}"


def identity_dns(service: str, namespace: str) -> str:
    """Return the DNS SAN of ``<service>.<namespace>``, the way Linkerd writes it."""
    return f"{service}.{namespace}.serviceaccount.identity.linkerd.cluster.local"


def expected_upstreams(topology: dict, workload: str) -> list[str]:
    """Return the workloads that ``workload`` calls, by the topology.

    For ``gateway`` these are the workloads that list ``gateway`` in their
    ``clients``. Raises ``ValueError`` for an unknown workload or for an
    upstream that does not accept ``workload`` as a client.
    """
    workloads: dict[str, dict[str, Any]] = topology["workloads"]
    if workload == GATEWAY:
        return [name for name, spec in workloads.items() if GATEWAY in spec.get("clients", [])]
    if workload not in workloads:
        raise ValueError(
            f"unknown workload {workload!r}; expected {GATEWAY!r} or one of "
            f"{sorted(workloads)} from the topology"
        )
    names = list(workloads[workload].get("upstreams", []))
    for name in names:
        if name not in workloads:
            raise ValueError(f"topology workload {workload!r} lists the unknown upstream {name!r}")
        if workload not in workloads[name].get("clients", []):
            raise ValueError(
                f"topology workload {workload!r} calls {name!r}, but {name!r} does not list "
                f"{workload!r} in its clients, so every call would be denied; fix the topology"
            )
    return names


def render_sidecar_config(
    topology: dict,
    workload: str,
    *,
    inbound: tuple[str, int] | None,
    app: tuple[str, int] | None,
    upstreams: dict[str, tuple[str, int, int | Path]],
    sds_dir: Path,
    admin: Address,
    access_log: Path,
) -> dict:
    """Build the Envoy bootstrap of ``workload``'s sidecar as a dict, ready to dump as YAML.

    ``inbound`` is the (host, port) of the mTLS listener and ``app`` the
    (host, port) of the app's plaintext gRPC server, both None for
    ``gateway``, which has no inbound side. ``upstreams`` maps each upstream
    workload to (its sidecar's inbound host, its inbound port, the local
    outbound port on 127.0.0.1 or a UNIX socket's path), and must name exactly
    the upstreams of :func:`expected_upstreams`. ``admin`` is a (host, port)
    or a UNIX socket's path. ``sds_dir`` contains the SDS files that
    :func:`render_sds_files` returns. Raises ``ValueError`` when the arguments
    disagree with the topology.
    """
    namespace = topology["namespace"]
    _check_sides(workload, inbound, app)
    routes = {name: Upstream(*address) for name, address in upstreams.items()}
    _check_upstreams(topology, workload, routes, inbound)

    listeners = []
    clusters = []
    if inbound is not None and app is not None:
        clients = topology["workloads"][workload].get("clients", [])
        listeners.append(_inbound_listener(workload, namespace, clients, inbound, sds_dir,
                                           access_log))
        clusters.append(_app_cluster(*app))
    for name, upstream in routes.items():
        listeners.append(_outbound_listener(workload, name, upstream.local_port, access_log))
        clusters.append(_outbound_cluster(namespace, name, upstream, sds_dir))

    return {
        "node": {"id": f"aiswa-sidecar-{workload}", "cluster": f"aiswa-{workload}"},
        "admin": {"address": _envoy_address(admin)},
        # Envoy 1.40 warns at start without a limit on downstream connections.
        # NOTE: 4096 is an estimate, far above what one local workload opens.
        "overload_manager": {
            "resource_monitors": [{
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": _TYPE_PREFIX + "envoy.extensions.resource_monitors."
                    "downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": 4096,
                },
            }],
        },
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def render_sds_files(certs_dir: Path) -> dict[str, dict]:
    """Build the path-based SDS files that point Envoy at ``certs_dir``, by file name.

    ``sds-identity.yaml`` contains the Secret ``mesh-identity`` (certificate
    chain and key) and ``sds-trust.yaml`` the Secret ``mesh-trust`` (the mesh
    root). Both set ``watched_directory`` to ``certs_dir``: Envoy re-reads
    their files when an entry is moved into ``certs_dir``, which is what the
    ``..data`` rename of :func:`write_certs_atomically` does. With it, Envoy
    also checks that the certificate and key did not change between its reads
    of the two files.
    """
    certs_dir = certs_dir.absolute()
    watched = {"path": str(certs_dir)}
    identity = {
        "@type": _SECRET_TYPE,
        "name": IDENTITY_SECRET,
        "tls_certificate": {
            "certificate_chain": {"filename": str(certs_dir / CERT_FILE)},
            "private_key": {"filename": str(certs_dir / KEY_FILE)},
            "watched_directory": watched,
        },
    }
    trust = {
        "@type": _SECRET_TYPE,
        "name": TRUST_SECRET,
        "validation_context": {
            "trusted_ca": {"filename": str(certs_dir / CA_FILE)},
            "watched_directory": watched,
        },
    }
    return {
        SDS_IDENTITY_FILE: {"resources": [identity]},
        SDS_TRUST_FILE: {"resources": [trust]},
    }


def write_sidecar_config(
    topology: dict,
    workload: str,
    *,
    path: Path,
    inbound: tuple[str, int] | None,
    app: tuple[str, int] | None,
    upstreams: dict[str, tuple[str, int, int | Path]],
    certs_dir: Path,
    admin: Address,
    access_log: Path,
) -> Path:
    """Render the sidecar bootstrap, write it to ``path`` as YAML and return ``path``.

    The SDS files go into the folder ``<path without suffix>-sds`` next to
    it. ``certs_dir`` must already contain the files that
    :func:`write_certs_atomically` writes when Envoy starts, because Envoy
    rejects a path-based SDS source whose files are missing.
    """
    sds_dir = path.parent / f"{path.stem}-sds"
    config = render_sidecar_config(
        topology,
        workload,
        inbound=inbound,
        app=app,
        upstreams=upstreams,
        sds_dir=sds_dir.absolute(),
        admin=admin,
        access_log=access_log,
    )
    # A newline in an argument would end the YAML comment early.
    command = shlex.join([sys.executable, *sys.argv]).replace("\n", " ")
    header = (
        f"# Generated by `{command}` with\n"
        "# aiswa_mesh.envoy_sidecar.render_sidecar_config from mesh/topology.yaml.\n"
        "# Edits are lost when the sidecar configuration is rendered again.\n"
    )
    sds_dir.mkdir(parents=True, exist_ok=True)
    for name, document in render_sds_files(certs_dir).items():
        # Envoy watches each SDS file for moves, so a replaced file is renamed into place.
        _write_file_atomically(
            sds_dir / name, (header + yaml.safe_dump(document, sort_keys=False)).encode(), 0o644
        )
    _write_file_atomically(
        path, (header + yaml.safe_dump(config, sort_keys=False)).encode(), 0o644
    )
    return path


def sidecar_command(
    config: Path, *, log_path: Path, log_level: str = "warn", concurrency: int = 2
) -> list[str]:
    """Return the command line that runs a sidecar from its rendered bootstrap ``config``.

    ``concurrency`` is the number of Envoy worker threads.
    """
    return [
        str(envoy_binary()), "-c", str(config),
        # Hot restart needs shared memory under one base id per Envoy, so
        # several sidecars on one host would collide on the default id.
        "--disable-hot-restart",
        # NOTE: 2 workers is an estimate for a sidecar of one Python process;
        # Envoy's default is one worker per CPU core.
        "--concurrency", str(concurrency),
        # Write access log lines within 1 s (Envoy's default is 10 s).
        "--file-flush-interval-msec", "1000",
        "--log-level", log_level,
        "--log-path", str(log_path),
    ]


# --- certificate files --------------------------------------------------------------


def write_certs_atomically(
    certs_dir: Path, cert_pem: str | bytes, key_pem: str | bytes, ca_pem: str | bytes
) -> Path:
    """Switch ``certs_dir`` to a new certificate chain, key and mesh root in one rename.

    This is the only update that the sidecar configuration supports. A writer
    in another language must take the same steps:

    1. Write ``cert.pem`` (the leaf first, then any intermediates),
       ``key.pem`` (mode 0600) and ``ca.pem`` into a new folder
       ``certs_dir/..gen-<unique>``. Writes inside that folder are not seen by
       Envoy, which watches only ``certs_dir`` itself.
    2. Create a symbolic link to that folder's name under a temporary name in
       ``certs_dir``, and ``rename(2)`` it onto ``certs_dir/..data``. That
       rename is the one move event that makes Envoy reload, and afterwards
       every path through ``..data`` resolves to the new files.
    3. Only on the first write, create the links ``cert.pem -> ..data/cert.pem``,
       ``key.pem -> ..data/key.pem`` and ``ca.pem -> ..data/ca.pem``.
    4. Delete generation folders older than the previous one. The previous one
       is kept for a reader that resolved ``..data`` just before the switch.

    Never rewrite ``cert.pem`` or ``key.pem`` in place: Envoy would not notice
    the change, and a reader between the two writes would see a mismatched
    pair. Raises ``ValueError`` when the key does not belong to the first
    certificate in ``cert_pem``. Returns the new generation folder.
    """
    cert_bytes, key_bytes, ca_bytes = (_as_bytes(pem) for pem in (cert_pem, key_pem, ca_pem))
    _check_key_matches(cert_bytes, key_bytes)
    certs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    previous = _current_generation_name(certs_dir)

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    generation = Path(tempfile.mkdtemp(prefix=f"{GENERATION_PREFIX}{stamp}-", dir=certs_dir))
    for name, data, mode in (
        (CERT_FILE, cert_bytes, 0o644),
        (KEY_FILE, key_bytes, 0o600),
        (CA_FILE, ca_bytes, 0o644),
    ):
        _write_new_file(generation / name, data, mode)
    _fsync_dir(generation)

    _replace_symlink(certs_dir / DATA_LINK, generation.name)
    for name in (CERT_FILE, KEY_FILE, CA_FILE):
        link = certs_dir / name
        target = f"{DATA_LINK}/{name}"
        if not (link.is_symlink() and os.readlink(link) == target):
            _replace_symlink(link, target)
    _fsync_dir(certs_dir)

    keep = {generation.name, previous}
    for entry in certs_dir.iterdir():
        if entry.name.startswith(GENERATION_PREFIX) and entry.name not in keep:
            _remove_generation(entry)
    return generation


def _as_bytes(pem: str | bytes) -> bytes:
    return pem.encode() if isinstance(pem, str) else pem


def _check_key_matches(cert_pem: bytes, key_pem: bytes) -> None:
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    public_format = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*public_format) != key.public_key().public_bytes(*public_format):
        raise ValueError(
            f"the private key does not belong to the certificate {cert.subject.rfc4514_string()!r} "
            f"(serial {cert.serial_number:x}); pass the key that was issued with it"
        )


def _current_generation_name(certs_dir: Path) -> str | None:
    try:
        return os.readlink(certs_dir / DATA_LINK)
    except (FileNotFoundError, OSError):
        return None


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _write_file_atomically(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        _write_new_file(temporary, data, mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _replace_symlink(link: Path, target: str) -> None:
    temporary = link.with_name(f"{link.name}.tmp-{secrets.token_hex(4)}")
    os.symlink(target, temporary)
    try:
        os.replace(temporary, link)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_generation(folder: Path) -> None:
    # A generation folder contains only the three files written above.
    for entry in folder.iterdir():
        entry.unlink()
    folder.rmdir()


# --- checks -------------------------------------------------------------------------


def _check_sides(workload: str, inbound: tuple[str, int] | None, app: tuple[str, int] | None) -> None:
    if workload == GATEWAY:
        if inbound is not None or app is not None:
            raise ValueError(
                f"the {GATEWAY!r} sidecar has no inbound side; pass inbound=None and app=None"
            )
    elif inbound is None or app is None:
        raise ValueError(
            f"the {workload!r} sidecar needs both the inbound listener address and the "
            "app's address; pass inbound=(host, port) and app=(host, port)"
        )


def _check_upstreams(
    topology: dict, workload: str, routes: dict[str, Upstream], inbound: tuple[str, int] | None
) -> None:
    expected = expected_upstreams(topology, workload)
    missing = sorted(set(expected) - set(routes))
    unknown = sorted(set(routes) - set(expected))
    if missing or unknown:
        raise ValueError(
            f"the upstreams of {workload!r} must be exactly {sorted(expected)} by the topology; "
            f"missing {missing}, not in the topology {unknown}"
        )
    local_ports = [upstream.local_port for upstream in routes.values()]
    if inbound is not None:
        local_ports.append(inbound[1])
    duplicates = sorted({port for port in local_ports if local_ports.count(port) > 1}, key=str)
    if duplicates:
        raise ValueError(
            f"the sidecar of {workload!r} would listen twice on the ports {duplicates}; "
            "give every outbound listener and the inbound listener its own port"
        )


# --- inbound ------------------------------------------------------------------------


def _inbound_listener(
    workload: str,
    namespace: str,
    clients: list[str],
    inbound: tuple[str, int],
    sds_dir: Path,
    access_log: Path,
) -> dict:
    connection_manager = {
        "@type": _TYPE_PREFIX + "envoy.extensions.filters.network.http_connection_manager."
        "v3.HttpConnectionManager",
        "stat_prefix": INBOUND_LISTENER,
        # gRPC needs HTTP/2, and the TLS context offers only h2 in ALPN.
        "codec_type": "HTTP2",
        "access_log": [_request_log(access_log, INBOUND_LISTENER)],
        "local_reply_config": _name_failing_hop(
            f"reported by the sidecar in front of {workload}: {workload} is not answering"),
        "route_config": {
            "name": INBOUND_LISTENER,
            "virtual_hosts": [{
                "name": "app",
                "domains": ["*"],
                # Envoy removes before it adds, so the app sees exactly one
                # l5d-client-id: the DNS SAN of the certificate that the TLS
                # handshake verified. Whatever the peer sent is dropped.
                # NOTE: a certificate with several DNS SANs would give a
                # comma-separated list here. Mesh certificates carry exactly one.
                "request_headers_to_remove": [IDENTITY_HEADER],
                "request_headers_to_add": [{
                    "header": {"key": IDENTITY_HEADER, "value": "%DOWNSTREAM_PEER_DNS_SAN%"},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }],
                "routes": [{
                    "match": {"prefix": "/"},
                    "route": {"cluster": APP_CLUSTER, **_grpc_deadline_route()},
                }],
            }],
        },
        "http_filters": [_router_filter()],
    }
    return {
        "name": INBOUND_LISTENER,
        "address": _socket_address(*inbound),
        # One JSON line per connection, also for those that the TLS handshake
        # or the RBAC filter rejects, which never reach the request log.
        "access_log": [_connection_log(access_log)],
        "filter_chains": [{
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": _TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3."
                    "DownstreamTlsContext",
                    # A peer that presents no certificate fails the handshake.
                    # Envoy's default accepts it, because the validation
                    # context checks only certificates that are presented.
                    "require_client_certificate": True,
                    "common_tls_context": {
                        **_tls_common(sds_dir),
                        "validation_context_sds_secret_config": _sds_secret(
                            TRUST_SECRET, sds_dir / SDS_TRUST_FILE
                        ),
                    },
                },
            },
            "filters": [
                _rbac_filter(namespace, clients),
                {
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": connection_manager,
                },
            ],
        }],
    }


def _rbac_filter(namespace: str, clients: list[str]) -> dict:
    """Allow connections only from the URI SANs of ``clients``: the first layer of authorization.

    The filter runs on the connection's first decrypted bytes, after the
    handshake verified the peer's chain, and closes the connection before the
    HTTP connection manager sees a stream. An ALLOW action denies whatever no
    policy matches, so an empty ``clients`` list denies every peer.
    """
    policies = {
        f"client-{client}": {
            "permissions": [{"any": True}],
            # Envoy compares principal_name with every URI SAN of the peer
            # certificate, then every DNS SAN, then the subject
            # (source/extensions/filters/common/rbac/matchers.cc). A spiffe://
            # URI can only equal a URI SAN, since DNS SANs the mesh CA issues
            # are host names and the subject is an "attribute=value" string.
            "principals": [{"authenticated": {"principal_name": {
                "exact": identity_uri(client, namespace),
            }}}],
        }
        for client in clients
    }
    return {
        "name": "envoy.filters.network.rbac",
        "typed_config": {
            "@type": _TYPE_PREFIX + "envoy.extensions.filters.network.rbac.v3.RBAC",
            # Counters appear as inbound_rbac.rbac.allowed and inbound_rbac.rbac.denied.
            "stat_prefix": "inbound_rbac.",
            "rules": {"action": "ALLOW", "policies": policies},
        },
    }


def _app_cluster(host: str, port: int) -> dict:
    return {
        "name": APP_CLUSTER,
        **_endpoint(APP_CLUSTER, (host, port)),
        # The app runs in the same pod, so a connection not open after 1 s
        # has failed (Envoy's default is 5 s).
        "connect_timeout": "1s",
        "typed_extension_protocol_options": _http2_options(keepalive=False),
    }


# --- outbound -----------------------------------------------------------------------


def _outbound_listener(workload: str, upstream: str, local_port: int | Path,
                       access_log: Path) -> dict:
    name = f"outbound_{upstream}"
    # Only the app in the same pod may send plaintext calls into the mesh. A
    # socket is for the edge proxy, whose group owns the socket's folder
    # (Mesh.edge_sockets).
    if isinstance(local_port, Path):
        address = _envoy_address(local_port, 0o660)
    else:
        address = _envoy_address(("127.0.0.1", local_port))
    return {
        "name": name,
        "address": address,
        "filter_chains": [{
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": _TYPE_PREFIX + "envoy.extensions.filters.network."
                    "http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": name,
                    # The app's gRPC client speaks HTTP/2 without TLS (h2c).
                    "codec_type": "HTTP2",
                    "access_log": [_request_log(access_log, name)],
                    "local_reply_config": _name_failing_hop(
                        f"reported by the {workload} sidecar, calling {upstream}"),
                    "route_config": {
                        "name": name,
                        "virtual_hosts": [{
                            "name": upstream,
                            "domains": ["*"],
                            "routes": [{
                                "match": {"prefix": "/"},
                                "route": {"cluster": name, **_grpc_deadline_route()},
                            }],
                        }],
                    },
                    "http_filters": [_router_filter()],
                },
            }],
        }],
    }


def _name_failing_hop(where: str) -> dict:
    """Return a local reply config that adds ``where`` and a next step to the sidecar's 503s.

    Envoy's text names no workload, and a call crosses two sidecars, so the
    caller could not tell which hop failed. For a gRPC call the text becomes
    grpc-message, and the gateway's transcoder passes it on to REST clients.
    The supervisor restarts a workload that fails, so the next step is a retry.
    """
    return {"mappers": [{
        "filter": {"status_code_filter": _status_is(503, "aiswa_sidecar.local_503")},
        "body_format_override": {"text_format_source": {
            "inline_string": f"%LOCAL_REPLY_BODY% ({where}; retry later)"}},
    }]}


def _outbound_cluster(namespace: str, upstream: str, address: Upstream, sds_dir: Path) -> dict:
    name = f"outbound_{upstream}"
    return {
        "name": name,
        **_endpoint(name, (address.host, address.port)),
        # Sidecars run on this host, so a connection not open after 2 s has
        # failed (Envoy's default is 5 s).
        "connect_timeout": "2s",
        "typed_extension_protocol_options": _http2_options(keepalive=True),
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3."
                "UpstreamTlsContext",
                # Names the expected server identity, as Linkerd does. The
                # inbound listener has one filter chain and ignores it.
                "sni": identity_dns(upstream, namespace),
                "common_tls_context": {
                    **_tls_common(sds_dir),
                    "combined_validation_context": {
                        # Only the upstream's own identity: another workload's
                        # valid mesh certificate fails the handshake, so a
                        # wrong address cannot receive this workload's calls.
                        "default_validation_context": {
                            "match_typed_subject_alt_names": [{
                                "san_type": "URI",
                                "matcher": {"exact": identity_uri(upstream, namespace)},
                            }],
                        },
                        "validation_context_sds_secret_config": _sds_secret(
                            TRUST_SECRET, sds_dir / SDS_TRUST_FILE
                        ),
                    },
                },
            },
        },
        **_failure_limits(),
    }


# --- shared pieces ------------------------------------------------------------------


def _tls_common(sds_dir: Path) -> dict:
    return {
        "tls_params": {
            # TLS 1.2 or 1.3 on both sides. Envoy's defaults have differed
            # between clients and servers and across versions, so both bounds
            # are stated.
            "tls_minimum_protocol_version": "TLSv1_2",
            "tls_maximum_protocol_version": "TLSv1_3",
        },
        # gRPC clients require h2 in ALPN, and the sidecars speak HTTP/2 to each other.
        "alpn_protocols": ["h2"],
        "tls_certificate_sds_secret_configs": [
            _sds_secret(IDENTITY_SECRET, sds_dir / SDS_IDENTITY_FILE)
        ],
    }


def _sds_secret(name: str, path: Path) -> dict:
    return {
        "name": name,
        "sds_config": {
            # A file instead of an SDS server. The Secret in it names the
            # certificate files and the folder to watch for their updates.
            "path_config_source": {"path": str(path)},
            "resource_api_version": "V3",
        },
    }


def _grpc_deadline_route() -> dict:
    return {
        # No fixed route timeout (Envoy's default is 15 s): the caller's gRPC
        # deadline bounds the call, and archive streams may take longer.
        "timeout": "0s",
        # Use the grpc-timeout header that carries the caller's deadline as
        # the stream's time limit, without a cap.
        "max_stream_duration": {"grpc_timeout_header_max": "0s"},
    }


def _http2_options(*, keepalive: bool) -> dict:
    http2: dict[str, Any] = {}
    if keepalive:
        # PING an idle upstream connection every 10 s and close it when no
        # PING ACK arrives within 5 s, so calls stop going to a peer sidecar
        # that was killed or partitioned without closing its connections.
        http2["connection_keepalive"] = {"interval": "10s", "timeout": "5s"}
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": _TYPE_PREFIX + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            # gRPC needs HTTP/2.
            "explicit_http_config": {"http2_protocol_options": http2},
        },
    }


def _router_filter() -> dict:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": _TYPE_PREFIX + "envoy.extensions.filters.http.router.v3.Router"},
    }


def _request_log(path: Path, listener: str) -> dict:
    return _json_log(path, {
        "start_time": "%START_TIME%",
        "log": "request",
        "listener": listener,
        "request_id": "%REQ(X-REQUEST-ID)%",
        "traceparent": "%REQ(TRACEPARENT)%",
        "method": "%REQ(:METHOD)%",
        "path": "%REQ(:PATH)%",
        "protocol": "%PROTOCOL%",
        "status": "%RESPONSE_CODE%",
        "grpc_status": "%GRPC_STATUS(NUMBER)%",
        "response_flags": "%RESPONSE_FLAGS%",
        "response_code_details": "%RESPONSE_CODE_DETAILS%",
        "duration_ms": "%DURATION%",
        # Empty on the outbound side, where the app connects without TLS.
        "downstream_peer_uri_san": "%DOWNSTREAM_PEER_URI_SAN%",
        # Empty on the inbound side, where the app is reached without TLS.
        "upstream_peer_uri_san": "%UPSTREAM_PEER_URI_SAN%",
        "upstream_cluster": "%UPSTREAM_CLUSTER%",
        "upstream_host": "%UPSTREAM_HOST%",
        "upstream_failure": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
        "bytes_received": "%BYTES_RECEIVED%",
        "bytes_sent": "%BYTES_SENT%",
    })


def _connection_log(path: Path) -> dict:
    return _json_log(path, {
        "start_time": "%START_TIME%",
        "log": "connection",
        "listener": INBOUND_LISTENER,
        "client_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
        "downstream_peer_uri_san": "%DOWNSTREAM_PEER_URI_SAN%",
        "tls_version": "%DOWNSTREAM_TLS_VERSION%",
        # Why the handshake failed, such as an unknown CA or a missing certificate.
        "transport_failure": "%DOWNSTREAM_TRANSPORT_FAILURE_REASON%",
        # Set by the RBAC filter when it closes a connection.
        "termination_details": "%CONNECTION_TERMINATION_DETAILS%",
        "duration_ms": "%DURATION%",
        "bytes_received": "%BYTES_RECEIVED%",
        "bytes_sent": "%BYTES_SENT%",
    })


def _json_log(path: Path, fields: dict[str, str]) -> dict:
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": _TYPE_PREFIX + "envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(path),
            "log_format": {"json_format": fields},
        },
    }
