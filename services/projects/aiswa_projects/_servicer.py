from __future__ import annotations

import asyncio
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import grpc
from psycopg_pool import AsyncConnectionPool

from aiswa.projects.v1 import projects_pb2, projects_pb2_grpc
from aiswa_runtime import (
    Broker,
    Claims,
    ServiceError,
    invalid_argument,
    not_found,
    optional_user,
    permission_denied,
    require_user,
    unavailable,
)
from aiswa_runtime.archive import ArchiveError, ArchiveLimits, inspect_archive

from ._runs import publish_task

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
# Seconds StartRun waits for a lost broker connection to come back, which is
# enough for a credential switch's reconnection. In a longer outage the run
# stays PENDING and republish_pending sends it, so the client need not wait.
START_RUN_RECONNECT_WAIT = 5.0

_RUN_STATES = {
    "pending": projects_pb2.RUN_STATE_PENDING,
    "queued": projects_pb2.RUN_STATE_QUEUED,
    "running": projects_pb2.RUN_STATE_RUNNING,
    "completed": projects_pb2.RUN_STATE_COMPLETED,
    "failed": projects_pb2.RUN_STATE_FAILED,
}
_MEMBER_ROLES = {"viewer": projects_pb2.MEMBER_ROLE_VIEWER,
                 "maintainer": projects_pb2.MEMBER_ROLE_MAINTAINER}
_FORMATS = {"tar.gz": projects_pb2.ARCHIVE_FORMAT_TAR_GZ, "zip": projects_pb2.ARCHIVE_FORMAT_ZIP}


