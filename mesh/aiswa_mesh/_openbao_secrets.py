"""OpenBao's database and RabbitMQ secrets engines and the workloads' access to them.

Everything here runs with the root token, from :meth:`OpenBao.configure_secrets`
at every `make up`. What each workload may read is rendered from
mesh/topology.yaml. A workload with a ``database`` gets two database roles:
one for request handling, which may only read and write rows, and one for
migrations, which may change the schema. Every workload gets one RabbitMQ role
with the permissions of :func:`aiswa_mesh._rabbitmq.service_permissions`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ._openbao_pki import SECRET_ID_TTL, ApiClient, reply_data
from ._rabbitmq import Permissions

log = logging.getLogger("aiswa.openbao")

DATABASE_MOUNT = "database"
RABBITMQ_MOUNT = "rabbitmq"
# The name of the PostgreSQL connection in the database secrets engine.
POSTGRES_CONNECTION = "aiswa-postgres"
# OpenBao's own PostgreSQL login. It may only create and drop login roles and
# add them to the services' group roles. OpenBao rotates its password right
# after it is configured, so no person or file contains it.
POSTGRES_ADMIN_ROLE = "aiswa_bao"
ORCHESTRATOR_POLICY = "orchestrator"
# The RabbitMQ role with which the launcher declares the topology.
OPERATOR_ROLE = "operator"
# A wrapped secret id must be unwrapped this soon after it was minted.
WRAP_TTL = "2m"
# Tokens of the migrations' logins: one run of migrations, not a service.
MIGRATE_TOKEN_TTL = "15m"
MIGRATE_TOKEN_MAX_TTL = "1h"


@dataclass(frozen=True)
class CredentialTtl:
    """Lease lifetimes of the dynamic credentials, as OpenBao durations (``"15m"``)."""

    ttl: str
    max_ttl: str


def owner_role(workload: str) -> str:
    """Return the NOLOGIN PostgreSQL role that owns ``workload``'s database and tables."""
    return f"aiswa_{workload}"


def app_role(workload: str) -> str:
    """Return the NOLOGIN PostgreSQL role whose members may read and write rows, not DDL."""
    return f"aiswa_{workload}_app"


def database_roles(workload: str) -> tuple[str, str]:
    """OpenBao's database roles of ``workload``: (request handling, migrations)."""
    return workload, f"{workload}-migrate"


def migrate_approle(workload: str) -> str:
    """Return the AppRole with which ``workload``'s migrations log in."""
    return f"{workload}-migrate"


def _statements(workload: str, *, migrate: bool) -> list[str]:
    group = owner_role(workload) if migrate else app_role(workload)
    statements = [
        f"CREATE ROLE \"{{{{name}}}}\" WITH LOGIN PASSWORD '{{{{password}}}}' "
        f"VALID UNTIL '{{{{expiration}}}}' IN ROLE {group};",
    ]
    if migrate:
        # Objects that migrations create belong to the owner role, not to
        # the short-lived login, so that the login can be dropped later.
        statements.append(f"ALTER ROLE \"{{{{name}}}}\" SET role = '{group}';")
    return statements


# Revocation ends the login's sessions too: a revoked credential must stop
# working at once, not at the next reconnect.
REVOCATION_STATEMENTS = [
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';",
    "DROP ROLE IF EXISTS \"{{name}}\";",
]


def credential_paths(topology: Mapping[str, Any], workload: str) -> list[str]:
    """Return the creds paths from which ``workload``'s process reads its logins."""
    spec = topology["workloads"][workload]
    paths = [f"{RABBITMQ_MOUNT}/creds/{workload}"]
    if "database" in spec:
        paths.insert(0, f"{DATABASE_MOUNT}/creds/{database_roles(workload)[0]}")
    return paths


def workload_secret_paths(topology: Mapping[str, Any], workload: str) -> dict[str, Any]:
    """Return the policy paths that ``workload`` needs for its dynamic credentials.

    They are added to its ``mesh-<workload>`` policy beside its PKI role. The
    gateway is Envoy alone and gets none.
    """
    spec = topology["workloads"].get(workload)
    if spec is None:
        return {}
    paths: dict[str, Any] = {path: {"capabilities": ["read"]}
                             for path in credential_paths(topology, workload)}
    return {**paths, **_lease_paths()}


def _lease_paths() -> dict[str, Any]:
    # NOTE: OpenBao's ACLs cannot limit sys/leases/renew to the caller's own
    # leases, because the lease id is in the body. A token can renew only a
    # lease whose id it has, and workloads may not list lease ids.
    return {
        "sys/leases/renew": {"capabilities": ["update"]},
        "sys/leases/lookup": {"capabilities": ["update"]},
        "auth/token/renew-self": {"capabilities": ["update"]},
        "auth/token/revoke-self": {"capabilities": ["update"]},
    }


def ensure_secrets_mounts(client: ApiClient) -> None:
    mounts = reply_data(client.request("GET", "sys/mounts"))
    for mount in (DATABASE_MOUNT, RABBITMQ_MOUNT):
        if f"{mount}/" not in mounts:
            client.request("POST", f"sys/mounts/{mount}", {"type": mount})
            log.info("enabled the %s secrets engine", mount)


def has_postgres_connection(client: ApiClient) -> bool:
    return client.request("GET", f"{DATABASE_MOUNT}/config/{POSTGRES_CONNECTION}") is not None


