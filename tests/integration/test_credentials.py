"""Every service runs on short-lived credentials from OpenBao, and nothing else.

`make test` starts the platform with AISWA_CRED_TTL=1m and AISWA_CRED_MAX_TTL=2m
(scripts/test.sh): every lease of a PostgreSQL or RabbitMQ login lives a
minute, is renewed about every 20 s, and is replaced by a new login before
two minutes are up. These tests check that no static password exists, that a
login reaches only its own service's database, that calls keep succeeding
across renewals and replacements, after a revocation and while OpenBao is
down.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from aiswa_cli._api import ApiError
from aiswa_mesh._postgres import Postgres
from aiswa_mesh.openbao import OpenBao, openbao_binary
from conftest import STDLIB, pack_python, supervisorctl, wait_run

DATABASE_SERVICES = ("users", "projects", "reflector", "vision")
RABBITMQ_SERVICES = (*DATABASE_SERVICES, "dashboard")
ROOT = Path(__file__).resolve().parents[2]

# A password in a URL (scheme://user:password@), in a configuration or
# environment line (KEY_PASSWORD=..., default_pass = ...), or in JSON.
SECRET_PATTERNS = [
    re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:(?P<value>[^@\s/'\"]+)@"),
    re.compile(r"(?im)^\s*[\w.]*pass(?:word)?\s*[=:]\s*(?P<value>\S+)\s*$"),
    re.compile(r"(?i)\"[\w.]*pass(?:word)?\"\s*:\s*\"(?P<value>[^\"]+)\""),
]
# Generated passwords are long: OpenBao's have 20 characters, the launcher's
# 43. Shorter values, masked values, templates ({{password}}), expressions
# (code) and placeholders (PASSWORD) are not passwords.
MIN_SECRET_LENGTH = 12


def _is_placeholder(value: str) -> bool:
    return (len(value) < MIN_SECRET_LENGTH or value.isupper()
            or any(char in value for char in "(){}[]*$<>%,")
            # A lower-case name is a variable in code, not a generated password.
            or re.fullmatch(r"[a-z_][a-z0-9_.]*", value) is not None)


def find_secrets(text: str) -> list[str]:
    """Return every password-like value in ``text`` that is not a placeholder."""
    found = []
    for pattern in SECRET_PATTERNS:
        for match in pattern.finditer(text):
            if not _is_placeholder(match.group("value")):
                found.append(match.group(0)[:60])
    return found


@pytest.fixture(scope="module")
def bao(layout, topology) -> OpenBao:
    return OpenBao(layout, int(topology["mesh"]["openbao_port"]))


@pytest.fixture(scope="module")
def postgres(layout, topology) -> Postgres:
    return Postgres(layout, topology["infrastructure"]["postgres"]["port"])


@pytest.fixture(scope="module")
def credential_ttl(bao) -> float:
    """The lease lifetime the platform runs with, in seconds."""
    ttl = float(bao.root_read("database/roles/projects")["data"]["default_ttl"])
    if ttl > 300:
        pytest.skip(f"credentials live {ttl:.0f} s; start the platform with AISWA_CRED_TTL=1m "
                    "AISWA_CRED_MAX_TTL=2m (as `make test` does) to watch them renew")
    return ttl


def _root(bao: OpenBao) -> httpx.Client:
    import ssl

    token = bao.root_token_path.read_text().strip()
    return httpx.Client(base_url=f"{bao.address}/v1/", headers={"X-Vault-Token": token},
                        verify=ssl.create_default_context(cafile=str(bao.ca_cert)),
                        trust_env=False, timeout=10)


def _lease_ids(bao: OpenBao, prefix: str) -> list[str]:
    with _root(bao) as client:
        reply = client.request("LIST", f"sys/leases/lookup/{prefix}")
    if reply.status_code == 404:
        return []
    reply.raise_for_status()
    return [f"{prefix}/{key}" for key in reply.json()["data"]["keys"]]


def _lookup(bao: OpenBao, lease_id: str) -> dict:
    with _root(bao) as client:
        reply = client.put("sys/leases/lookup", json={"lease_id": lease_id})
    reply.raise_for_status()
    return reply.json()["data"]


def _service_logins(postgres: Postgres, database: str) -> set[str]:
    """The PostgreSQL logins that the service itself has connected with now."""
    rows = postgres.sql("SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = "
                        f"'{database}' AND usename LIKE 'v-approle-%'")
    return set(rows.split())


def _bao_cli(bao: OpenBao, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BAO_ADDR": bao.address, "BAO_CACERT": str(bao.ca_cert),
           "BAO_TOKEN": bao.root_token_path.read_text().strip()}
    return subprocess.run([str(openbao_binary()), *args], env=env, capture_output=True,
                          text=True, check=True, timeout=60)


class Load:
    """Calls through the gateway that reach every service's database and queue."""

    def __init__(self, admin, project: dict, archive: dict) -> None:
        self.admin = admin
        self.project = project
        self.archive = archive
        self.calls = 0
        self.runs = 0
        self.failures: list[str] = []
        self.next_run = time.monotonic()

    def step(self) -> None:
        try:
            self.admin.request("GET", "/v1/users/me")
            self.admin.request("GET", "/v1/projects")
            self.calls += 2
            if time.monotonic() >= self.next_run:
                run = self.admin.start_run(self.project["project_id"],
                                           self.archive["archive_id"])
                finished = wait_run(self.admin, run["run_id"], timeout=60)
                assert finished["state"] == "RUN_STATE_COMPLETED", finished
                self.admin.report(run["run_id"])
                self.calls, self.runs = self.calls + 3, self.runs + 1
                self.next_run = time.monotonic() + 10
        except (ApiError, httpx.HTTPError, AssertionError) as exc:
            self.failures.append(repr(exc)[:300])
        time.sleep(0.1)

    def run_for(self, seconds: float, each: Callable[[], None] | None = None) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.step()
            if each is not None:
                each()


