from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ._state import StateLayout

_BIN = Path("/usr/lib/rabbitmq/bin")


@dataclass(frozen=True)
class RabbitMQ:
    """A private RabbitMQ node whose data, logs and cookie live in the state folder."""

    layout: StateLayout
    amqp_port: int
    dist_port: int
    epmd_port: int
    vhost: str
    management_port: int
    # Addresses of the AMQP listener: loopback, and with pods the bridge's address.
    listen_hosts: tuple[str, ...] = ("127.0.0.1",)

    @property
    def home(self) -> Path:
        return self.layout.rabbitmq

    def environment(self) -> dict[str, str]:
        home = self.home
        return {
            "HOME": str(home),
            "RABBITMQ_NODENAME": "aiswa@localhost",
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_LOGS": "-",
            "RABBITMQ_PID_FILE": str(home / "rabbitmq.pid"),
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(home / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(home / "rabbitmq-env.conf"),
            "RABBITMQ_CTL_DIST_PORT_MIN": str(self.dist_port + 10),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(self.dist_port + 20),
        }

    def prepare(self) -> None:
        home = self.home
        (home / "mnesia").mkdir(parents=True, exist_ok=True)
        (home / "log").mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            fd = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "w") as stream:
                stream.write(self.layout.secret("erlang-cookie").replace("-", "x"))
        listeners = "".join(f"listeners.tcp.{index} = {host}:{self.amqp_port}\n"
                            for index, host in enumerate(self.listen_hosts, start=1))
        (home / "rabbitmq.conf").write_text(
            "# Rendered by `make up` (aiswa_mesh.launcher).\n"
            f"{listeners}"
            # The management API, for OpenBao's RabbitMQ secrets engine only.
            f"management.tcp.ip = 127.0.0.1\n"
            f"management.tcp.port = {self.management_port}\n"
            # A new node creates guest/guest, which may log in from loopback
            # only; ensure_admin deletes it. No password is in this file.
            "default_vhost = /\n"
        )
        # Erlang distribution (the node's dist_port, which rabbitmqctl uses)
        # listens on every interface by default, the pods' bridge included.
        (home / "advanced.config").write_text(
            "[{kernel, [{inet_dist_use_interface, {127, 0, 0, 1}}]}].\n")
        (home / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (home / "rabbitmq-env.conf").write_text("")

    def epmd_command(self) -> list[str]:
        return ["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"]

    def command(self) -> list[str]:
        return [str(_BIN / "rabbitmq-server")]

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        result = subprocess.run(
            [str(_BIN / "rabbitmqctl"), "-q", *args],
            env={**os.environ, **self.environment()},
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {args[0]} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}"
            )
        return result.stdout.strip()

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                self.ctl("await_startup", "--timeout", "10", timeout=20)
                return
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                last = str(exc)
                time.sleep(1.0)
        raise SystemExit(
            f"RabbitMQ did not start within {timeout:.0f} s ({last}); "
            f"see {self.layout.logs / 'rabbitmq.log'}"
        )

    def ensure_admin(self, user: str, password: str) -> None:
        """Create or update the administrator ``user`` with ``password``, and remove guest.

        The password never appears in rabbitmqctl's arguments: the user is
        imported from a definitions file (mode 0600, deleted at once) that
        holds only the salted hash.
        """
        definitions = {
            "users": [{"name": user, "password_hash": password_hash(password),
                       "hashing_algorithm": "rabbit_password_hashing_sha256",
                       "tags": ["administrator"]}],
            "vhosts": [{"name": self.vhost}],
            "permissions": [{"user": user, "vhost": self.vhost,
                             "configure": ".*", "write": ".*", "read": ".*"}],
        }
        path = self.home / "admin-definitions.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w") as stream:
                json.dump(definitions, stream)
            self.ctl("import_definitions", str(path))
        finally:
            path.unlink(missing_ok=True)
        users = {line.split("\t")[0] for line in self.ctl("list_users").splitlines()}
        # guest, and the static service users of earlier versions.
        for stale in users & {"guest", "users", "projects", "reflector", "vision", "dashboard"}:
            self.ctl("delete_user", stale)


    def bound_queue(self, queue: str, max_length: int) -> None:
        """Keep at most ``max_length`` messages in ``queue`` and in its dead-letter queue.

        A policy, not a queue argument, so that it applies to queues that
        already exist. The broker drops the oldest message of a full queue,
        and the main queue's dropped messages go to the dead-letter queue.
        """
        pattern = f"^{re.escape(queue)}(\\.dlq)?$"
        definition = json.dumps({"max-length": max_length, "overflow": "drop-head"})
        self.ctl("set_policy", "-p", self.vhost, "--apply-to", "queues",
                 f"aiswa-bound-{queue}", pattern, definition)


def password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256 hash: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


@dataclass(frozen=True)
class Permissions:
    """RabbitMQ's three permission patterns of one user (regular expressions)."""

    configure: str
    write: str
    read: str


def _pattern(names: Iterable[str]) -> str:
    names = sorted(set(names))
    # "^$" matches no resource name: RabbitMQ's way to grant nothing.
    return "^(" + "|".join(re.escape(name) for name in names) + ")$" if names else "^$"


def service_permissions(topology: dict, service: str, dead_letter_exchange: str) -> Permissions:
    """Return the least permissions with which ``service`` can do its work.

    RabbitMQ's access control table gives what each operation needs.
    Declaring a queue with a dead-letter exchange needs configure and read on
    the queue and write on that exchange. Binding it needs write on the queue
    and read on the source exchange. Publishing needs write on the exchange,
    and consuming needs read on the queue. Exchanges are declared by the launcher, and a service checks
    them passively, which needs no permission. So a service can consume only
    its own queues and cannot create, delete or bind anything else.
    """
    queues = topology["queues"]
    workload = topology["workloads"][service]
    consumed = list(workload.get("consumes", []))
    published = {queues[name]["exchange"] for name in workload.get("publishes", [])}
    written = {*consumed, *published}
    if workload.get("language") == "python":
        # aiswa_runtime's ServiceReporter publishes metrics and denials as events.
        written.add("aiswa.events")
    # A consumer dead-letters poison messages itself.
    if consumed:
        written.add(dead_letter_exchange)
    bound_from = {queues[name]["exchange"] for name in consumed}
    return Permissions(configure=_pattern(consumed), write=_pattern(written),
                       read=_pattern([*consumed, *bound_from]))