def configure_postgres_connection(client: ApiClient, *, port: int, password: str,
                                  roles: Iterable[str]) -> None:
    """Give OpenBao its PostgreSQL login, then let it rotate the password.

    After the rotation only OpenBao has the password.
    """
    client.request("POST", f"{DATABASE_MOUNT}/config/{POSTGRES_CONNECTION}", {
        "plugin_name": "postgresql-database-plugin",
        "connection_url": (f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{port}"
                           "/postgres?sslmode=disable"),
        "username": POSTGRES_ADMIN_ROLE,
        "password": password,
        "password_authentication": "scram-sha-256",
        "allowed_roles": sorted(roles),
        "verify_connection": True,
        "max_open_connections": 2,
    })
    client.request("POST", f"{DATABASE_MOUNT}/rotate-root/{POSTGRES_CONNECTION}")
    log.info("configured the PostgreSQL connection and rotated %s's password",
             POSTGRES_ADMIN_ROLE)


def update_postgres_allowed_roles(client: ApiClient, roles: Iterable[str]) -> None:
    # A partial update: the stored password (rotated) is kept.
    client.request("POST", f"{DATABASE_MOUNT}/config/{POSTGRES_CONNECTION}", {
        "plugin_name": "postgresql-database-plugin",
        "allowed_roles": sorted(roles),
    })


def write_database_roles(client: ApiClient, workload: str, ttl: CredentialTtl) -> list[str]:
    names = database_roles(workload)
    for name, migrate in zip(names, (False, True), strict=True):
        client.request("POST", f"{DATABASE_MOUNT}/roles/{name}", {
            "db_name": POSTGRES_CONNECTION,
            "creation_statements": _statements(workload, migrate=migrate),
            "revocation_statements": REVOCATION_STATEMENTS,
            "default_ttl": ttl.ttl,
            "max_ttl": ttl.max_ttl,
        })
    return list(names)


def configure_rabbitmq(client: ApiClient, *, management_port: int, admin_user: str,
                       admin_password: str, ttl: CredentialTtl) -> None:
    """Point the RabbitMQ secrets engine at the management API with the admin login."""
    client.request("POST", f"{RABBITMQ_MOUNT}/config/connection", {
        "connection_uri": f"http://127.0.0.1:{management_port}",
        "username": admin_user,
        "password": admin_password,
        "verify_connection": True,
    })
    client.request("POST", f"{RABBITMQ_MOUNT}/config/lease", {
        "ttl": _seconds(ttl.ttl), "max_ttl": _seconds(ttl.max_ttl),
    })


def write_rabbitmq_role(client: ApiClient, name: str, vhost: str,
                        permissions: Permissions) -> None:
    client.request("POST", f"{RABBITMQ_MOUNT}/roles/{name}", {
        "tags": "",
        "vhosts": json.dumps({vhost: {"configure": permissions.configure,
                                      "write": permissions.write,
                                      "read": permissions.read}}),
    })


def write_migrate_approle(client: ApiClient, workload: str, bound_cidrs: list[str]) -> None:
    """Write the AppRole of ``workload``'s migrations: schema changes and nothing else."""
    name = migrate_approle(workload)
    policy = {"path": {
        f"{DATABASE_MOUNT}/creds/{database_roles(workload)[1]}": {"capabilities": ["read"]},
        **_lease_paths(),
    }}
    client.request("PUT", f"sys/policies/acl/{name}", {"policy": json.dumps(policy)})
    client.request("POST", f"auth/approle/role/{name}", {
        "token_policies": [name],
        "token_no_default_policy": True,
        "token_type": "service",
        "token_ttl": MIGRATE_TOKEN_TTL,
        "token_max_ttl": MIGRATE_TOKEN_MAX_TTL,
        "token_bound_cidrs": bound_cidrs,
        "secret_id_bound_cidrs": bound_cidrs,
        "bind_secret_id": True,
        "secret_id_ttl": SECRET_ID_TTL,
        "secret_id_num_uses": 1,
    })


def write_orchestrator_policy(client: ApiClient) -> None:
    """Write the policy of the launcher's standing token: it may only mint wrapped secret ids.

    The token never learns a secret id: OpenBao refuses the request unless
    the reply is response-wrapped, and only the workload that unwraps it
    learns the id.
    """
    policy = {"path": {
        "auth/approle/role/+/secret-id": {
            "capabilities": ["update"],
            "min_wrapping_ttl": "1s",
            "max_wrapping_ttl": WRAP_TTL,
        },
        "auth/approle/role/+/role-id": {"capabilities": ["read"]},
        "auth/token/renew-self": {"capabilities": ["update"]},
    }}
    client.request("PUT", f"sys/policies/acl/{ORCHESTRATOR_POLICY}",
                   {"policy": json.dumps(policy)})


def create_orchestrator_token(client: ApiClient) -> str:
    reply = client.request("POST", "auth/token/create-orphan", {
        "policies": [ORCHESTRATOR_POLICY],
        "no_default_policy": True,
        "period": "24h",
        "display_name": "launcher-orchestrator",
        "renewable": True,
    }) or {}
    return reply["auth"]["client_token"]


def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    value = duration.strip()
    if value.isdigit():
        return int(value)
    if len(value) < 2 or value[-1] not in units or not value[:-1].isdigit():
        raise ValueError(f"duration {duration!r} is not a number of s, m or h, e.g. 15m")
    return int(value[:-1]) * units[value[-1]]
