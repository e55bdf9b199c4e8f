from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A required setting is missing or invalid."""


def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None or value == "":
        raise ConfigError(
            f"environment variable {name} is not set; the launcher sets it "
            "(see `make up`), or export it to run the service alone"
        )
    return value


def _address(name: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{name}={value!r} is not HOST:PORT, e.g. 127.0.0.1:50051")
    return host.strip("[]"), int(port)


def _check_creds_url(prefix: str, url: str | None, creds: str | None) -> None:
    """Check that ``<prefix>_URL`` fits ``<prefix>_CREDS``: set, and with no password in it."""
    if creds is None:
        return
    if url is None:
        raise ConfigError(
            f"{prefix}_CREDS={creds!r} is set but {prefix}_URL is not; the launcher sets "
            "both (see `make up`)"
        )
    if urlsplit(url).password is not None:
        raise ConfigError(
            f"{prefix}_URL contains a password although {prefix}_CREDS is set; with "
            "credentials from OpenBao the URL names only the host, port and database or "
            "vhost (see `make up`)"
        )


def _openbao_settings(needed_by: str | None) -> tuple[str | None, Path | None, int | None]:
    """Read the OpenBao address, CA and bootstrap descriptor; required when creds are set."""
    address = os.environ.get("AISWA_OPENBAO_ADDR") or None
    ca_cert = os.environ.get("AISWA_OPENBAO_CACERT") or None
    fd_text = os.environ.get("AISWA_OPENBAO_BOOTSTRAP_FD") or None
    if needed_by is None:
        return address, Path(ca_cert) if ca_cert else None, None

    for name, value in (("AISWA_OPENBAO_ADDR", address),
                        ("AISWA_OPENBAO_BOOTSTRAP_FD", fd_text)):
        if value is None:
            raise ConfigError(
                f"environment variable {name} is not set, but the service is configured "
                f"to read credentials from OpenBao ({needed_by}); the launcher sets it "
                "(see `make up`), or unset AISWA_DATABASE_CREDS and AISWA_AMQP_CREDS to "
                "use the credentials in the URLs"
            )
    assert address is not None and fd_text is not None

    if not address.startswith(("http://", "https://")):
        raise ConfigError(
            f"AISWA_OPENBAO_ADDR={address!r} is not an http:// or https:// address, e.g. "
            "https://127.0.0.1:58200"
        )
    if not fd_text.isdigit():
        raise ConfigError(
            f"AISWA_OPENBAO_BOOTSTRAP_FD={fd_text!r} is not a file descriptor number; the "
            "launcher sets it (see `make up`)"
        )

    try:
        os.fstat(int(fd_text))
    except OSError:
        raise ConfigError(
            f"AISWA_OPENBAO_BOOTSTRAP_FD={fd_text} is not an open file descriptor in this "
            "process; the launcher passes it open (see `make up`), and it can be read once"
        ) from None
    if ca_cert is not None and not Path(ca_cert).is_file():
        raise ConfigError(
            f"AISWA_OPENBAO_CACERT={ca_cert!r} is not a file; it names the CA certificate "
            "of OpenBao's listener, which `make up` writes"
        )
    return address, Path(ca_cert) if ca_cert else None, int(fd_text)


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """Settings of one service process, read from ``AISWA_*`` environment variables."""

    service: str
    grpc_host: str
    grpc_port: int
    state_dir: Path
    database_url: str | None
    amqp_url: str | None
    upstreams: dict[str, str] = field(default_factory=dict)
    trace_exporter: str = "none"
    trace_endpoint: str | None = None
    trace_file: Path | None = None
    log_level: str = "INFO"
    shutdown_grace_seconds: float = 10.0
    namespace: str = "aiswa"
    # Dynamic credentials from OpenBao; see aiswa_runtime._credentials.
    openbao_address: str | None = None
    openbao_ca_cert: Path | None = None
    openbao_bootstrap_fd: int | None = None
    database_creds: str | None = None
    amqp_creds: str | None = None

    @property
    def identity(self) -> str:
        """The workload identity, ``<service>.<namespace>``."""
        return f"{self.service}.{self.namespace}"

    @property
    def grpc_address(self) -> str:
        return f"{self.grpc_host}:{self.grpc_port}"

    def upstream(self, name: str) -> str:
        try:
            return self.upstreams[name]
        except KeyError:
            raise ConfigError(
                f"no address for upstream {name!r}; set AISWA_UPSTREAM_{name.upper()}"
                "=HOST:PORT"
            ) from None

    @classmethod
    def from_env(cls, service: str | None = None) -> ServiceConfig:
        name = service or _env("AISWA_SERVICE")
        host, port = _address("AISWA_GRPC_ADDRESS", _env("AISWA_GRPC_ADDRESS"))
        upstreams = {}
        for key, value in os.environ.items():
            if key.startswith("AISWA_UPSTREAM_") and value:
                upstream = key.removeprefix("AISWA_UPSTREAM_").lower()
                _address(key, value)
                upstreams[upstream] = value
        exporter = os.environ.get("AISWA_TRACE_EXPORTER", "none")
        if exporter not in {"none", "console", "otlp", "file"}:
            raise ConfigError(
                f"AISWA_TRACE_EXPORTER={exporter!r} is invalid; use none, console, "
                "otlp or file"
            )
        trace_file = os.environ.get("AISWA_TRACE_FILE")
        database_url = os.environ.get("AISWA_DATABASE_URL") or None
        amqp_url = os.environ.get("AISWA_AMQP_URL") or None
        database_creds = os.environ.get("AISWA_DATABASE_CREDS") or None
        amqp_creds = os.environ.get("AISWA_AMQP_CREDS") or None
        _check_creds_url("AISWA_DATABASE", database_url, database_creds)
        _check_creds_url("AISWA_AMQP", amqp_url, amqp_creds)
        openbao = _openbao_settings(needed_by=database_creds or amqp_creds)
        return cls(
            service=name,
            grpc_host=host,
            grpc_port=port,
            state_dir=Path(os.environ.get("AISWA_STATE_DIR", ".state")),
            database_url=database_url,
            amqp_url=amqp_url,
            upstreams=upstreams,
            trace_exporter=exporter,
            trace_endpoint=os.environ.get("AISWA_TRACE_ENDPOINT") or None,
            trace_file=Path(trace_file) if trace_file else None,
            log_level=os.environ.get("AISWA_LOG_LEVEL", "INFO").upper(),
            shutdown_grace_seconds=float(os.environ.get("AISWA_SHUTDOWN_GRACE", "10")),
            namespace=os.environ.get("AISWA_NAMESPACE", "aiswa"),
            openbao_address=openbao[0],
            openbao_ca_cert=openbao[1],
            openbao_bootstrap_fd=openbao[2],
            database_creds=database_creds,
            amqp_creds=amqp_creds,
        )

    def require_database(self) -> str:
        if not self.database_url:
            raise ConfigError(
                f"{self.service} needs AISWA_DATABASE_URL, e.g. "
                "postgresql://127.0.0.1:55432/DBNAME with AISWA_DATABASE_CREDS, or "
                "postgresql://USER:PASSWORD@127.0.0.1:55432/DBNAME"
            )
        return self.database_url

    def require_amqp(self) -> str:
        if not self.amqp_url:
            raise ConfigError(
                f"{self.service} needs AISWA_AMQP_URL, e.g. "
                "amqp://127.0.0.1:55672/aiswa with AISWA_AMQP_CREDS, or "
                "amqp://USER:PASSWORD@127.0.0.1:55672/aiswa"
            )
        return self.amqp_url
