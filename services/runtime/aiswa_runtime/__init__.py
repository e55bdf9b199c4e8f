"""Shared runtime of the AI-SWA Python services.

Configuration, the grpc.aio server, upstream clients with deadlines, retries
and circuit breakers, the database pool and migrations, the message broker,
short-lived credentials from OpenBao, logging and tracing: written once,
imported by every service.
"""

from ._amqp import Broker, PoisonMessage, UnroutableMessage
from ._auth import Claims, optional_user, require_user
from ._client import Upstream, on_breaker_change, upstream_error
from ._config import ConfigError, ServiceConfig
from ._credentials import Credentials, command_database_url, command_migrate
from ._db import migrate, open_pool
from ._errors import (
    ServiceError,
    failed_precondition,
    invalid_argument,
    not_found,
    permission_denied,
    unauthenticated,
    unavailable,
)
from ._report import ServiceReporter
from ._secrets import BootstrapError, LeasedSecret, SecretsError, UsernamePassword
from ._server import Service, forwarded_metadata
from ._topology import load_topology

__all__ = [
    "BootstrapError",
    "Broker",
    "Claims",
    "ConfigError",
    "Credentials",
    "LeasedSecret",
    "PoisonMessage",
    "SecretsError",
    "Service",
    "ServiceConfig",
    "ServiceError",
    "ServiceReporter",
    "Upstream",
    "UnroutableMessage",
    "UsernamePassword",
    "command_database_url",
    "command_migrate",
    "failed_precondition",
    "forwarded_metadata",
    "invalid_argument",
    "load_topology",
    "migrate",
    "not_found",
    "on_breaker_change",
    "open_pool",
    "optional_user",
    "permission_denied",
    "require_user",
    "unauthenticated",
    "unavailable",
    "upstream_error",
]
