from __future__ import annotations

import logging
import uuid
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from psycopg_pool import AsyncConnectionPool

from aiswa.projects.v1 import projects_pb2, projects_pb2_grpc
from aiswa.reflector.v1 import reflector_pb2, reflector_pb2_grpc
from aiswa.vision.v1 import vision_pb2, vision_pb2_grpc
from aiswa_runtime import (
    Broker,
    PoisonMessage,
    Upstream,
    forwarded_metadata,
    invalid_argument,
    not_found,
    require_user,
    upstream_error,
)

from .wsjf import build_roadmap

log = logging.getLogger(__name__)

_KINDS = {"file": vision_pb2.TARGET_KIND_FILE, "function": vision_pb2.TARGET_KIND_FUNCTION}
_COLUMNS = ("rank", "target_kind", "path", "qualified_name", "line", "problem", "metric",
            "value", "threshold", "business_value", "time_criticality", "risk_reduction",
            "job_size", "wsjf")


class RoadmapBuilder:
    """Consumes analysis.completed events and stores each run's roadmap once."""

    def __init__(self, pool: AsyncConnectionPool, broker: Broker, reflector: Upstream) -> None:
        self._pool = pool
        self._broker = broker
        self._reflector = reflector
        self._stub = reflector_pb2_grpc.ReflectorServiceStub(reflector.channel)

    async def handle(self, payload: dict[str, Any], message: Any) -> None:
        try:
            run_id = str(uuid.UUID(str(payload.get("run_id"))))
        except ValueError:
            raise PoisonMessage(f"event has run_id {payload.get('run_id')!r}, not a UUID") from None
        async with self._pool.connection() as conn:
            exists = await (await conn.execute(
                "SELECT 1 FROM roadmaps WHERE run_id = %s", (run_id,))).fetchone()
        if exists:
            log.info("roadmap already built", extra={"run_id": run_id})
            return
        try:
            report = await self._reflector.call(
                self._stub.GetReport, reflector_pb2.GetReportRequest(run_id=run_id),
                idempotent=True, timeout=60,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise PoisonMessage(f"reflector has no report for run {run_id}") from exc
            raise
        files = MessageToDict(report, preserving_proto_field_name=True,
                              always_print_fields_with_no_presence=True)["files"]
        items = build_roadmap(files)
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO roadmaps (run_id, project_id) VALUES (%s, %s) "
                "ON CONFLICT (run_id) DO NOTHING", (run_id, report.project_id))
            async with conn.cursor() as cursor:
                async with cursor.copy(
                    f"COPY roadmap_items (run_id, {', '.join(_COLUMNS)}) FROM STDIN"
                ) as copy:
                    for rank, item in enumerate(items, start=1):
                        await copy.write_row((
                            run_id, rank, item.target_kind, item.path, item.qualified_name,
                            item.line, item.problem, item.metric, item.value, item.threshold,
                            item.business_value, item.time_criticality, item.risk_reduction,
                            item.job_size, item.wsjf,
                        ))
        log.info("roadmap built", extra={"run_id": run_id, "items": len(items)})
        await self._broker.publish("aiswa.events", "roadmap.ready", {
            "run_id": run_id, "project_id": report.project_id, "items": len(items),
        })


class VisionServicer(vision_pb2_grpc.VisionServiceServicer):
    def __init__(self, pool: AsyncConnectionPool, projects: Upstream) -> None:
        self._pool = pool
        self._projects = projects
        self._projects_stub = projects_pb2_grpc.ProjectsServiceStub(projects.channel)

    async def GetRoadmap(self, request: vision_pb2.GetRoadmapRequest, context: grpc.aio.ServicerContext) -> vision_pb2.Roadmap:
        require_user(context)
        try:
            project_id = str(uuid.UUID(request.project_id))
            run_id = str(uuid.UUID(request.run_id)) if request.run_id else None
        except ValueError:
            raise invalid_argument(
                f"project_id {request.project_id!r} and run_id {request.run_id!r} must be UUIDs"
            ) from None
        if request.limit < 0:
            raise invalid_argument(f"limit {request.limit} is negative; use 0 for every item")
        try:
            await self._projects.call(
                self._projects_stub.GetProject,
                projects_pb2.GetProjectRequest(project_id=project_id),
                idempotent=True, metadata=forwarded_metadata(context),
            )
        except grpc.aio.AioRpcError as exc:
            raise upstream_error("projects", exc) from None
        async with self._pool.connection() as conn:
            if run_id:
                roadmap = await (await conn.execute(
                    "SELECT * FROM roadmaps WHERE run_id = %s AND project_id = %s",
                    (run_id, project_id))).fetchone()
            else:
                roadmap = await (await conn.execute(
                    "SELECT * FROM roadmaps WHERE project_id = %s ORDER BY created_at DESC LIMIT 1",
                    (project_id,))).fetchone()
            if roadmap is None and run_id:
                # The message does not tell whether the run exists in another project,
                # which this caller may not be allowed to see.
                raise not_found(f"no roadmap for run {run_id} in project {project_id}: the run "
                                "belongs to another project, or it has not completed yet "
                                "(roadmaps are built when an analysis run completes)")
            if roadmap is None:
                raise not_found(f"no roadmap for project {project_id} yet: it is built when an "
                                "analysis run completes")
            limit_sql = "LIMIT %s" if request.limit else ""
            params: tuple[Any, ...] = (roadmap["run_id"],) + ((request.limit,) if request.limit else ())
            rows = await (await conn.execute(
                f"SELECT * FROM roadmap_items WHERE run_id = %s ORDER BY rank {limit_sql}", params
            )).fetchall()
        message = vision_pb2.Roadmap(
            project_id=project_id, run_id=str(roadmap["run_id"]),
            items=[vision_pb2.RoadmapItem(**{
                **{column: row[column] for column in _COLUMNS},
                "target_kind": _KINDS[row["target_kind"]],
            }) for row in rows],
        )
        message.created_at.FromDatetime(roadmap["created_at"])
        return message