@pytest.fixture
def load(admin, project) -> Iterator[Load]:
    archive = admin.upload(project["project_id"], "json.tar.gz", pack_python([STDLIB / "json"]))
    yield Load(admin, project, archive)


# --- no static password -----------------------------------------------------


def test_scanner_finds_a_real_password(leases):
    # The scan below must find a live password if one were there.
    dsn = leases.service_dsn("users")
    amqp = leases.amqp_url("users")
    password = dsn.split(":")[2].split("@")[0]
    assert len(password) >= MIN_SECRET_LENGTH
    for text in (dsn, amqp, f"AISWA_DATABASE_URL={dsn}", f"default_pass = {password}\n",
                 f"PGPASSWORD={password}", json.dumps({"password": password})):
        assert find_secrets(text), text
    for text in ("postgresql://127.0.0.1:55432/aiswa_users", "amqp://users:******@127.0.0.1/x",
                 "password = secrets.token_urlsafe(32)", "amqp://USER:PASSWORD@127.0.0.1/x",
                 "    postgres_password=postgres_password,\n"):
        assert find_secrets(text) == [], text


def _state_texts(layout) -> Iterator[tuple[str, str]]:
    skipped = {"venv", "tools", "pg", "node", "gen", "archives", "traces", "artifacts"}
    for path in sorted(layout.root.rglob("*")):
        relative = path.relative_to(layout.root)
        if (relative.parts[0] in skipped or "mnesia" in relative.parts
                or "data" in relative.parts[:2] or not path.is_file() or path.is_symlink()
                or path.stat().st_size > 20_000_000):
            continue
        yield str(relative), path.read_text(errors="replace")


def _platform_processes(layout) -> list[int]:
    pids = []
    for line in supervisorctl(layout, "status").splitlines():
        match = re.search(r"pid (\d+)", line)
        if match:
            pids.append(int(match.group(1)))
    return pids


