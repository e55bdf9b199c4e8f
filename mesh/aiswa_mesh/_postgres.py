from __future__ import annotations

import hashlib
import logging
import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ._state import StateLayout, can_enter, is_root

log = logging.getLogger(__name__)


def _bin_dir() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not versions:
        raise SystemExit(
            "PostgreSQL server binaries not found under /usr/lib/postgresql; run `make setup`"
        )
    return versions[-1].parent


@dataclass(frozen=True)
class Postgres:
    """A private PostgreSQL server whose data lives in the state folder."""

    layout: StateLayout
    port: int
    # Addresses to listen on: loopback, and with pods the bridge's address.
    listen_hosts: tuple[str, ...] = ("127.0.0.1",)
    # The pods' range, whose clients may log in with a password; None without pods.
    client_range: str | None = None

    @property
    def os_user(self) -> str:
        # PostgreSQL refuses to run as root, so root runs it as Debian's
        # `postgres` account; any other user runs it as themselves.
        return "postgres" if is_root() else pwd.getpwuid(os.geteuid()).pw_name

    @property
    def data_dir(self) -> Path:
        # Resolved, because the server's account may not be allowed to pass
        # through the checkout on the way to the link (see prepare).
        return (self.layout.root / "pg").resolve() / "data"

    @property
    def socket_dir(self) -> Path:
        # Inside the folder that the server's account owns, which may be
        # outside the checkout (see prepare).
        return (self.layout.root / "pg").resolve() / "socket"

    def binary(self, name: str) -> str:
        return str(_bin_dir() / name)

    def prepare(self) -> None:
        """Create the data folder and cluster on first use."""
        link = self.layout.root / "pg"
        if not link.exists():
            if can_enter(self.os_user, self.layout.root):
                link.mkdir()
            else:
                # NOTE: the `postgres` account cannot enter the checkout (a
                # parent folder is private), so the data lives in /var/tmp,
                # linked from the state folder, and `make clean` removes it.
                digest = hashlib.sha256(str(self.layout.root).encode()).hexdigest()[:12]
                target = Path("/var/tmp") / f"aiswa-pg-{digest}"
                target.mkdir(mode=0o700, exist_ok=True)
                link.symlink_to(target)
                log.warning("postgres data folder placed outside the checkout: %s", target)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if is_root():
            shutil.chown(link.resolve(), self.os_user, self.os_user)
            shutil.chown(self.socket_dir, self.os_user, self.os_user)
            os.chmod(self.socket_dir, 0o700)
            if not can_enter(self.os_user, self.socket_dir):
                raise SystemExit(
                    f"the postgres account cannot enter {self.socket_dir}; make the "
                    "checkout's parent folders executable for others (chmod o+x)"
                )
        if not (self.data_dir / "PG_VERSION").exists():
            self._as_owner(
                [self.binary("initdb"), "-D", str(self.data_dir), "--auth-local=peer",
                 "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8",
                 f"--username={self.os_user}"],
            )
        self._write_hba()

    def _write_hba(self) -> None:
        """Write pg_hba.conf: the owner by peer, logins by password from loopback and the pods."""
        lines = ["# Rendered by `make up` (aiswa_mesh._postgres); edits are lost.",
                 "local all all peer",
                 "host all all 127.0.0.1/32 scram-sha-256"]
        if self.client_range:
            lines.append(f"host all all {self.client_range} scram-sha-256")
        path = self.data_dir / "pg_hba.conf"
        path.write_text("\n".join(lines) + "\n")
        os.chmod(path, 0o600)
        if is_root():
            shutil.chown(path, self.os_user, self.os_user)

    def command(self) -> list[str]:
        return [
            self.binary("postgres"), "-D", str(self.data_dir), "-p", str(self.port),
            "-c", f"listen_addresses={','.join(self.listen_hosts)}",
            "-c", f"unix_socket_directories={self.socket_dir}",
            "-c", "log_destination=stderr",
            "-c", "logging_collector=off",
            "-c", "fsync=on",
        ]

    def _as_owner(self, args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        if is_root():
            args = ["runuser", "-u", self.os_user, "--", *args]
        result = subprocess.run(args, check=False, text=True, capture_output=True, **kwargs)  # type: ignore[call-overload]
        if result.returncode != 0:
            # Only the program's name: a psql statement may hold a password.
            program = Path(args[4] if is_root() else args[0]).name
            raise SystemExit(f"{program} failed with exit code {result.returncode}:\n"
                             f"{(result.stderr or result.stdout).strip()[-3000:]}")
        return result

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = subprocess.run(
                [self.binary("pg_isready"), "-h", str(self.socket_dir), "-p", str(self.port)],
                capture_output=True, check=False,
            )
            if result.returncode == 0:
                return
            time.sleep(0.3)
        raise SystemExit(f"PostgreSQL did not accept connections on port {self.port} "
                         f"within {timeout:.0f} s; see {self.layout.logs / 'postgres.log'}")

    def sql(self, statement: str, database: str = "postgres", *, stdin: bool = False) -> str:
        """Run ``statement`` as the server's owner and return psql's unaligned output.

        With ``stdin`` the statement goes through psql's standard input
        instead of its arguments, where any local user could read it.
        """
        psql = self.binary("psql") if Path(self.binary("psql")).exists() else "psql"
        args = [psql, "-h", str(self.socket_dir), "-p", str(self.port), "-d", database,
                "-U", self.os_user, "-v", "ON_ERROR_STOP=1", "-tAq"]
        if stdin:
            result = self._as_owner([*args, "-f", "-"], input=statement)
        else:
            result = self._as_owner([*args, "-c", statement])
        return result.stdout.strip()

    def _role_exists(self, role: str) -> bool:
        return self.sql(f"SELECT 1 FROM pg_roles WHERE rolname = '{role}'") == "1"

    def ensure_service_database(self, database: str, owner: str, app: str) -> None:
        """Create one service's database, its owner role and its row-access role; idempotent.

        Both roles are NOLOGIN groups: OpenBao creates short-lived logins in
        them. ``owner`` owns the database and every table, so its members
        may change the schema (migrations). ``app`` may only connect and read
        and write rows. No other role may connect to the database.
        """
        for role in (owner, app):
            if self._role_exists(role):
                # Earlier versions gave the owner a static login password.
                self.sql(f"ALTER ROLE {role} NOLOGIN PASSWORD NULL")
            else:
                self.sql(f"CREATE ROLE {role} NOLOGIN")
        if self.sql(f"SELECT 1 FROM pg_database WHERE datname = '{database}'") != "1":
            self.sql(f"CREATE DATABASE {database} OWNER {owner}")
        # Database per service: no other role may connect to it.
        self.sql(f"REVOKE ALL ON DATABASE {database} FROM PUBLIC")
        self.sql(f"GRANT CONNECT, TEMPORARY ON DATABASE {database} TO {owner}")
        self.sql(f"GRANT CONNECT ON DATABASE {database} TO {app}")
        for statement in (
            f"GRANT USAGE ON SCHEMA public TO {app}",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {app}",
            f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {app}",
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public "
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app}",
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public "
            f"GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {app}",
        ):
            self.sql(statement, database)

    def ensure_openbao_login(self, login: str, groups: list[str]) -> None:
        """Create OpenBao's login, which may only manage logins in ``groups``; idempotent."""
        if not self._role_exists(login):
            self.sql(f"CREATE ROLE {login} LOGIN CREATEROLE")
        self.sql(f"GRANT {', '.join(groups)} TO {login} WITH ADMIN OPTION")
        # To end a revoked login's sessions (pg_terminate_backend).
        self.sql(f"GRANT pg_signal_backend TO {login}")

    def set_password(self, role: str, password: str) -> None:
        quoted = password.replace("'", "''")
        self.sql(f"ALTER ROLE {role} PASSWORD '{quoted}'", stdin=True)