def parse_uuid(value: str, field: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise invalid_argument(f"{field} {value!r} is not a UUID") from None


def _run_message(row: dict[str, Any]) -> projects_pb2.Run:
    run = projects_pb2.Run(
        run_id=str(row["run_id"]), project_id=str(row["project_id"]),
        archive_id=str(row["archive_id"]), state=_RUN_STATES[row["state"]],
        files_total=row["files_total"], files_done=row["files_done"], error=row["error"],
    )
    run.created_at.FromDatetime(row["created_at"])
    run.updated_at.FromDatetime(row["updated_at"])
    return run


def _archive_message(row: dict[str, Any]) -> projects_pb2.Archive:
    archive = projects_pb2.Archive(
        archive_id=str(row["archive_id"]), project_id=str(row["project_id"]),
        filename=row["filename"], format=_FORMATS[row["format"]],
        compressed_bytes=row["compressed_bytes"], expanded_bytes=row["expanded_bytes"],
        file_count=row["file_count"], sha256=row["sha256"],
    )
    archive.created_at.FromDatetime(row["created_at"])
    return archive


class ProjectsServicer(projects_pb2_grpc.ProjectsServiceServicer):
    def __init__(self, pool: AsyncConnectionPool, broker: Broker, archive_dir: Path,
                 limits: ArchiveLimits) -> None:
        self._pool = pool
        self._broker = broker
        self._archive_dir = archive_dir
        self._limits = limits

    async def _project(self, project_id: str) -> dict[str, Any]:
        async with self._pool.connection() as conn:
            project = await (await conn.execute(
                "SELECT * FROM projects WHERE project_id = %s", (project_id,)
            )).fetchone()
            if project is None:
                raise not_found(f"project {project_id} not found")
            project["members"] = await (await conn.execute(
                "SELECT user_id, role FROM members WHERE project_id = %s ORDER BY user_id",
                (project_id,),
            )).fetchall()
        return project

    async def _authorize(self, claims: Claims, project_id: str, write: bool) -> dict[str, Any]:
        project = await self._project(project_id)
        if claims.is_admin:
            return project
        role = next((m["role"] for m in project["members"] if str(m["user_id"]) == claims.subject), None)
        if role is None:
            # Same answer as a missing project, so non-members learn nothing.
            raise not_found(f"project {project_id} not found")
        if write and (role != "maintainer" or not claims.has_role("maintainer")):
            raise permission_denied(
                f"changing project {project_id} needs the maintainer role in it; "
                f"you are {role!r}"
            )
        return project

    def _project_message(self, project: dict[str, Any]) -> projects_pb2.Project:
        message = projects_pb2.Project(
            project_id=str(project["project_id"]), name=project["name"],
            owner_id=str(project["owner_id"]),
            members=[projects_pb2.Member(user_id=str(m["user_id"]), role=_MEMBER_ROLES[m["role"]])
                     for m in project["members"]],
        )
        message.created_at.FromDatetime(project["created_at"])
        return message

    async def CreateProject(self, request: projects_pb2.CreateProjectRequest, context: grpc.aio.ServicerContext) -> projects_pb2.Project:
        claims = require_user(context, "maintainer")
        name = request.name.strip()
        if not name or len(name) > 200:
            raise invalid_argument(f"project name {request.name!r} must be 1 to 200 characters")
        async with self._pool.connection() as conn:
            project_id = (await (await conn.execute(
                "INSERT INTO projects (name, owner_id) VALUES (%s, %s) RETURNING project_id",
                (name, claims.subject),
            )).fetchone())["project_id"]
            await conn.execute(
                "INSERT INTO members (project_id, user_id, role) VALUES (%s, %s, 'maintainer')",
                (project_id, claims.subject),
            )
        log.info("project created", extra={"project_id": str(project_id)})
        return self._project_message(await self._project(str(project_id)))

    async def GetProject(self, request: projects_pb2.GetProjectRequest, context: grpc.aio.ServicerContext) -> projects_pb2.Project:
        project_id = parse_uuid(request.project_id, "project_id")
        claims = optional_user(context)
        if claims is None:
            # A service's own call (vision, reflector) carries no user.
            return self._project_message(await self._project(project_id))
        return self._project_message(await self._authorize(claims, project_id, write=False))

    async def ListProjects(self, request: projects_pb2.ListProjectsRequest, context: grpc.aio.ServicerContext) -> projects_pb2.ListProjectsResponse:
        claims = require_user(context)
        async with self._pool.connection() as conn:
            if claims.is_admin:
                cursor = await conn.execute("SELECT project_id FROM projects ORDER BY created_at")
            else:
                cursor = await conn.execute(
                    "SELECT p.project_id FROM projects p JOIN members m USING (project_id) "
                    "WHERE m.user_id = %s ORDER BY p.created_at", (claims.subject,))
            ids = [str(row["project_id"]) for row in await cursor.fetchall()]
        return projects_pb2.ListProjectsResponse(
            projects=[self._project_message(await self._project(pid)) for pid in ids]
        )

    async def AddMember(self, request: projects_pb2.AddMemberRequest, context: grpc.aio.ServicerContext) -> projects_pb2.Project:
        claims = require_user(context, "maintainer")
        project_id = parse_uuid(request.project_id, "project_id")
        user_id = parse_uuid(request.user_id, "user_id")
        role = {projects_pb2.MEMBER_ROLE_VIEWER: "viewer",
                projects_pb2.MEMBER_ROLE_MAINTAINER: "maintainer"}.get(request.role)
        if role is None:
            raise invalid_argument("role is missing; use MEMBER_ROLE_VIEWER or MEMBER_ROLE_MAINTAINER")
        await self._authorize(claims, project_id, write=True)
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO members (project_id, user_id, role) VALUES (%s, %s, %s) "
                "ON CONFLICT (project_id, user_id) DO UPDATE SET role = EXCLUDED.role",
                (project_id, user_id, role),
            )
        return self._project_message(await self._project(project_id))

    async def UploadArchive(self, request: projects_pb2.UploadArchiveRequest, context: grpc.aio.ServicerContext) -> projects_pb2.Archive:
        claims = require_user(context, "maintainer")
        project_id = parse_uuid(request.project_id, "project_id")
        await self._authorize(claims, project_id, write=True)
        filename = Path(request.filename or "upload").name[:255]
        try:
            # Validation decompresses the whole archive: off the event loop.
            info = await asyncio.to_thread(inspect_archive, request.content, self._limits)
        except ArchiveError as exc:
            log.warning("archive rejected", extra={"project_id": project_id, "code": exc.code,
                                                   "error": str(exc)})
            raise invalid_argument(f"archive {filename!r} rejected ({exc.code}): {exc}") from None
        archive_id = str(uuid.uuid4())
        path = self._archive_dir / f"{archive_id}.{'zip' if info.format == 'zip' else 'tar.gz'}"
        await asyncio.to_thread(_write_atomically, path, request.content)
        async with self._pool.connection() as conn:
            row = await (await conn.execute(
                "INSERT INTO archives (archive_id, project_id, filename, format, compressed_bytes,"
                " expanded_bytes, file_count, sha256, storage_path)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING *",
                (archive_id, project_id, filename, info.format, info.compressed_bytes,
                 info.expanded_bytes, info.file_count, info.sha256, str(path)),
            )).fetchone()
        log.info("archive stored", extra={"archive_id": archive_id, "files": info.file_count,
                                          "bytes": info.compressed_bytes})
        return _archive_message(row)

    async def StartRun(self, request: projects_pb2.StartRunRequest, context: grpc.aio.ServicerContext) -> projects_pb2.Run:
        claims = require_user(context, "maintainer")
        project_id = parse_uuid(request.project_id, "project_id")
        archive_id = parse_uuid(request.archive_id, "archive_id")
        await self._authorize(claims, project_id, write=True)
        async with self._pool.connection() as conn:
            archive = await (await conn.execute(
                "SELECT archive_id FROM archives WHERE archive_id = %s AND project_id = %s",
                (archive_id, project_id),
            )).fetchone()
            if archive is None:
                raise not_found(f"archive {archive_id} not found in project {project_id}; "
                                "upload it first")
            run = await (await conn.execute(
                "INSERT INTO runs (project_id, archive_id, state, requested_by) "
                "VALUES (%s, %s, 'pending', %s) RETURNING *",
                (project_id, archive_id, claims.subject),
            )).fetchone()
        try:
            run = await publish_task(self._broker, self._pool, run,
                                     reconnect_wait=START_RUN_RECONNECT_WAIT)
        except Exception as exc:
            log.error("task not confirmed by the broker; the run stays pending",
                      extra={"run_id": str(run["run_id"]), "error": repr(exc)})
            raise unavailable(
                f"run {run['run_id']} is stored but the broker did not confirm its task; "
                "it stays PENDING and is published again when the broker is back"
            ) from None
        log.info("run queued", extra={"run_id": str(run["run_id"])})
        return _run_message(run)

    async def _run(self, run_id: str) -> dict[str, Any]:
        async with self._pool.connection() as conn:
            row = await (await conn.execute("SELECT * FROM runs WHERE run_id = %s", (run_id,))).fetchone()
        if row is None:
            raise not_found(f"run {run_id} not found")
        return row

    async def GetRun(self, request: projects_pb2.GetRunRequest, context: grpc.aio.ServicerContext) -> projects_pb2.Run:
        run_id = parse_uuid(request.run_id, "run_id")
        run = await self._run(run_id)
        claims = optional_user(context)
        if claims is not None:
            try:
                await self._authorize(claims, str(run["project_id"]), write=False)
            except ServiceError:
                raise not_found(f"run {run_id} not found") from None
        return _run_message(run)

    async def ListRuns(self, request: projects_pb2.ListRunsRequest, context: grpc.aio.ServicerContext) -> projects_pb2.ListRunsResponse:
        claims = require_user(context)
        project_id = parse_uuid(request.project_id, "project_id")
        await self._authorize(claims, project_id, write=False)
        async with self._pool.connection() as conn:
            rows = await (await conn.execute(
                "SELECT * FROM runs WHERE project_id = %s ORDER BY created_at DESC", (project_id,)
            )).fetchall()
        return projects_pb2.ListRunsResponse(runs=[_run_message(row) for row in rows])

    async def ReadArchive(self, request: projects_pb2.ReadArchiveRequest, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        archive_id = parse_uuid(request.archive_id, "archive_id")
        async with self._pool.connection() as conn:
            row = await (await conn.execute(
                "SELECT storage_path, compressed_bytes FROM archives WHERE archive_id = %s",
                (archive_id,),
            )).fetchone()
        if row is None:
            raise not_found(f"archive {archive_id} not found")
        path, total = Path(row["storage_path"]), row["compressed_bytes"]
        offset = 0
        with path.open("rb") as stream:
            while chunk := await asyncio.to_thread(stream.read, CHUNK_BYTES):
                yield projects_pb2.ArchiveChunk(data=chunk, offset=offset, total_bytes=total)
                offset += len(chunk)


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".part")
    with temporary.open("wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    temporary.replace(path)
