from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


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
        return cls(
            service=name,
            grpc_host=host,
            grpc_port=port,
            state_dir=Path(os.environ.get("AISWA_STATE_DIR", ".state")),
            database_url=os.environ.get("AISWA_DATABASE_URL") or None,
            amqp_url=os.environ.get("AISWA_AMQP_URL") or None,
            upstreams=upstreams,
            trace_exporter=exporter,
            trace_endpoint=os.environ.get("AISWA_TRACE_ENDPOINT") or None,
            trace_file=Path(trace_file) if trace_file else None,
            log_level=os.environ.get("AISWA_LOG_LEVEL", "INFO").upper(),
            shutdown_grace_seconds=float(os.environ.get("AISWA_SHUTDOWN_GRACE", "10")),
            namespace=os.environ.get("AISWA_NAMESPACE", "aiswa"),
        )

    def require_database(self) -> str:
        if not self.database_url:
            raise ConfigError(
                f"{self.service} needs AISWA_DATABASE_URL, e.g. "
                "postgresql://USER@127.0.0.1:55432/DBNAME"
            )
        return self.database_url

    def require_amqp(self) -> str:
        if not self.amqp_url:
            raise ConfigError(
                f"{self.service} needs AISWA_AMQP_URL, e.g. "
                "amqp://USER:PASSWORD@127.0.0.1:55672/aiswa"
            )
        return self.amqp_url