def test_no_password_in_repository_config_environment_or_logs(layout):
    found: dict[str, list[str]] = {}
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    assert len(tracked) > 100
    for name in tracked:
        path = ROOT / name
        if path.is_file() and not name.endswith((".png", ".lock", "package-lock.json")):
            hits = find_secrets(path.read_text(errors="replace"))
            if hits:
                found[name] = hits
    scanned = 0
    for name, text in _state_texts(layout):
        scanned += 1
        hits = find_secrets(text)
        if hits:
            found[f".state/{name}"] = hits
    assert scanned > 20, "too few rendered files and logs were scanned"
    pids = _platform_processes(layout)
    assert len(pids) > 15, pids
    for pid in pids:
        for part in ("environ", "cmdline"):
            text = Path(f"/proc/{pid}/{part}").read_bytes().replace(b"\0", b"\n").decode(
                errors="replace")
            hits = find_secrets(text)
            if hits:
                found[f"/proc/{pid}/{part}"] = hits
    assert found == {}


def test_no_static_login_exists(layout, postgres, rabbitmq):
    # Every PostgreSQL login with a password is OpenBao's own (its password
    # rotated, known only to OpenBao) or a dynamic one that expires.
    rows = postgres.sql("SELECT rolname, coalesce(rolvaliduntil::text, 'never') FROM pg_authid "
                        "WHERE rolcanlogin AND rolpassword IS NOT NULL")
    logins = dict(line.split("|") for line in rows.splitlines())
    assert "aiswa_bao" in logins
    for name, valid_until in logins.items():
        if name != "aiswa_bao":
            assert name.startswith("v-"), name
            assert valid_until != "never", name
    assert not any(path.name.startswith(("postgres-", "rabbitmq-"))
                   for path in layout.secrets.iterdir())
    users = {line.split("\t")[0] for line in rabbitmq.ctl("list_users").splitlines()}
    assert "aiswa-admin" in users
    assert users.isdisjoint({"guest", *RABBITMQ_SERVICES}), users


# --- isolation ----------------------------------------------------------------


@pytest.mark.parametrize("service", DATABASE_SERVICES)
def test_login_reaches_only_its_own_database(leases, topology, service):
    own = leases.service_dsn(service)
    with psycopg.connect(own) as connection:
        assert connection.execute("SELECT current_database()").fetchone()[0] == (
            topology["workloads"][service]["database"])
    for other in DATABASE_SERVICES:
        if other == service:
            continue
        database = topology["workloads"][other]["database"]
        with pytest.raises(psycopg.OperationalError) as refused:
            psycopg.connect(own.rsplit("/", 1)[0] + f"/{database}")
        assert "CONNECT privilege" in str(refused.value)


