from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from psycopg_pool import AsyncConnectionPool

from aiswa_runtime import Broker, PoisonMessage

log = logging.getLogger(__name__)

TASK_EXCHANGE = "aiswa.tasks"
TASK_ROUTING_KEY = "reflector.analyze"
EVENTS_EXCHANGE = "aiswa.events"

# A run's state only moves forward, so a late or redelivered event never
# undoes a newer one.
STATE_ORDER = {"pending": 0, "queued": 1, "running": 2, "completed": 3, "failed": 3}


def task_payload(run: dict[str, Any]) -> dict[str, str]:
    return {
        "run_id": str(run["run_id"]),
        "project_id": str(run["project_id"]),
        "archive_id": str(run["archive_id"]),
        "requested_by": str(run["requested_by"]),
    }


async def publish_task(broker: Broker, pool: AsyncConnectionPool, run: dict[str, Any], *,
                       reconnect_wait: float | None = None) -> dict[str, Any]:
    """Publish a run's task and mark it queued once the broker confirmed it.

    ``reconnect_wait`` bounds the wait for a lost broker connection (see
    Broker.publish).
    """
    await broker.publish(
        TASK_EXCHANGE, TASK_ROUTING_KEY, task_payload(run), message_id=str(run["run_id"]),
        reconnect_wait=reconnect_wait,
    )
    async with pool.connection() as conn:
        row = await (await conn.execute(
            "UPDATE runs SET state = 'queued', updated_at = now() "
            "WHERE run_id = %s AND state = 'pending' RETURNING *",
            (run["run_id"],),
        )).fetchone()
    await broker.publish(
        EVENTS_EXCHANGE, "run.queued",
        {"run_id": str(run["run_id"]), "project_id": str(run["project_id"]), "state": "queued"},
    )
    return row or run


async def republish_pending(broker: Broker, pool: AsyncConnectionPool, interval: float = 10.0) -> None:
    """Publish again the tasks of runs left pending by a failed publish (an outbox)."""
    while True:
        await asyncio.sleep(interval)
        async with pool.connection() as conn:
            rows = await (await conn.execute(
                "SELECT * FROM runs WHERE state = 'pending' "
                "AND updated_at < now() - interval '5 seconds' ORDER BY created_at LIMIT 50"
            )).fetchall()
        for run in rows:
            try:
                await publish_task(broker, pool, run)
                log.info("pending run published", extra={"run_id": str(run["run_id"])})
            except Exception as exc:
                log.warning("pending run still not published",
                            extra={"run_id": str(run["run_id"]), "error": repr(exc)})
                break


async def apply_event(pool: AsyncConnectionPool, routing_key: str, payload: dict[str, Any]) -> None:
    """Update a run from a reflector event (run.started, run.progress, analysis.*)."""
    run_id = payload.get("run_id")
    if not isinstance(run_id, str):
        raise PoisonMessage(f"event {routing_key} has no run_id string")
    try:
        uuid.UUID(run_id)
    except ValueError:
        raise PoisonMessage(f"event {routing_key} has run_id {run_id!r}, not a UUID") from None
    if routing_key == "run.queued":
        return
    new_state = {
        "run.started": "running",
        "run.progress": "running",
        "analysis.completed": "completed",
        "analysis.failed": "failed",
    }.get(routing_key)
    if new_state is None:
        return
    files_total = int(payload.get("files_total", 0) or 0)
    files_done = int(payload.get("files_done", 0) or 0)
    error = str(payload.get("error", ""))[:2000]
    async with pool.connection() as conn:
        await conn.execute(
            """
            UPDATE runs SET
                state = CASE WHEN %(rank)s >= (CASE state WHEN 'pending' THEN 0
                    WHEN 'queued' THEN 1 WHEN 'running' THEN 2 ELSE 3 END)
                    THEN %(state)s ELSE state END,
                files_total = GREATEST(files_total, %(total)s),
                files_done = GREATEST(files_done, %(done)s),
                error = CASE WHEN %(error)s <> '' THEN %(error)s ELSE error END,
                updated_at = now()
            WHERE run_id = %(run_id)s AND state NOT IN ('completed', 'failed')
            """,
            {"rank": STATE_ORDER[new_state], "state": new_state, "total": files_total,
             "done": files_done, "error": error, "run_id": run_id},
        )
