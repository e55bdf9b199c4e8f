from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from yoyo import get_backend, read_migrations

from ._secrets import LeasedSecret, UsernamePassword

log = logging.getLogger(__name__)

# Seconds a call waits for a pooled connection, psycopg_pool's default. With
# the database down the call then fails with UNAVAILABLE (see _server._outage).
# NOTE: 15 s was too short for a login that expired while OpenBao was down:
# tests/integration/test_credentials.py failed once with it in CI.
ACQUIRE_TIMEOUT = 30.0
# Seconds the pool keeps retrying one lost connection (psycopg_pool's default
# is 300). Its retries back off exponentially without a cap: after an outage of
# a minute, the next try could come a minute after the database is back. Once
# a retry chain gives up, the next call that needs a connection starts a new
# chain with an immediate try, so the database is used within seconds again.
RECONNECT_TIMEOUT = 10.0


def migrate(database_url: str, migrations: Path) -> list[str]:
    """Apply the pending migrations in ``migrations`` and return their ids."""
    backend = get_backend(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        pending = backend.to_apply(read_migrations(str(migrations)))
        with backend.lock():
            backend.apply_migrations(pending)
    finally:
        backend.connection.close()
    applied = [migration.id for migration in pending]
    log.info("migrations applied", extra={"applied": applied, "folder": str(migrations)})
    return applied


async def open_pool(database_url: str, *, credentials: LeasedSecret | None = None,
                    min_size: int = 1, max_size: int = 8) -> AsyncConnectionPool:
    """Open a connection pool and wait until one connection works.

    Every connection returns rows as dicts, so no caller changes a pooled
    connection's row factory. With ``credentials``, each new connection logs
    in with the current login from OpenBao, and see :func:`_leased_pool` for
    how a replaced login reaches the pool.
    """
    if credentials is not None:
        return await _leased_pool(database_url, credentials, min_size=min_size,
                                  max_size=max_size)
    pool = AsyncConnectionPool(
        database_url, min_size=min_size, max_size=max_size, open=False,
        kwargs={"row_factory": dict_row}, timeout=ACQUIRE_TIMEOUT,
        reconnect_timeout=RECONNECT_TIMEOUT,
        # Connections are checked before use, so a server restart costs a
        # reconnect instead of a failed call.
        check=AsyncConnectionPool.check_connection,
    )
    await pool.open(wait=True, timeout=30)
    return pool


async def _leased_pool(database_url: str, credentials: LeasedSecret, *, min_size: int,
                       max_size: int) -> AsyncConnectionPool:
    """Open a pool whose connections log in with ``credentials``' current login.

    After a replacement the pool drains: idle connections close at once and
    connections in use close when they are returned, so calls in flight
    finish on the old login, which stays valid for at least one renewal
    interval. A connection that logged in with an old login while the drain
    ran is closed by the check before use. A failed connection attempt calls
    ``credentials.check_now()``, so a revoked login is replaced at once
    instead of at the next renewal.
    """

    def connect_kwargs() -> dict[str, Any]:
        login = credentials.current
        return {"row_factory": dict_row, "user": login.username, "password": login.password}

    async def check(connection: AsyncConnection[Any]) -> None:
        if connection.info.user != credentials.current.username:
            # Closed, so that the pool discards it instead of putting it back.
            await connection.close()
            raise psycopg.OperationalError("the connection uses a replaced database login")
        await AsyncConnectionPool.check_connection(connection)

    pool: AsyncConnectionPool = AsyncConnectionPool(
        database_url, min_size=min_size, max_size=max_size, open=False,
        kwargs=connect_kwargs, timeout=ACQUIRE_TIMEOUT,
        reconnect_timeout=RECONNECT_TIMEOUT,
        connection_class=_reporting_connection_class(credentials),
        check=check,
    )

    async def drain(login: UsernamePassword) -> None:
        if pool.closed:
            return
        log.info("database pool draining: connections switch to the new login",
                 extra={"username": login.username})
        await pool.drain()

    credentials.on_replace(drain)
    await pool.open(wait=True, timeout=30)
    return pool


def _reporting_connection_class(credentials: LeasedSecret) -> type[AsyncConnection[Any]]:
    """Return a connection class that calls ``credentials.check_now()`` when a login fails.

    psycopg exposes no SQLSTATE for a rejected login, and a server that is
    down fails alike, so every failed connection attempt requests a lookup.
    :meth:`LeasedSecret.check_now` rate-limits them.
    """

    class LeasedConnection(AsyncConnection[Any]):
        @classmethod
        async def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:  # type: ignore[override]
            try:
                return await super().connect(conninfo, **kwargs)
            except psycopg.OperationalError:
                credentials.check_now()
                raise

    return LeasedConnection
