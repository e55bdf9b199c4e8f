from __future__ import annotations

import logging
from pathlib import Path

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from yoyo import get_backend, read_migrations

log = logging.getLogger(__name__)


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


async def open_pool(database_url: str, *, min_size: int = 1, max_size: int = 8) -> AsyncConnectionPool:
    """Open a connection pool and wait until one connection works.

    Every connection returns rows as dicts, so no caller changes a pooled
    connection's row factory.
    """
    pool = AsyncConnectionPool(
        database_url, min_size=min_size, max_size=max_size, open=False,
        kwargs={"row_factory": dict_row},
        # Connections are checked before use, so a server restart costs a
        # reconnect instead of a failed call.
        check=AsyncConnectionPool.check_connection,
    )
    await pool.open(wait=True, timeout=30)
    return pool