def test_request_login_cannot_change_the_schema(leases):
    with psycopg.connect(leases.service_dsn("projects"), autocommit=True) as connection:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            connection.execute("CREATE TABLE intruder (id int)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            connection.execute("DROP TABLE projects")
    with psycopg.connect(leases.service_dsn("projects", migrate=True),
                         autocommit=True) as connection:
        connection.execute("CREATE TABLE migrate_probe (id int)")
        owner = connection.execute(
            "SELECT tableowner FROM pg_tables WHERE tablename = 'migrate_probe'").fetchone()[0]
        connection.execute("DROP TABLE migrate_probe")
    # Tables belong to the owner role, so the short-lived login can be dropped.
    assert owner == "aiswa_projects"


# --- renewal, replacement, revocation and an OpenBao outage -------------------


def test_serving_across_three_lease_lifetimes(bao, postgres, topology, credential_ttl, load):
    roles = ([f"database/creds/{name}" for name in DATABASE_SERVICES]
             + [f"rabbitmq/creds/{name}" for name in RABBITMQ_SERVICES])
    before = {role: set(_lease_ids(bao, role)) for role in roles}
    logins = {name: _service_logins(postgres, topology["workloads"][name]["database"])
              for name in DATABASE_SERVICES}
    started = time.monotonic()

    def sample() -> None:
        for name in DATABASE_SERVICES:
            logins[name] |= _service_logins(postgres, topology["workloads"][name]["database"])

    load.run_for(3 * credential_ttl + 15, each=sample)

    assert load.failures == [], (f"{len(load.failures)} of {load.calls} calls failed across "
                                 f"three lease lifetimes: {load.failures[:3]}")
    assert load.calls > 300, load.calls
    assert load.runs >= 10, load.runs
    replaced = {role: set(_lease_ids(bao, role)) - before[role] for role in roles}
    assert all(replaced.values()), f"no new lease within {time.monotonic() - started:.0f} s: " + (
        ", ".join(role for role, new in replaced.items() if not new))
    for name in DATABASE_SERVICES:
        assert len(logins[name]) >= 2, f"{name} kept one login: {logins[name]}"
    renewed = [_lookup(bao, lease)["last_renewal"] for role in roles
               for lease in _lease_ids(bao, role)]
    assert any(renewed), "no lease was ever renewed"


def test_service_serves_after_lease_revoked(bao, postgres, admin, credential_ttl):
    revoked = _service_logins(postgres, "aiswa_projects")
    assert revoked
    _bao_cli(bao, "lease", "revoke", "-prefix", "database/creds/projects")
    start = time.monotonic()
    # Revocation ends the login's sessions at once.
    while not _service_logins(postgres, "aiswa_projects").isdisjoint(revoked):
        assert time.monotonic() - start < 5, "the revoked login's sessions did not end"
        time.sleep(0.1)
    bound = 30.0
    while True:
        try:
            admin.request("GET", "/v1/projects")
            if _service_logins(postgres, "aiswa_projects") - revoked:
                break
        except (ApiError, httpx.HTTPError):
            pass
        assert time.monotonic() - start < bound, (
            f"projects did not serve with a new login within {bound:.0f} s")
        time.sleep(0.2)
    print(f"projects served again {time.monotonic() - start:.1f} s after the revocation")


def test_worker_consumes_after_broker_lease_revoked(bao, admin, project):
    archive = admin.upload(project["project_id"], "json.tar.gz", pack_python([STDLIB / "json"]))
    _bao_cli(bao, "lease", "revoke", "-prefix", "rabbitmq/creds/reflector")
    start = time.monotonic()
    run = admin.start_run(project["project_id"], archive["archive_id"])
    finished = wait_run(admin, run["run_id"], timeout=60)
    assert finished["state"] == "RUN_STATE_COMPLETED", finished
    assert _lease_ids(bao, "rabbitmq/creds/reflector"), "the reflector took no new login"
    print(f"a run completed {time.monotonic() - start:.1f} s after the reflector's "
          "broker login was revoked")


def test_services_keep_serving_while_openbao_is_down(layout, bao, credential_ttl, load):
    # Longer than a renewal interval (a third of the lease), shorter than the lease.
    outage = credential_ttl / 3 + 15
    supervisorctl(layout, "stop", "openbao")
    stopped = time.time()
    try:
        load.run_for(outage)
    finally:
        supervisorctl(layout, "start", "openbao")
    assert load.failures == [], (f"{len(load.failures)} of {load.calls} calls failed while "
                                 f"OpenBao was down: {load.failures[:3]}")
    returned = time.time()

    def renewed_since_return() -> bool:
        for lease in _lease_ids(bao, "database/creds/users"):
            last = _lookup(bao, lease)["last_renewal"]
            if last and _epoch(last) > returned:
                return True
        return False

    deadline = time.monotonic() + credential_ttl
    while True:
        try:
            if renewed_since_return():
                break
        except httpx.HTTPError:
            pass  # still sealed; the unseal watcher runs every 5 s
        assert time.monotonic() < deadline, "renewal did not resume after OpenBao returned"
        load.step()
        time.sleep(1)
    assert load.failures == [], load.failures[:3]
    print(f"OpenBao was down {returned - stopped:.0f} s; {load.calls} calls, none failed")


def _epoch(timestamp: str) -> float:
    import datetime

    return datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
