from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import grpc
from aio_pika.abc import AbstractIncomingMessage
from psycopg_pool import AsyncConnectionPool

from aiswa.projects.v1 import projects_pb2, projects_pb2_grpc
from aiswa_runtime import Broker, PoisonMessage, Upstream
from aiswa_runtime.archive import ArchiveError, ArchiveLimits

from ._analysis import (
    analyze_batch,
    analyzer,
    engine_name,
    file_row,
    find_duplicates,
    function_rows,
    python_sources,
    summarize,
)
from .duplicates import Duplicate

log = logging.getLogger(__name__)

EVENTS = "aiswa.events"
BATCH_FILES = 25


def _task_ids(payload: dict[str, Any]) -> tuple[str, str, str]:
    ids = []
    for field in ("run_id", "project_id", "archive_id"):
        value = payload.get(field)
        try:
            ids.append(str(uuid.UUID(str(value))))
        except ValueError:
            raise PoisonMessage(f"task field {field}={value!r} is not a UUID") from None
    return ids[0], ids[1], ids[2]


class Worker:
    """Consumes reflector.analyze tasks and stores each run's metrics exactly once."""

    def __init__(self, pool: AsyncConnectionPool, broker: Broker, projects: Upstream,
                 limits: ArchiveLimits) -> None:
        self._pool = pool
        self._broker = broker
        self._projects = projects
        self._stub = projects_pb2_grpc.ProjectsServiceStub(projects.channel)
        self._limits = limits

    async def handle(self, payload: dict[str, Any], message: AbstractIncomingMessage) -> None:
        run_id, project_id, archive_id = _task_ids(payload)
        summary = await self._stored_summary(run_id)
        if summary is not None:
            # A redelivered task whose results were committed before the
            # worker died: publish the event again, store nothing twice.
            log.info("run already analysed; republishing its event", extra={"run_id": run_id})
            await self._publish_completed(run_id, project_id, summary)
            return
        await self._broker.publish(EVENTS, "run.started",
                                   {"run_id": run_id, "project_id": project_id})
        archive = await self._fetch_archive(archive_id)
        try:
            sources = await asyncio.to_thread(python_sources, archive, self._limits)
        except ArchiveError as exc:
            raise PoisonMessage(f"archive {archive_id} cannot be read ({exc.code}): {exc}") from exc
        analyze = analyzer()
        results = []
        for start in range(0, len(sources), BATCH_FILES):
            batch = sources[start:start + BATCH_FILES]
            results += await asyncio.to_thread(analyze_batch, batch, analyze)
            await self._broker.publish(EVENTS, "run.progress", {
                "run_id": run_id, "project_id": project_id,
                "files_done": len(results), "files_total": len(sources),
            })
        duplicates = await asyncio.to_thread(find_duplicates, sources)
        summary = summarize(results, len(duplicates))
        await self._store(run_id, project_id, results, duplicates, summary)
        log.info("run analysed", extra={"run_id": run_id, **summary})
        await self._publish_completed(run_id, project_id, summary)

    async def on_dead_letter(self, payload: dict[str, Any], reason: str) -> None:
        run_id = payload.get("run_id")
        if isinstance(run_id, str):
            await self._broker.publish(EVENTS, "analysis.failed", {
                "run_id": run_id, "project_id": str(payload.get("project_id", "")),
                "error": reason,
            })

    async def _fetch_archive(self, archive_id: str) -> bytes:
        chunks: list[bytes] = []
        try:
            async for chunk in self._projects.stream(
                self._stub.ReadArchive, projects_pb2.ReadArchiveRequest(archive_id=archive_id),
                timeout=120,
            ):
                chunks.append(chunk.data)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise PoisonMessage(f"archive {archive_id}: {exc.details()}") from exc
            raise
        return b"".join(chunks)

    async def _stored_summary(self, run_id: str) -> dict[str, Any] | None:
        async with self._pool.connection() as conn:
            row = await (await conn.execute(
                "SELECT summary FROM reports WHERE run_id = %s", (run_id,)
            )).fetchone()
        return row["summary"] if row else None

    async def _store(self, run_id: str, project_id: str, results: list,
                     duplicates: list[Duplicate], summary: dict[str, Any]) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO reports (run_id, project_id, engine, summary) VALUES (%s, %s, %s, %s)",
                (run_id, project_id, engine_name(), json.dumps(summary)),
            )
            async with conn.cursor() as cursor:
                async with cursor.copy(
                    "COPY files (run_id, path, loc, lloc, sloc, comments, multi, blank,"
                    " single_comments, maintainability_index, halstead_volume, error) FROM STDIN"
                ) as copy:
                    for result in results:
                        await copy.write_row(file_row(run_id, result))
                async with cursor.copy(
                    "COPY functions (run_id, path, qualified_name, name, is_method, line_start,"
                    " line_end, cyclomatic_complexity, max_nesting, length) FROM STDIN"
                ) as copy:
                    for result in results:
                        for row in function_rows(run_id, result):
                            await copy.write_row(row)
                async with cursor.copy(
                    "COPY duplicates (run_id, path_a, line_start_a, line_end_a, path_b,"
                    " line_start_b, line_end_b, tokens) FROM STDIN"
                ) as copy:
                    for duplicate in duplicates:
                        await copy.write_row((run_id, *duplicate))

    async def _publish_completed(self, run_id: str, project_id: str, summary: dict[str, Any]) -> None:
        await self._broker.publish(
            EVENTS, "analysis.completed",
            {"run_id": run_id, "project_id": project_id, "summary": summary},
            message_id=f"analysis.completed:{run_id}",
        )
